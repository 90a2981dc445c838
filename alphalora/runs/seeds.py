"""Several seeds per configuration: launch N runs that differ only by their seed, and summarise
them as mean ± 95 % interval (Student t over seeds), for final accuracies and for curves.

Runs of one configuration launched together share a ``seed_group`` (kept in
``config["extra"]``): a hash of the config without its seed and name, so a group is found again
from the run store alone. A run launched on its own is a group of one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from alphalora.allocation.labels import allocation_label
from alphalora.errors import AlphaLoRAError
from alphalora.runs.compare import mean_interval
from alphalora.runs.compare_runs import accuracy_with_interval

MAX_SEEDS = 20


def seed_values(n_seeds: Any, base_seed: Any = 0) -> list[int]:
    """``n_seeds`` consecutive seeds from ``base_seed``; refuses a count ≤ 0 or above
    :data:`MAX_SEEDS` and a negative base."""
    for name, value in (("number of seeds", n_seeds), ("first seed", base_seed)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise AlphaLoRAError(f"The {name} must be a whole number; got {value!r}.")
    if n_seeds <= 0:
        raise AlphaLoRAError(f"The number of seeds must be ≥ 1 (one run per seed); got {n_seeds}.")
    if n_seeds > MAX_SEEDS:
        raise AlphaLoRAError(f"At most {MAX_SEEDS} seeds per allocation; got {n_seeds}.")
    if base_seed < 0:
        raise AlphaLoRAError(f"Seeds must be ≥ 0; got first seed {base_seed}.")
    return [int(base_seed) + i for i in range(int(n_seeds))]


def seed_group_key(config: Mapping[str, Any]) -> str:
    """What the runs of one configuration share: a hash of the config minus seed and name."""
    rest = {k: v for k, v in config.items() if k not in ("seed", "name", "extra")}
    text = json.dumps(rest, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def expand_seeds(
    name: str, config: Mapping[str, Any], n_seeds: int, base_seed: int = 0
) -> list[tuple[str, dict[str, Any]]]:
    """(name, config) per seed: the same config with ``seed`` set and its group recorded in
    ``extra["seed_group"]``; names get ``-s<seed>`` when there are several seeds."""
    seeds = seed_values(n_seeds, base_seed)
    group = seed_group_key(config)
    out = []
    for seed in seeds:
        cfg = copy.deepcopy(dict(config))
        cfg["seed"] = seed
        cfg["extra"] = {**(cfg.get("extra") or {}), "seed_group": group}
        out.append((f"{name}-s{seed}" if len(seeds) > 1 else name, cfg))
    return out


def start_seeded_runs(
    launches: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any] | None]],
    n_seeds: int,
    base_seed: int = 0,
    **start_kwargs: Any,
) -> list[str]:
    """Start every (name, config, allocation record) of ``launches`` once per seed (checked
    before anything starts); returns the run ids in launch order."""
    from alphalora.runs import jobs

    plans = [
        (run_name, cfg, alloc)
        for name, config, alloc in launches
        for run_name, cfg in expand_seeds(name, config, n_seeds, base_seed)
    ]
    return [
        jobs.start_run(cfg, name=run_name, allocation=None if alloc is None else dict(alloc),
                       **start_kwargs)
        for run_name, cfg, alloc in plans
    ]  # fmt: skip


def run_group(run: Mapping[str, Any]) -> str:
    """A run's seed group: the one recorded at launch, else a group of its own."""
    config = run.get("config") or {}
    recorded = (config.get("extra") or {}).get("seed_group")
    return str(recorded) if recorded else str(run["run_id"])


def seed_groups(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per seed group of the completed ``runs``: allocation label, seeds, and the final
    accuracy as mean with its 95 % interval over seeds (equal to the run's own value for one
    seed, whose interval is the Wilson one)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        if run.get("status") == "completed":
            groups.setdefault(run_group(run), []).append(run)
    rows = []
    for key, members in groups.items():
        accs = [accuracy_with_interval(r) for r in members]
        values = [a["accuracy"] for a in accs if a["accuracy"] is not None]
        if not values:
            continue
        first = members[0]
        config = first.get("config") or {}
        mean, low, high = mean_interval(values)
        if len(values) == 1:
            low, high = accs[0]["low"], accs[0]["high"]
        rows.append(
            {
                "group": key,
                "allocation": allocation_label(first.get("allocation"), config.get("method")),
                "n_seeds": len(values),
                "seeds": ", ".join(str((r.get("config") or {}).get("seed")) for r in members),
                "accuracy_mean": mean,
                "accuracy_low": low,
                "accuracy_high": high,
                "accuracies": values,
                "params_trainable": first.get("params_trainable"),
                "run_ids": [r["run_id"] for r in members],
            }
        )
    columns = [
        "group", "allocation", "n_seeds", "seeds", "accuracy_mean", "accuracy_low",
        "accuracy_high", "accuracies", "params_trainable", "run_ids",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def seed_curves(
    metrics: pd.DataFrame, groups: pd.DataFrame, column: str, split: str = "eval"
) -> pd.DataFrame:
    """Per seed group and step: the mean of ``column`` over the group's runs with its 95 %
    interval (columns group, allocation, step, mean, low, high, n)."""
    rows = []
    if metrics is None or metrics.empty or column not in metrics.columns:
        return pd.DataFrame(columns=["group", "allocation", "step", "mean", "low", "high", "n"])
    df = metrics[metrics["split"] == split]
    for g in groups.itertuples():
        part = df[df["run_id"].isin(g.run_ids)]
        for step, at in part.groupby("step", sort=True):
            values = pd.to_numeric(at[column], errors="coerce").dropna().tolist()
            if not values:
                continue
            mean, low, high = mean_interval(values)
            rows.append(
                {"group": g.group, "allocation": g.allocation, "step": int(step), "mean": mean,
                 "low": low, "high": high, "n": len(values)}
            )  # fmt: skip
    return pd.DataFrame(rows, columns=["group", "allocation", "step", "mean", "low", "high", "n"])
