"""A stored run as one flat row of the run list (:data:`LIST_COLUMNS`): method, allocation label,
model and task read from its config or allocation, accuracies from its summary, total experts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

LIST_COLUMNS = (
    "run_id",
    "name",
    "status",
    "method",
    "allocation",
    "model",
    "task",
    "created_at",
    "started_at",
    "finished_at",
    "device",
    "accuracy_before",
    "accuracy_after",
    "seconds_per_step",
    "params_trainable",
    "total_experts",
    "error",
)


def _pick_text(source: Mapping[str, Any] | None, keys: Sequence[str]) -> str | None:
    """The first of ``keys`` present in ``source`` as text; a nested dict gives its name/id."""
    if not isinstance(source, Mapping):
        return None
    for key in keys:
        value = source.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, Mapping):
            inner = _pick_text(value, ("name", "id", "source", "path", "model_id", "method"))
            if inner:
                return inner
            continue
        return str(value)
    return None


def total_experts(allocation: Mapping[str, Any] | None) -> int | None:
    """Total number of LoRA experts of an allocation dict (``total_experts``/``budget`` or the
    sum of its per-layer ``experts`` list), or ``None`` when it does not say."""
    if not isinstance(allocation, Mapping):
        return None
    for key in ("total_experts", "total", "budget"):
        value = allocation.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
    for key in ("experts", "experts_per_layer", "n_experts", "counts"):
        value = allocation.get(key)
        if isinstance(value, Mapping):
            value = list(value.values())
        if isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
            return int(sum(value))
    return None


def run_summary_row(run: Mapping[str, Any]) -> dict[str, Any]:
    """One decoded run as a flat row of :data:`LIST_COLUMNS` (method/model/task are read from
    the config, then the allocation; accuracies from the summary)."""
    config = run.get("config") or {}
    if not isinstance(config, Mapping):
        config = {}
    allocation = run.get("allocation") or (
        config.get("allocation") if isinstance(config, Mapping) else None
    )
    summary = run.get("summary") or {}
    damaged = run.get("damaged")
    error = run.get("error")
    if damaged:  # shown on the row itself, ahead of any error
        error = "damaged row: " + "; ".join(damaged) + (f" | {error}" if error else "")
    method = _pick_text(config, ("method", "allocation_method", "mode")) or _pick_text(
        allocation, ("method", "mode", "shape")
    )
    return {
        "run_id": run["run_id"],
        "name": run.get("name"),
        "status": run["status"],
        "method": method,
        "allocation": _pick_text(allocation, ("label", "method", "mode")),
        "model": _pick_text(config, ("model", "model_name", "model_id", "base_model", "source")),
        "task": _pick_text(config, ("task", "task_name", "dataset", "data")),
        "created_at": run.get("created_at"),
        "started_at": run.get("started_at"),
        "finished_at": run.get("finished_at"),
        "device": run.get("device"),
        "accuracy_before": summary.get("accuracy_before") if isinstance(summary, dict) else None,
        "accuracy_after": summary.get("accuracy_after") if isinstance(summary, dict) else None,
        "seconds_per_step": run.get("seconds_per_step"),
        "params_trainable": run.get("params_trainable"),
        "total_experts": total_experts(allocation if isinstance(allocation, Mapping) else None),
        "error": error,
    }
