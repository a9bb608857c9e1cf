#!/usr/bin/env bash
# Prometheus server and promtool for the metrics tests (tests/api/test_prometheus.py): the test
# starts its own server on loopback scraping the test app. Safe to run again; installs only when missing.
set -euo pipefail
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
# --no-install-recommends: skip the node exporter and the web console packages.
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
