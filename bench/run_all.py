"""Run every benchmark in turn (``make bench``; ``--quick`` for a few-minute pass).

Each benchmark measures our implementation side by side with its reference in one process
and prints ratios; results are written to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (script, arguments for a full run, arguments for a quick run)
BENCHES = [
    ("bench_fit.py", [], ["--quick"]),
    ("bench_analysis.py", [], ["--quick"]),
    ("bench_memory.py", ["--layers", "4"], ["--layers", "2"]),
    ("bench_moe.py", [], ["--quick"]),
    ("bench_app.py", [], ["--quick"]),
    ("bench_quantisation.py", [], []),
    (
        "bench_finetune.py",
        ["--steps", "40", "--warmup-steps", "4", "--eval-every", "20"],
        ["--steps", "4"],
    ),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", help="names of the benchmarks to run (e.g. fit moe)")
    args = parser.parse_args()
    failed = []
    for script, full, quick in BENCHES:
        name = script.removeprefix("bench_").removesuffix(".py")
        if args.only and name not in args.only:
            continue
        cmd = [sys.executable, str(HERE / script), *(quick if args.quick else full)]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        if subprocess.run(cmd).returncode != 0:
            failed.append(name)
        print(f"=== {name}: {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
