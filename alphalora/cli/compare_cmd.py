"""``python -m alphalora runs compare RUN_A RUN_B``: accuracies with 95 % intervals and the
paired test (exact McNemar, bootstrap interval of the difference) of two runs."""

from __future__ import annotations

import argparse
import json

from alphalora.runs import jobs
from alphalora.runs.compare_runs import compare_runs, run_name
from alphalora.store.run_store import RunStore


def register_compare(actions: argparse._SubParsersAction) -> None:
    """Add ``compare`` to the actions of ``runs``."""
    p = actions.add_parser(
        "compare",
        help="paired test of two runs on the same held-out examples",
        description="Compare the final evaluations (or --step-a/--step-b) of two runs scored on "
        "the same examples: each accuracy with its 95 % Wilson interval, the difference with a "
        "paired-bootstrap interval, and McNemar's exact p-value. Runs evaluated on different "
        "examples are refused.",
    )
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    p.add_argument("--step-a", type=int, metavar="N", help="evaluation step of RUN_A (last)")
    p.add_argument("--step-b", type=int, metavar="N", help="evaluation step of RUN_B (last)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the comparison (a table and a one-line verdict, or JSON)."""
    store = RunStore()
    jobs.reconcile(store)
    run_a, run_b = store.get_run(args.run_a), store.get_run(args.run_b)
    result = compare_runs(args.run_a, args.run_b, step_a=args.step_a, step_b=args.step_b)
    name_a, name_b = run_name(run_a), run_name(run_b)
    if args.json:
        print(json.dumps({"run_a": args.run_a, "run_b": args.run_b, **result.as_dict()}))
        return 0
    lo_a, hi_a = result.interval_a
    lo_b, hi_b = result.interval_b
    print(f"{result.n} held-out examples, the same for both runs")
    print(f"  A {name_a:<24} accuracy {result.accuracy_a:.3f}  95% CI [{lo_a:.3f}, {hi_a:.3f}]")
    print(f"  B {name_b:<24} accuracy {result.accuracy_b:.3f}  95% CI [{lo_b:.3f}, {hi_b:.3f}]")
    print(
        f"  A − B {result.difference:+.3f}  95% CI [{result.diff_low:+.3f}, "
        f"{result.diff_high:+.3f}] (paired bootstrap)"
    )
    print(
        f"  right only in A: {result.only_a}, only in B: {result.only_b}; "
        f"McNemar exact p = {result.p_value:.3g}"
    )
    print(result.verdict(name_a, name_b))
    return 0
