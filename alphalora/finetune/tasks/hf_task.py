"""Hugging Face datasets as fine-tuning tasks: ``hf:NAME[:CONFIG][?key=value&…]`` → :class:`Task`.

Loads the splits, detects the layout, picks train and eval rows, converts them with the example
builders of :mod:`alphalora.finetune.tasks.records`, and attaches the answer choices and scoring.
``datasets`` is imported only when a task is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.tasks.examples import SCORING_MODES, USER_SPLIT_SEED, Example, Task
from alphalora.finetune.tasks.hf_layout import (
    HF_CLASSIFY_TEMPLATE,
    Layout,
    detect_layout,
    rows_to_examples,
)
from alphalora.finetune.tasks.hf_load import load_splits
from alphalora.finetune.tasks.hf_rows import choose_rows
from alphalora.finetune.tasks.hf_spec import HFSpec, format_hf_spec, parse_hf_spec
from alphalora.finetune.tasks.records import (
    AUTO_CHOICE_MAX_LABELS,
    MC_TEMPLATE,
    attach_label_choices,
    free_form,
    join_continuation,
)

HF_LICENCE_UNKNOWN = "see the dataset card on the Hugging Face hub"
_MAX_CHOICE_CLASSES = 4 * AUTO_CHOICE_MAX_LABELS  # the limit records.attach_label_choices applies


def _convert(
    dataset: Any, indices: list[int], layout: Layout, where: str
) -> tuple[list[Example], int]:
    """Examples from the rows ``indices`` of ``dataset`` (in that order) and the number dropped."""
    if not indices:
        return [], 0
    wanted = list(dict.fromkeys(layout.columns.values()))  # never decode unused (media) columns
    rows = dataset.select_columns(wanted).select(indices).to_list()
    return rows_to_examples(rows, layout, where, [i + 1 for i in indices])


def _source(spec_text: str, train_split: Any) -> str:
    fingerprint = getattr(train_split, "_fingerprint", None)
    version = getattr(getattr(train_split, "info", None), "version", None)
    extra = []
    if fingerprint:
        extra.append(f"fingerprint {fingerprint}")
    if version is not None and str(version) not in ("0.0.0", ""):
        extra.append(f"version {version}")
    return spec_text + (f" ({', '.join(extra)})" if extra else "")


def _licence(train_split: Any) -> str:
    licence = getattr(getattr(train_split, "info", None), "license", None)
    return str(licence).strip() if licence and str(licence).strip() else HF_LICENCE_UNKNOWN


def _task_name(spec: HFSpec, local: bool) -> str:
    base = Path(spec.name).name if local else spec.name
    return base + (f":{spec.config}" if spec.config else "")


def load_hf_task(spec: str | HFSpec, *, scoring: str = "auto", seed: int = USER_SPLIT_SEED) -> Task:
    """A task from a Hugging Face dataset (hub id or local folder). The eval split is
    ``eval_split``, else validation/test/dev with labels, else a seeded hold-out of the train
    split; both are capped by a seeded sample (``max_train``, ``max_eval``)."""
    if scoring not in SCORING_MODES:
        raise AlphaLoRAError(f"scoring must be one of {', '.join(SCORING_MODES)}; got {scoring!r}.")
    parsed = parse_hf_spec(spec) if isinstance(spec, str) else spec
    spec_text = spec.strip() if isinstance(spec, str) else format_hf_spec(spec)
    splits, local = load_splits(parsed)
    label = f"The dataset {parsed.name!r}" + (
        f" (config {parsed.config!r})" if parsed.config else ""
    )
    if parsed.split not in splits:
        raise AlphaLoRAError(
            f"{label} has no split {parsed.split!r}; its splits are {sorted(splits)}. Pick one "
            "with ?split=NAME."
        )
    train_ds = splits[parsed.split]
    train_where = f"{label} split {parsed.split!r}"
    layout = detect_layout(parsed, train_ds.features, train_where)
    train_idx, eval_name, eval_idx, notes = choose_rows(parsed, splits, layout, label, seed)
    train, dropped_train = _convert(train_ds, train_idx, layout, train_where)
    held_out, dropped_eval = _convert(
        splits[eval_name], eval_idx, layout, f"{label} split {eval_name!r}"
    )
    for part, dropped in (("train", dropped_train), ("eval", dropped_eval)):
        if dropped:
            notes.append(f"{part}: dropped {dropped} row(s) with an empty field")
    if not train or not held_out:
        raise AlphaLoRAError(
            f"{label} leaves {len(train)} train and {len(held_out)} eval examples after dropping "
            "rows with empty fields; both need at least one."
        )
    train, held_out, choices, scoring_used, template = _score(
        train, held_out, layout, scoring, label
    )
    if scoring_used == "generate":
        notes.append("scored by greedy generation and exact match of the first line")
    return Task(
        name=_task_name(parsed, local),
        train=train,
        eval=held_out,
        template=template,
        choices=choices,
        scoring=scoring_used,
        source=_source(spec_text, train_ds),
        licence=_licence(train_ds),
        notes=notes,
    )


def _score(
    train: list[Example], held_out: list[Example], layout: Layout, scoring: str, label: str
) -> tuple[list[Example], list[Example], tuple[str, ...] | None, str, str]:
    """Attach the answer choices and pick the scoring: class names for a ClassLabel column,
    letters for multiple choice, the label set (or generation) for free text labels."""
    if layout.kind == "multiple-choice":
        if scoring == "generate":
            return free_form(train), free_form(held_out), None, "generate", MC_TEMPLATE
        return train, held_out, None, "choice", MC_TEMPLATE
    template = HF_CLASSIFY_TEMPLATE if layout.kind == "classification" else "{prompt}"
    if layout.label_names is not None:
        choices = tuple(join_continuation("Label:", name) for name in layout.label_names)
        if scoring == "choice" and len(choices) < 2:
            raise AlphaLoRAError(
                f"{label}: scoring 'choice' needs at least two classes; the label column has "
                f"{len(choices)}."
            )
        if scoring == "choice" and len(choices) > _MAX_CHOICE_CLASSES:
            raise AlphaLoRAError(
                f"{label}: scoring 'choice' with {len(choices)} classes is too many candidates; "
                "use scoring 'generate'."
            )
        few = 2 <= len(choices) <= AUTO_CHOICE_MAX_LABELS  # the rule records.py applies to labels
        if scoring == "generate" or (scoring == "auto" and not few) or len(choices) < 2:
            return free_form(train), free_form(held_out), None, "generate", template
        train = [Example(ex.prompt, ex.answer, choices) for ex in train]
        held_out = [Example(ex.prompt, ex.answer, choices) for ex in held_out]
        return train, held_out, choices, "choice", template
    both, choices, scoring_used = attach_label_choices(train + held_out, scoring)
    if scoring_used == "generate":
        both = free_form(both)
    return both[: len(train)], both[len(train) :], choices, scoring_used, template
