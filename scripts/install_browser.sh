#!/usr/bin/env bash
# Install Debian's chromium + chromium-driver for the real-browser test, if missing.
# Needs root (apt-get); exits non-zero when it cannot, and the browser test then skips.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "[browser] not root or no apt-get: cannot install chromium" >&2
  exit 1
fi
echo "[browser] installing chromium and chromium-driver (about a minute)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq chromium chromium-driver >/dev/null
