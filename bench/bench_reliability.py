"""Reliability figures on the embedded model: the time of an analysis cache hit (plain and with
``--verify-cache``), and how long a trainer takes to end after SIGTERM during its first
evaluation (``python -m alphalora train demo-cpu``).

    .venv/bin/python bench/bench_reliability.py            # both
    .venv/bin/python bench/bench_reliability.py --only cache
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cache_hits(repeats: int = 7) -> dict[str, float]:
    """Median milliseconds of a cache hit on the embedded model, plain and verified."""
    from alphalora.spectral.analysis import analyze
    from alphalora.spectral.analysis_types import AnalysisOptions

    opts = AnalysisOptions(device="cpu")
    out = {}
    for label, verify in (("hit_ms", False), ("verified_hit_ms", True)):
        analyze("embedded", opts, verify_cache=verify)  # fill the cache (and record the hash)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = analyze("embedded", opts, verify_cache=verify)
            times.append(time.perf_counter() - start)
            assert result.from_cache
        out[label] = 1e3 * statistics.median(times)
    return out


def stop_latency(wait_s: float = 2.0) -> dict[str, float]:
    """Seconds from SIGTERM (sent ``wait_s`` after the first evaluation starts) to the end of
    ``python -m alphalora train demo-cpu --device cpu``, and its exit code."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "alphalora", "train", "demo-cpu", "--device", "cpu"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    seen = b""
    started = time.monotonic()
    while b"Evaluating at step 0" not in seen:
        ready, _, _ = select.select([proc.stderr], [], [], 1.0)
        if ready:
            seen += os.read(proc.stderr.fileno(), 65536)
        if proc.poll() is not None:
            raise SystemExit(f"the trainer ended early: {seen[-2000:].decode(errors='replace')}")
    to_eval = time.monotonic() - started
    time.sleep(wait_s)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate()
    return {
        "seconds_to_first_eval": to_eval,
        "seconds_after_sigterm": time.monotonic() - sent,
        "exit_code": proc.returncode,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("cache", "stop"))
    args = parser.parse_args()
    if args.only in (None, "cache"):
        hits = cache_hits()
        print(
            f"cache hit {hits['hit_ms']:.1f} ms; with --verify-cache {hits['verified_hit_ms']:.1f} ms"
        )
    if args.only in (None, "stop"):
        stop = stop_latency()
        print(
            f"SIGTERM {2.0:.0f} s into the first evaluation: the trainer ended "
            f"{stop['seconds_after_sigterm']:.1f} s later (exit code {stop['exit_code']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
