#!/usr/bin/env bash
# Debian Chromium for the browser test (tests/e2e): Playwright drives it by path, because
# `playwright install` cannot download browsers here. Safe to run again; installs only when missing.
set -euo pipefail
[ -x /usr/lib/chromium/chromium ] && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
[ -x /usr/lib/chromium/chromium ] || { echo "chromium installed but /usr/lib/chromium/chromium is missing" >&2; exit 1; }
