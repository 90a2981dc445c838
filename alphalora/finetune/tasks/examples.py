"""The task types every task source builds: :class:`Example` (a prompt and its gold
continuation) and :class:`Task` (train/eval examples, template, scoring, source, licence), with
the seeded train/eval split and the defaults shared by user files and Hugging Face datasets.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from alphalora.errors import AlphaLoRAError

USER_EVAL_FRACTION = 0.2
USER_EVAL_MAX = 500
USER_SPLIT_SEED = 0

SCORING_MODES = ("auto", "choice", "generate")


@dataclass(frozen=True)
class Example:
    """One prompt and its gold continuation; ``choices`` lists the candidate continuations of a
    classification or multiple-choice example (``None`` for a free-form answer)."""

    prompt: str
    answer: str
    choices: tuple[str, ...] | None = None

    @property
    def gold_index(self) -> int:
        """Index of the gold answer among ``choices``."""
        if self.choices is None:
            raise AlphaLoRAError("This example has no answer choices.")
        return self.choices.index(self.answer)


@dataclass
class Task:
    """A named task: train/eval examples, how prompts are written, how answers are scored,
    and where the data comes from (source and licence)."""

    name: str
    train: list[Example]
    eval: list[Example]
    template: str
    choices: tuple[str, ...] | None = None
    scoring: str = "choice"
    source: str = ""
    licence: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (sizes, template, choices, scoring, source, licence)."""
        return {
            "name": self.name,
            "n_train": len(self.train),
            "n_eval": len(self.eval),
            "template": self.template,
            "choices": None if self.choices is None else list(self.choices),
            "scoring": self.scoring,
            "source": self.source,
            "licence": self.licence,
            "notes": list(self.notes),
        }


def seeded_split(items: list[Any], eval_size: int, seed: int) -> tuple[list[Any], list[Any]]:
    """Shuffle ``items`` with ``seed`` and return (train, eval), the first ``eval_size``
    shuffled items held out for evaluation."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    eval_idx, train_idx = order[:eval_size], order[eval_size:]
    return [items[i] for i in train_idx], [items[i] for i in eval_idx]
