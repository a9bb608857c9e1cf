#!/usr/bin/env bash
# Debian libaio for DeepSpeed's async I/O op, which ZeRO-Infinity's NVMe offload JIT-compiles
# (`offload_params: nvme` / `offload_optimizer: nvme`). Safe to run again; installs only when missing.
set -euo pipefail
[ -e /usr/include/libaio.h ] && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends libaio-dev >/dev/null
[ -e /usr/include/libaio.h ] || { echo "libaio-dev installed but libaio.h is missing" >&2; exit 1; }
