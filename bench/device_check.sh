#!/usr/bin/env bash
# Every GPU check in one command, for a machine with a CUDA GPU (about 8 minutes):
#   bench/device_check.sh [--budget-s 460] [--layers 2] [--steps 30]
# Runs the GPU-marked tests, bench/bench_moe.py --device cuda, the CPU-vs-GPU analysis of a
# Llama-7B-shaped checkpoint and a short GPU fine-tune, and writes one summary to
# bench/results/device_check.json (and .md). Uses .venv when there is one, else python3.
# Packages missing on the GPU machine (no network there) can travel as wheels in .whl/
# (bench/device_wheels.sh makes them); they are installed into a private folder first.
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/alphalora-site .whl/*.whl
  export PYTHONPATH="/tmp/alphalora-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec timeout 480 "$py" bench/device_check.py "$@"
