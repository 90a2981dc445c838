"""User data files as tasks: JSONL, JSON (a list of objects) or CSV rows of prompt/answer or
question/choices/answer, with an optional ``split`` column, else a seeded hold-out."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.tasks.examples import (
    SCORING_MODES,
    USER_EVAL_FRACTION,
    USER_EVAL_MAX,
    USER_SPLIT_SEED,
    Example,
    Task,
    seeded_split,
)
from alphalora.finetune.tasks.records import (
    MC_TEMPLATE,
    attach_label_choices,
    check_text,
    free_form,
    join_continuation,
    multiple_choice_example,
)
from alphalora.finetune.tasks.shipped import SHIPPED_TASKS

TRAIN_SPLITS = {"train", "training"}
EVAL_SPLITS = {"eval", "validation", "valid", "dev", "test"}


def _iter_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with path.open("r", encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AlphaLoRAError(
                    f"{path}: line {number} is not valid JSON ({exc.msg}). Each line must be "
                    'one JSON object such as {"prompt": "...", "answer": "..."}.'
                ) from exc
            if not isinstance(record, dict):
                raise AlphaLoRAError(
                    f"{path}: line {number} is a JSON {type(record).__name__}, not an object "
                    'with named fields such as {"prompt": "...", "answer": "..."}.'
                )
            yield number, record


def _iter_json_array(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """A ``.json`` file holding one list of objects; positions are reported as item numbers."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AlphaLoRAError(
            f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}). Use a list of objects "
            'such as [{"prompt": "...", "answer": "..."}] or one object a line (.jsonl).'
        ) from exc
    if not isinstance(records, list):
        raise AlphaLoRAError(
            f"{path} must hold a JSON list of objects; got a {type(records).__name__}."
        )
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise AlphaLoRAError(
                f"{path}: item {number} is a JSON {type(record).__name__}, not an object with "
                'named fields such as {"prompt": "...", "answer": "..."}.'
            )
        yield number, record


