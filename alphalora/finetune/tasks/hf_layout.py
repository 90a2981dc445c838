"""How dataset rows become examples: the layout of a split (prompt/answer,
question/choices/answer, or a text column plus a label column) detected from its columns and
features, which rows carry a gold label, and the conversion of rows to :class:`Example`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.tasks.examples import Example
from alphalora.finetune.tasks.hf_spec import HFSpec
from alphalora.finetune.tasks.records import check_text, join_continuation, multiple_choice_example

HF_CLASSIFY_TEMPLATE = "Text: {text}\nLabel:"
TEXT_COLUMNS = (
    "text",
    "sentence",
    "review",
    "content",
    "document",
    "tweet",
    "comment",
    "utterance",
    "body",
)
LABEL_COLUMNS = ("label", "labels", "sentiment", "class", "target", "category")
_ROLES: dict[str, tuple[str, ...]] = {
    "prompt-answer": ("prompt", "answer"),
    "multiple-choice": ("question", "choices", "answer"),
    "classification": ("text", "label"),
}


@dataclass(frozen=True)
class Layout:
    """How rows become examples: the layout name and the column for each role."""

    kind: str
    columns: dict[str, str]
    label_names: tuple[str, ...] | None = None  # class names of a ClassLabel label column


def _first_present(candidates: tuple[str, ...], columns: list[str]) -> str | None:
    lowered = {c.lower(): c for c in columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    return None


def _string_columns(features: Any) -> list[str]:
    from datasets import Value

    return [
        name
        for name, feature in features.items()
        if isinstance(feature, Value) and feature.dtype in ("string", "large_string")
    ]


def _class_label_columns(features: Any) -> list[str]:
    from datasets import ClassLabel

    return [name for name, feature in features.items() if isinstance(feature, ClassLabel)]


def detect_layout(spec: HFSpec, features: Any, where: str) -> Layout:
    """The layout of a split with these ``features``: the explicit columns of ``spec`` where
    given, else prompt/answer, question/choices/answer or text + label by column names."""
    from datasets import ClassLabel

    columns = list(features)
    given = spec.columns()
    if {"question", "choices"} & set(given):
        kind = "multiple-choice"
    elif "prompt" in given:
        kind = "prompt-answer"
    elif {"text", "label"} & set(given):
        kind = "classification"
    elif {"question", "choices", "answer"} <= set(columns) or (
        "answer" in given and {"question", "choices"} <= set(columns)
    ):
        kind = "multiple-choice"
    elif "prompt" in columns and ("answer" in columns or "answer" in given):
        kind = "prompt-answer"
    else:
        kind = "classification"
    mixed = sorted(set(given) - set(_ROLES[kind]))
    if mixed:
        raise AlphaLoRAError(
            f"{where}: the options {mixed} do not fit the {kind} layout "
            f"({', '.join(_ROLES[kind])}); use either prompt/answer, question/choices/answer "
            "or text/label."
        )
    chosen = {role: given.get(role, role) for role in _ROLES[kind]}
    if kind == "classification":
        labels = _class_label_columns(features)
        if "label" not in given:
            chosen["label"] = _first_present(LABEL_COLUMNS, columns) or (
                labels[0] if len(labels) == 1 else ""
            )
        if "text" not in given:
            texts = [c for c in _string_columns(features) if c != chosen["label"]]
            chosen["text"] = _first_present(TEXT_COLUMNS, texts) or (
                texts[0] if len(texts) == 1 else ""
            )
        if not chosen["text"] or not chosen["label"]:
            raise AlphaLoRAError(
                f"{where} has the columns {columns}; no layout was recognised. Name the columns "
                "in the spec: ?text=COLUMN&label=COLUMN for classification, "
                "?prompt=COLUMN&answer=COLUMN, or ?question=…&choices=…&answer=…."
            )
    missing = [c for c in chosen.values() if c not in columns]
    if missing:
        raise AlphaLoRAError(
            f"{where} has no column(s) {missing}; its columns are {columns}. Name existing "
            "columns in the spec (e.g. ?text=sentence&label=label)."
        )
    names = None
    if kind == "classification":
        feature = features[chosen["label"]]
        if isinstance(feature, ClassLabel):
            names = tuple(str(n).strip() for n in feature.names)
            if len(set(names)) != len(names) or not all(names):
                raise AlphaLoRAError(
                    f"{where}: the class names of {chosen['label']!r} are empty or repeat: "
                    f"{list(feature.names)}."
                )
    return Layout(kind, chosen, names)


def _usable_label(value: Any) -> bool:
    """False for a missing label: None, NaN, an empty string, or -1 (hidden test labels)."""
    if value is None or (isinstance(value, float) and value != value):
        return False
    if isinstance(value, str):
        return bool(value.strip())
    return not (isinstance(value, int) and not isinstance(value, bool) and value == -1)


def usable_rows(dataset: Any, layout: Layout) -> list[int]:
    """Indices of the rows whose gold answer (label/answer column) is present."""
    column = layout.columns["label" if layout.kind == "classification" else "answer"]
    values = dataset.select_columns([column]).with_format("arrow")[column].to_pylist()
    return [i for i, value in enumerate(values) if _usable_label(value)]


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _mc_record(record: dict[str, Any], layout: Layout) -> dict[str, Any]:
    """A question/choices/answer record; hub-style choices ``{"text": [...], "label": [...]}``
    become the text list, with an answer given as one of the labels turned into its index."""
    choices = record[layout.columns["choices"]]
    answer = record[layout.columns["answer"]]
    if isinstance(choices, dict) and isinstance(choices.get("text"), list):
        labels = [str(x).strip() for x in choices.get("label") or []]
        if str(answer).strip() in labels and str(answer).strip() not in choices["text"]:
            answer = labels.index(str(answer).strip())
        choices = choices["text"]
    return {"question": record[layout.columns["question"]], "choices": choices, "answer": answer}


def rows_to_examples(
    rows: list[dict[str, Any]], layout: Layout, where: str, numbers: list[int] | None = None
) -> tuple[list[Example], int]:
    """Examples from dataset rows in ``layout``; returns them and the number of rows dropped
    because a text field was empty. Malformed choices or answers raise, naming the row by its
    1-based number in the split (``numbers``, default the position in ``rows``)."""
    label = Path(where)
    examples: list[Example] = []
    dropped = 0
    cols = layout.columns
    numbers = numbers if numbers is not None else list(range(1, len(rows) + 1))
    for number, record in zip(numbers, rows, strict=True):
        if any(_empty(record[c]) for c in cols.values()):
            dropped += 1
            continue
        if layout.kind == "multiple-choice":
            examples.append(multiple_choice_example(_mc_record(record, layout), label, number))
        elif layout.kind == "prompt-answer":
            prompt = check_text(record[cols["prompt"]], cols["prompt"], label, number)
            answer = check_text(record[cols["answer"]], cols["answer"], label, number)
            examples.append(Example(prompt, join_continuation(prompt, answer.strip())))
        else:
            text = check_text(record[cols["text"]], cols["text"], label, number).strip()
            value = record[cols["label"]]
            if layout.label_names is not None:
                if not isinstance(value, int) or not 0 <= value < len(layout.label_names):
                    raise AlphaLoRAError(
                        f"{where}: line {number}: label {value!r} is not a class index "
                        f"0-{len(layout.label_names) - 1}."
                    )
                value = layout.label_names[value]
            prompt = HF_CLASSIFY_TEMPLATE.format(text=text)
            answer = check_text(value, cols["label"], label, number).strip()
            examples.append(Example(prompt, join_continuation(prompt, answer)))
    return examples, dropped
