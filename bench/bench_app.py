"""Server time of an allocation-slider move in the app, against the 100 ms budget.

Measured side by side in one process, on the embedded model's layer alphas (its cached
analysis; computed first if missing) or, with ``--paper``, on Llama-2-7B's published alphas:

1. the pure work the Allocation page does when β moves: the allocation, the uniform/MoLA
   comparisons, the trainable-parameter table, the plotly figure and its JSON serialisation;
2. a full ``AppTest`` rerun of the Allocation page after ``slider.set_value(β)`` (the page
   script end to end, Streamlit's element protos included; the browser's drawing is not).

    .venv/bin/python bench/bench_app.py [--quick] [--paper]

Prints median / p95 per step and the ratio to the 100 ms budget; writes bench/results/app.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
BUDGET_MS = 100.0


def _stats(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return {"median_ms": statistics.median(ms), "p95_ms": p95, "n": len(ms)}


def layer_alphas(paper: bool) -> tuple[str, list[float], dict]:
    """The alphas the page would allocate from, and the adapter module shapes."""
    if paper:
        from alphalora.allocation.presets import LLAMA2_7B_LAYER_ALPHAS, LLAMA2_7B_MODULE_SHAPES

        return (
            "Llama-2-7B (published alphas)",
            list(LLAMA2_7B_LAYER_ALPHAS),
            LLAMA2_7B_MODULE_SHAPES,
        )
    from alphalora.spectral.analysis import analyze
    from alphalora.spectral.analysis_types import AnalysisOptions
    from ui.state import module_shapes_from_matrices

    t = time.perf_counter()
    result = analyze("embedded", AnalysisOptions())
    how = "cache" if result.from_cache else "computed"
    print(f"embedded analysis: {how} in {time.perf_counter() - t:.1f} s")
    return (
        "SmolLM2-135M (embedded)",
        result.layer_alphas,
        module_shapes_from_matrices(result.matrices),
    )


def bench_pure(alphas: list[float], betas: list[float], shapes: dict) -> dict[str, dict]:
    """Time each step of the page's slider work, per β value."""
    import plotly.io as pio

    from alphalora.plots.allocation import allocation_figure
    from ui.state import (
        MODE_DEFAULT,
        build_allocation,
        comparison_allocations,
        parameters_table,
    )

    n = len(alphas)
    budget = 5 * n
    steps: dict[str, list[float]] = {k: [] for k in ("allocation", "comparisons", "parameters",
                                                      "figure", "to_json", "total")}  # fmt: skip
    for beta in betas:
        t0 = time.perf_counter()
        alloc = build_allocation(MODE_DEFAULT, alphas, budget, beta)
        t1 = time.perf_counter()
        comps = comparison_allocations(n, alloc.total, "8642")
        t2 = time.perf_counter()
        parameters_table({"current": alloc, **comps}, shapes)
        t3 = time.perf_counter()
        fig = allocation_figure(alloc.experts, label=alloc.label,
                                comparisons={k: v.experts for k, v in comps.items()}, alphas=alphas)  # fmt: skip
        t4 = time.perf_counter()
        pio.to_json(fig, validate=False)
        t5 = time.perf_counter()
        for key, dt in zip(
            steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0), strict=True
        ):
            steps[key].append(dt)
    return {k: _stats(v) for k, v in steps.items()}


def bench_apptest(betas: list[float], paper: bool) -> dict[str, float]:
    """Time AppTest reruns of the Allocation page after each β move (warm process)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600).run()
    if paper:
        at.radio(key="home_kind").set_value("paper")
        at.button[0].click()
        at.run()
    at.switch_page("pages/2_Allocation.py").run()
    if at.exception:
        raise SystemExit(f"the Allocation page raised: {at.exception[0].value}")
    at.slider(key="alloc_beta").set_value(1.0).run()  # warm-up
    samples = []
    for beta in betas:
        slider = at.slider(key="alloc_beta").set_value(round(beta, 1))
        t = time.perf_counter()
        slider.run()
        samples.append(time.perf_counter() - t)
        if at.exception or at.error:
            raise SystemExit(
                f"rerun at β={beta} failed: {[e.value for e in at.exception or at.error]}"
            )
    return _stats(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer slider moves")
    parser.add_argument("--paper", action="store_true", help="Llama-2-7B published alphas")
    args = parser.parse_args()

    model, alphas, shapes = layer_alphas(args.paper)
    moves = 20 if args.quick else 60
    betas = [round(0.1 + (i * 7.3) % 6.0, 1) for i in range(moves)]  # scattered β values
    pure = bench_pure(alphas, betas * 3, shapes)
    rerun = bench_apptest(betas[: moves // 2], args.paper)

    print(f"\nAllocation slider move — {model}, {len(alphas)} layers, T = {5 * len(alphas)}")
    print(f"{'step':<28}{'median ms':>10}{'p95 ms':>10}")
    for key, s in pure.items():
        print(f"{'pure: ' + key:<28}{s['median_ms']:>10.2f}{s['p95_ms']:>10.2f}")
    print(f"{'AppTest page rerun':<28}{rerun['median_ms']:>10.2f}{rerun['p95_ms']:>10.2f}")
    total = pure["total"]["median_ms"]
    print(f"\npure work / 100 ms budget      = {total / BUDGET_MS:.3f}")
    print(f"AppTest rerun / 100 ms budget  = {rerun['median_ms'] / BUDGET_MS:.3f}")
    print(f"AppTest rerun / pure work      = {rerun['median_ms'] / total:.1f}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "benchmark": "app allocation slider",
        "model": model,
        "layers": len(alphas),
        "budget_ms": BUDGET_MS,
        "pure": pure,
        "apptest_rerun": rerun,
        "ratio_pure_to_budget": total / BUDGET_MS,
        "ratio_rerun_to_budget": rerun["median_ms"] / BUDGET_MS,
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor(),
            "machine": platform.machine(),
        },  # fmt: skip
        "command": "python bench/bench_app.py"
        + (" --quick" if args.quick else "")
        + (" --paper" if args.paper else ""),
    }
    (RESULTS / "app.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'app.json'}")


if __name__ == "__main__":
    main()
