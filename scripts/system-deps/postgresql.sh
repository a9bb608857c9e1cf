#!/usr/bin/env bash
# PostgreSQL server binaries for the shared-catalog worker tests (tests/api/test_worker_postgres.py):
# the test fixture runs its own initdb/postgres on loopback, so no system service is started here.
# Safe to run again; installs only when missing.
set -euo pipefail
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
# postgresql-common's postinst creates a default cluster; the tests never use it.
$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
