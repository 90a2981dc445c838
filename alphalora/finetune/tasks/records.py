"""Record → :class:`Example` builders shared by user files and Hugging Face datasets: text
checks, prompt/answer joining, multiple-choice prompts, and the choice-or-generate decision
for prompt/answer labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.tasks.examples import Example

AUTO_CHOICE_MAX_LABELS = 16
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MC_TEMPLATE = "Question: {question}\n{options}\nAnswer:"


def join_continuation(prompt: str, answer: str) -> str:
    """The answer as a continuation: a single space is added when neither side has one."""
    if prompt and not prompt[-1].isspace() and answer and not answer[0].isspace():
        return " " + answer
    return answer


def _parse_choices(raw: Any, path: Path, number: int) -> tuple[str, ...]:
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                raise AlphaLoRAError(
                    f"{path}: line {number}: choices look like a JSON list but do not parse "
                    f"({exc.msg}). Write them as a list or as A|B|C."
                ) from exc
        else:
            raw = text.split("|")
    if not isinstance(raw, list | tuple):
        raise AlphaLoRAError(
            f"{path}: line {number}: choices must be a list or a string like 'A|B|C'; got "
            f"{type(raw).__name__}."
        )
    choices = tuple(str(c).strip() for c in raw)
    if len(choices) < 2 or any(not c for c in choices):
        raise AlphaLoRAError(
            f"{path}: line {number}: give at least two non-empty choices; got {list(choices)}."
        )
    if len(choices) > len(LETTERS):
        raise AlphaLoRAError(
            f"{path}: line {number}: at most {len(LETTERS)} choices are supported; got "
            f"{len(choices)}."
        )
    if len(set(choices)) != len(choices):
        raise AlphaLoRAError(f"{path}: line {number}: choices repeat: {list(choices)}.")
    return choices


def multiple_choice_example(record: dict[str, Any], path: Path, number: int) -> Example:
    """A lettered multiple-choice example from a question/choices/answer record; the answer may
    be one of the choices, its letter or its 0-based index. ``path`` and ``number`` name the row
    in error messages."""
    question = str(record["question"]).strip()
    choices = _parse_choices(record["choices"], path, number)
    answer = str(record["answer"]).strip()
    if answer in choices:
        gold = choices.index(answer)
    elif len(answer) == 1 and answer.upper() in LETTERS[: len(choices)]:
        gold = LETTERS.index(answer.upper())
    elif answer.isdigit() and int(answer) < len(choices):
        gold = int(answer)
    else:
        raise AlphaLoRAError(
            f"{path}: line {number}: the answer {answer!r} is neither one of the choices "
            f"{list(choices)} nor a letter A-{LETTERS[len(choices) - 1]} nor a 0-based index."
        )
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    letters = tuple(" " + LETTERS[i] for i in range(len(choices)))
    prompt = MC_TEMPLATE.format(question=question, options=options)
    return Example(prompt, letters[gold], letters)


def check_text(value: Any, column: str, path: Path, number: int) -> str:
    """The text of a field (lists and objects as JSON); raises when it is missing or blank."""
    if value is None or (isinstance(value, float) and value != value):
        raise AlphaLoRAError(f"{path}: line {number}: the {column!r} field is empty.")
    if isinstance(value, str):
        text = value
    elif isinstance(value, list | dict):
        text = json.dumps(value)
    else:
        text = str(value)
    if not text.strip():
        raise AlphaLoRAError(f"{path}: line {number}: the {column!r} field is empty.")
    return text


def attach_label_choices(
    examples: list[Example], scoring: str
) -> tuple[list[Example], tuple[str, ...] | None, str]:
    """For prompt/answer data decide between constrained choice (a small label set) and
    generation, and give every example the task's label set when choosing."""
    labels = sorted({ex.answer for ex in examples})
    few = len(labels) <= AUTO_CHOICE_MAX_LABELS and len(examples) >= 2 * len(labels)
    if scoring == "generate" or (scoring == "auto" and not few) or len(labels) < 2:
        if scoring == "choice":
            raise AlphaLoRAError(
                "scoring 'choice' needs at least two distinct answers in the data; "
                f"found {len(labels)}."
            )
        return examples, None, "generate"
    if len(labels) > 4 * AUTO_CHOICE_MAX_LABELS:
        raise AlphaLoRAError(
            f"scoring 'choice' with {len(labels)} distinct answers is too many candidates; use "
            "scoring 'generate' for free-form answers."
        )
    choices = tuple(labels)
    return [Example(ex.prompt, ex.answer, choices) for ex in examples], choices, "choice"


def free_form(examples: list[Example]) -> list[Example]:
    """Drop the answer choices: the model is trained to write the answer and stop (EOS),
    and scored by generation."""
    return [Example(ex.prompt, ex.answer) for ex in examples]
