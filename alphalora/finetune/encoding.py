"""Tokenisation and batching for fine-tuning: an :class:`Example` as prompt + answer token ids
with the prompt masked out of the labels (left-truncated to a maximum length), and dynamic
padding of a batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.tasks.examples import Example

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Features:
    """Token ids of prompt + answer, labels (−100 on the prompt), where the answer starts."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    answer_start: int


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a prompt, with the tokenizer's special tokens (such as BOS)."""
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def continuation_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a continuation (an answer or choice), without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _leading_special(tokenizer: Any, ids: Sequence[int]) -> int:
    """1 when the tokenizer put a BOS token first (kept through left truncation), else 0."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return 1 if bos is not None and len(ids) > 1 and ids[0] == bos else 0


def join_truncated(
    tokenizer: Any, prompt_ids: Sequence[int], answer_ids: Sequence[int], max_length: int
) -> Features:
    """Prompt + answer ids cut to ``max_length`` from the left of the prompt (a leading BOS is
    kept); the answer is only cut, from its end, when it alone does not fit."""
    if max_length < 2:
        raise AlphaLoRAError(f"max_length must be at least 2; got {max_length}.")
    prompt = list(prompt_ids)
    answer = list(answer_ids)[: max_length - 1]
    room = max_length - len(answer)
    if len(prompt) > room:
        keep_first = _leading_special(tokenizer, prompt)
        if room <= keep_first:
            prompt = prompt[-room:]
        else:
            prompt = prompt[:keep_first] + prompt[len(prompt) - (room - keep_first) :]
    ids = prompt + answer
    labels = [IGNORE_INDEX] * len(prompt) + answer
    return Features(tuple(ids), tuple(labels), len(prompt))


def _answer_ids(tokenizer: Any, example: Example) -> list[int]:
    ids = continuation_ids(tokenizer, example.answer)
    if example.choices is None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    if not ids:
        raise AlphaLoRAError(f"The answer {example.answer!r} tokenises to nothing.")
    return ids


def encode_example(tokenizer: Any, example: Example, max_length: int) -> Features:
    """Tokenise one example for training: prompt ids (with the tokenizer's special tokens),
    answer ids (plus EOS for free-form answers), labels masked on the prompt."""
    return join_truncated(
        tokenizer,
        prompt_ids(tokenizer, example.prompt),
        _answer_ids(tokenizer, example),
        max_length,
    )


def encode_examples(tokenizer: Any, examples: Sequence[Example], max_length: int) -> list[Features]:
    """:func:`encode_example` over a list (prompts are tokenised in one batched call)."""
    if not examples:
        return []
    prompts = tokenizer([ex.prompt for ex in examples], add_special_tokens=True)["input_ids"]
    return [
        join_truncated(tokenizer, p, _answer_ids(tokenizer, ex), max_length)
        for p, ex in zip(prompts, examples, strict=True)
    ]


def pad_token_id(tokenizer: Any) -> int:
    """The id used for padding: the tokenizer's pad token, else its EOS, else 0."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def collate(features: Sequence[Features], pad_id: int, *, left: bool = False) -> dict[str, Any]:
    """Pad a batch to its longest member (dynamic padding): input_ids, attention_mask, labels
    (−100 on padding). Right padding for training and scoring, left padding for generation."""
    import torch

    width = max(len(f.input_ids) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f.input_ids)
        span = slice(width - n, width) if left else slice(0, n)
        ids[row, span] = torch.tensor(f.input_ids, dtype=torch.long)
        mask[row, span] = 1
        labels[row, span] = torch.tensor(f.labels, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
