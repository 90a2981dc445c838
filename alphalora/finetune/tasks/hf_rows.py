"""Which dataset rows train and which evaluate: the eval split (given, else the first labelled
validation/test/dev split, else a seeded hold-out of the train split) and seeded samples under
the ``max_train``/``max_eval`` caps, with notes saying what was chosen."""

from __future__ import annotations

import random
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.tasks.examples import USER_EVAL_FRACTION, USER_EVAL_MAX, seeded_split
from alphalora.finetune.tasks.hf_layout import Layout, usable_rows
from alphalora.finetune.tasks.hf_spec import HFSpec

EVAL_SPLIT_ORDER = ("validation", "valid", "test", "dev", "eval")


def _sample(indices: list[int], cap: int, seed: int) -> list[int]:
    """A seeded shuffle of ``indices`` cut to ``cap`` (the order is the shuffled one)."""
    order = list(indices)
    random.Random(seed).shuffle(order)
    return order[:cap]


def _no_labels(where: str, total: int) -> str:
    return (
        f"{where} has no labelled rows ({total} rows, every gold label missing or -1 as in "
        "hidden test sets)"
    )


def _check_columns(dataset: Any, layout: Layout, where: str) -> None:
    """Raise unless ``dataset`` has every column ``layout`` reads (an eval split may differ)."""
    columns = list(dataset.features)
    missing = [c for c in layout.columns.values() if c not in columns]
    if missing:
        raise AlphaLoRAError(
            f"{where} lacks the column(s) {missing} of the training split; its columns are "
            f"{columns}. Choose another eval_split."
        )


def _pick_eval_split(
    spec: HFSpec, splits: dict[str, Any], layout: Layout, label: str
) -> tuple[str | None, list[int], list[str]]:
    """The eval split's name and usable rows: ``eval_split`` if given, else the first of
    validation/test/dev with labels; (None, [], notes) when the train split must be split."""
    notes: list[str] = []
    if spec.eval_split is not None:
        if spec.eval_split not in splits:
            raise AlphaLoRAError(
                f"{label} has no split {spec.eval_split!r}; its splits are {sorted(splits)}. "
                "Pick one with ?eval_split=NAME."
            )
        where = f"{label} split {spec.eval_split!r}"
        _check_columns(splits[spec.eval_split], layout, where)
        usable = usable_rows(splits[spec.eval_split], layout)
        if not usable:
            raise AlphaLoRAError(
                f"{_no_labels(where, len(splits[spec.eval_split]))}. Pick another eval_split or "
                "leave it out to hold out part of the training split."
            )
        return spec.eval_split, usable, notes
    for name in EVAL_SPLIT_ORDER:
        if name in splits and name != spec.split:
            _check_columns(splits[name], layout, f"{label} split {name!r}")
            usable = usable_rows(splits[name], layout)
            if usable:
                return name, usable, notes
            notes.append(f"split {name!r} skipped for evaluation: no labelled rows")
    return None, [], notes


def _cap_note(part: str, cap: int, taken: int, total: int, seed: int) -> list[str]:
    if taken >= total:
        return []
    return [f"{part} capped at {cap}: a seeded sample (seed {seed}) of {total} labelled rows"]


def choose_rows(
    spec: HFSpec, splits: dict[str, Any], layout: Layout, label: str, seed: int
) -> tuple[list[int], str, list[int], list[str]]:
    """Train row indices, the eval split's name and its row indices (seeded samples under the
    caps), and notes saying what was chosen."""
    train_ds = splits[spec.split]
    where = f"{label} split {spec.split!r}"
    usable = usable_rows(train_ds, layout)
    if not usable:
        raise AlphaLoRAError(
            f"{_no_labels(where, len(train_ds))}. Pick a split with labels via ?split=NAME."
        )
    notes = [f"layout {layout.kind}: columns {layout.columns}"]
    if len(usable) < len(train_ds):
        notes.append(
            f"split {spec.split!r}: dropped {len(train_ds) - len(usable)} row(s) without a label"
        )
    eval_name, eval_rows, skipped = _pick_eval_split(spec, splits, layout, label)
    notes += skipped
    if eval_name is not None:
        train_idx = _sample(usable, spec.max_train, seed)
        eval_idx = _sample(eval_rows, spec.max_eval, seed)
        notes.append(f"evaluation on split {eval_name!r}")
        notes += _cap_note("eval", spec.max_eval, len(eval_idx), len(eval_rows), seed)
    else:
        if len(usable) < 2:
            raise AlphaLoRAError(
                f"{where} holds only {len(usable)} labelled row and no other split has labels; "
                "at least 2 are needed to hold one out for evaluation."
            )
        size = min(USER_EVAL_MAX, max(1, round(len(usable) * USER_EVAL_FRACTION)))
        size = max(1, min(size, spec.max_eval, len(usable) - 1))
        usable, eval_idx = seeded_split(usable, size, seed)
        train_idx = usable[: spec.max_train]
        eval_name = spec.split
        notes.append(
            f"no labelled validation/test/dev split: {size} rows of split {spec.split!r} held "
            f"out for evaluation (seed {seed})"
        )
    notes += _cap_note("train", spec.max_train, len(train_idx), len(usable), seed)
    return train_idx, eval_name, eval_idx, notes
