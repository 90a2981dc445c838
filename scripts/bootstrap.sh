#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) so that `make app` and
# `make test` work on a fresh machine. Idempotent: re-installs only when a requirements
# file changed. Usage: scripts/bootstrap.sh [runtime|dev|bench]
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-runtime}"
venv="${ALPHALORA_VENV:-.venv}"
py="${PYTHON:-python3}"

case "$profile" in
  runtime) reqs=(requirements.txt) ;;
  dev) reqs=(requirements-dev.txt requirements.txt) ;;
  bench) reqs=(requirements-bench.txt requirements-dev.txt requirements.txt) ;;
  *) echo "unknown profile '$profile' (use runtime, dev or bench)" >&2; exit 2 ;;
esac

if [ ! -x "$venv/bin/python" ]; then
  echo "[bootstrap] creating $venv with $($py --version)"
  "$py" -m venv "$venv"
fi
stamp="$venv/.stamp-$profile"
want=$(cat "${reqs[@]}" requirements-data.txt requirements-bench-nodeps.txt scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# pip warns about local index folders that do not exist on every machine: drop that noise.
install() { "${pip[@]}" install -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }
echo "[bootstrap] installing $profile dependencies into $venv (first time: a few minutes)"
install --upgrade pip
# torch first and alone, so that nothing later pulls a multi-GB CUDA build.
install "$(grep -E '^torch==' requirements.txt)"
install -r "${reqs[0]}"
install --no-deps -r requirements-data.txt
if [ "$profile" = bench ] && [ -f requirements-bench-nodeps.txt ]; then
  install --no-deps -r requirements-bench-nodeps.txt
fi
echo "$want" > "$stamp"
echo "[bootstrap] ready"
