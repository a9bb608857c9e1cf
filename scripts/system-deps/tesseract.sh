#!/usr/bin/env bash
# Debian Tesseract with its English model for OCR of images and scanned PDF pages
# (ragtune.ingest.formats.ocr runs the `tesseract` program). Safe to run again; installs only when missing.
set -euo pipefail
command -v tesseract >/dev/null && tesseract --list-langs 2>/dev/null | grep -qx eng && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends tesseract-ocr tesseract-ocr-eng >/dev/null
tesseract --list-langs 2>/dev/null | grep -qx eng || { echo "tesseract installed but its eng model is missing" >&2; exit 1; }