def _iter_csv(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with path.open("r", encoding="utf-8", newline="") as fh:
        text = fh.read()
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        return
    width = len(reader.fieldnames)
    for record in reader:
        number = reader.line_num
        if None in record or any(v is None for v in record.values()):
            raise AlphaLoRAError(
                f"{path}: line {number} does not have {width} comma-separated fields like the "
                "header; quote fields that contain commas or line breaks."
            )
        yield number, record


def _starts_with_bracket(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(4096).lstrip()
    return head.startswith(b"[")


def read_examples(path: str | Path) -> tuple[list[Example], list[str | None], str]:
    """Read a JSONL or CSV file of ``prompt``/``answer`` or ``question``/``choices``/``answer``
    rows. Returns the examples, each row's ``split`` value (or None), and the format name."""
    path = Path(path).expanduser()
    if not path.exists():
        raise AlphaLoRAError(
            f"The dataset file {path} does not exist. Give a path to a .jsonl or .csv file, or "
            f"the name of a shipped task ({', '.join(SHIPPED_TASKS)})."
        )
    if path.is_dir():
        raise AlphaLoRAError(f"{path} is a folder; give the path to a .jsonl or .csv file.")
    suffix = path.suffix.lower()
    if suffix == ".json" and _starts_with_bracket(path):
        rows: Iterable[tuple[int, dict[str, Any]]] = _iter_json_array(path)
    elif suffix in (".jsonl", ".json"):
        rows = _iter_jsonl(path)
    elif suffix in (".csv", ".tsv"):
        if suffix == ".tsv":
            raise AlphaLoRAError(f"{path}: tab-separated files are not supported; save as CSV.")
        rows = _iter_csv(path)
    else:
        raise AlphaLoRAError(
            f"{path}: unsupported file type {suffix or '(none)'}; use .jsonl (one JSON object a "
            "line) or .csv with a header row."
        )
    examples: list[Example] = []
    splits: list[str | None] = []
    layout: str | None = None
    try:
        for number, record in rows:
            keys = set(record)
            if layout is None:
                if {"question", "choices", "answer"} <= keys:
                    layout = "multiple-choice"
                elif {"prompt", "answer"} <= keys:
                    layout = "prompt-answer"
                else:
                    raise AlphaLoRAError(
                        f"{path}: line {number} has the columns {sorted(keys)}; a dataset needs "
                        "either 'prompt' and 'answer', or 'question', 'choices' and 'answer'."
                    )
            needed = (
                ("question", "choices", "answer")
                if layout == "multiple-choice"
                else ("prompt", "answer")
            )
            missing = [c for c in needed if c not in keys]
            if missing:
                raise AlphaLoRAError(
                    f"{path}: line {number} lacks the column(s) {missing} (found {sorted(keys)})."
                )
            if layout == "multiple-choice":
                for column in ("question", "answer"):
                    check_text(record[column], column, path, number)
                examples.append(multiple_choice_example(record, path, number))
            else:
                prompt = check_text(record["prompt"], "prompt", path, number)
                answer = check_text(record["answer"], "answer", path, number)
                examples.append(Example(prompt, join_continuation(prompt, answer.strip())))
            split = record.get("split")
            splits.append(None if split in (None, "") else str(split).strip().lower())
    except UnicodeDecodeError as exc:
        raise AlphaLoRAError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8.") from exc
    if not examples:
        raise AlphaLoRAError(f"{path} holds no examples; add at least a few rows.")
    return examples, splits, layout or "prompt-answer"


def load_user_task(
    path: str | Path,
    *,
    scoring: str = "auto",
    eval_size: int | None = None,
    seed: int = USER_SPLIT_SEED,
) -> Task:
    """A task from a user JSONL/CSV file. A ``split`` column (train / eval|validation|test)
    is honoured; otherwise a seeded split holds out 20 % (at most 500) for evaluation."""
    if scoring not in SCORING_MODES:
        raise AlphaLoRAError(f"scoring must be one of {', '.join(SCORING_MODES)}; got {scoring!r}.")
    path = Path(path).expanduser()
    examples, splits, layout = read_examples(path)
    notes: list[str] = []
    if layout == "multiple-choice":
        if scoring == "generate":
            scoring_used, choices = "generate", None
        else:
            scoring_used, choices = "choice", None
        template = MC_TEMPLATE
    else:
        examples, choices, scoring_used = attach_label_choices(examples, scoring)
        template = "{prompt}"
    if scoring_used == "generate":
        examples = free_form(examples)
        notes.append("scored by greedy generation and exact match of the first line")
    if any(s is not None for s in splits):
        unknown = sorted({s for s in splits if s not in TRAIN_SPLITS | EVAL_SPLITS})
        if unknown:
            raise AlphaLoRAError(
                f"{path}: unknown split value(s) {unknown}; use 'train' or 'eval' "
                "(validation/test/dev also mean eval)."
            )
        train = [ex for ex, s in zip(examples, splits, strict=True) if s in TRAIN_SPLITS]
        held_out = [ex for ex, s in zip(examples, splits, strict=True) if s in EVAL_SPLITS]
        if not train or not held_out:
            raise AlphaLoRAError(
                f"{path}: the split column leaves {len(train)} train and {len(held_out)} eval "
                "rows; both need at least one."
            )
        notes.append("split taken from the file's split column")
    else:
        if len(examples) < 2:
            raise AlphaLoRAError(
                f"{path} holds only {len(examples)} example; at least 2 are needed to hold one "
                "out for evaluation."
            )
        size = eval_size
        if size is None:
            size = min(USER_EVAL_MAX, max(1, round(len(examples) * USER_EVAL_FRACTION)))
        size = max(1, min(size, len(examples) - 1))
        train, held_out = seeded_split(examples, size, seed)
    return Task(
        name=path.stem,
        train=train,
        eval=held_out,
        template=template,
        choices=choices,
        scoring=scoring_used,
        source=str(path),
        licence="supplied by the user",
        notes=notes,
    )
