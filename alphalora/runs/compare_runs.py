"""Comparisons of stored runs: accuracy with its 95 % interval, and the paired test of two runs
scored on the same examples (their per-example predictions, see
:mod:`alphalora.finetune.predictions`), for the ``runs compare`` command and the Runs page."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from alphalora import paths
from alphalora.allocation.labels import allocation_label
from alphalora.errors import AlphaLoRAError
from alphalora.finetune.predictions import load_predictions
from alphalora.runs.compare import PairedComparison, compare_correct, wilson_interval
from alphalora.store.records import check_run_id
from alphalora.store.run_store import RunStore


def run_folder(run_id: str) -> Path:
    """The folder of a run under the data directory."""
    return paths.data_dir() / "runs" / check_run_id(run_id)


def run_predictions(run_id: str, step: int | None = None) -> dict[str, Any]:
    """A run's per-example predictions (its last evaluation unless ``step`` is given)."""
    try:
        return load_predictions(run_folder(run_id), step)
    except AlphaLoRAError as exc:
        raise AlphaLoRAError(f"Run {run_id}: {exc}") from None


def compare_runs(
    run_a: str, run_b: str, *, step_a: int | None = None, step_b: int | None = None
) -> PairedComparison:
    """McNemar/bootstrap comparison of two runs' last (or given) evaluations; refuses runs
    evaluated on different examples, since the paired test needs the same ones."""
    a = run_predictions(run_a, step_a)
    b = run_predictions(run_b, step_b)
    if a["fingerprint"] != b["fingerprint"]:
        raise AlphaLoRAError(
            f"Runs {run_a} and {run_b} were evaluated on different examples (eval-set "
            f"fingerprints {a['fingerprint']} vs {b['fingerprint']}, {a['n']} vs {b['n']} "
            "examples): the paired test needs the same examples. Train both with the same task "
            "and eval_examples, or compare their accuracy intervals instead."
        )
    return compare_correct(a["correct"], b["correct"])


def accuracy_with_interval(run: Mapping[str, Any]) -> dict[str, Any]:
    """Final held-out accuracy of a run with its 95 % Wilson interval: from its stored
    predictions when it has them, else from the accuracy and example count of its summary."""
    summary = run.get("summary") or {}
    out: dict[str, Any] = {"accuracy": None, "low": None, "high": None, "n": None}
    try:
        pred = run_predictions(run["run_id"])
    except AlphaLoRAError:
        pred = None
    if pred is not None and pred["n"]:
        correct, n = int(sum(bool(c) for c in pred["correct"])), int(pred["n"])
        out["fingerprint"] = pred["fingerprint"]
    else:
        acc, n = summary.get("accuracy_after"), summary.get("n_eval")
        if not isinstance(acc, int | float) or not isinstance(n, int) or n <= 0:
            return out
        correct = round(float(acc) * n)
    low, high = wilson_interval(correct, n)
    out.update(accuracy=correct / n, low=low, high=high, n=n)
    return out


def run_name(run: Mapping[str, Any]) -> str:
    """A short name for tables: the run's name and the end of its id."""
    return f"{run.get('name') or 'run'} {str(run['run_id'])[-4:]}"


def pairwise_table(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per pair of runs: both accuracies, the difference with its bootstrap interval,
    the discordant counts, McNemar's p-value and a plain verdict (or why they cannot be paired)."""
    rows = []
    for a, b in itertools.combinations(runs, 2):
        name_a, name_b = run_name(a), run_name(b)
        row: dict[str, Any] = {"run_a": name_a, "run_b": name_b}
        try:
            cmp = compare_runs(a["run_id"], b["run_id"])
        except AlphaLoRAError as exc:
            row.update(verdict=f"Not paired: {exc}")
            rows.append(row)
            continue
        row.update(
            accuracy_a=cmp.accuracy_a,
            accuracy_b=cmp.accuracy_b,
            difference=cmp.difference,
            difference_low=cmp.diff_low,
            difference_high=cmp.diff_high,
            only_a=cmp.only_a,
            only_b=cmp.only_b,
            n=cmp.n,
            p_value=cmp.p_value,
            within_noise=cmp.within_noise,
            verdict=cmp.verdict(name_a, name_b),
        )
        rows.append(row)
    columns = [
        "run_a", "run_b", "accuracy_a", "accuracy_b", "difference", "difference_low",
        "difference_high", "only_a", "only_b", "n", "p_value", "within_noise", "verdict",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def interval_table(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per run: its allocation label, trainable parameters and final accuracy with
    the 95 % interval (the table behind the Runs page's interval chart)."""
    rows = []
    for run in runs:
        config = run.get("config") or {}
        acc = accuracy_with_interval(run)
        rows.append(
            {
                "run_id": run["run_id"],
                "label": run_name(run),
                "allocation": allocation_label(run.get("allocation"), config.get("method")),
                "params_trainable": run.get("params_trainable"),
                "accuracy_before": (run.get("summary") or {}).get("accuracy_before"),
                "accuracy_after": acc["accuracy"],
                "accuracy_low": acc["low"],
                "accuracy_high": acc["high"],
                "n_eval": acc["n"],
            }
        )
    return pd.DataFrame(rows)


def load_runs(store: RunStore, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The decoded runs of ``run_ids``, in that order."""
    return [store.get_run(r) for r in run_ids]
