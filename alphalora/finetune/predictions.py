"""Per-example predictions of each evaluation, kept in the run folder so that two runs can be
compared example by example (a paired test). Each example is identified by its index and a
stable hash of its prompt, gold answer and choices; the list of those hashes fingerprints the
evaluation set, so runs scored on different examples are never paired by mistake.

File: ``<run folder>/predictions/step-<step>.json`` with ``step``, ``fingerprint``, ``n`` and
the parallel lists ``index``, ``key``, ``predicted``, ``correct``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.tasks.examples import Example

PREDICTIONS_DIR = "predictions"
FORMAT = 1
_STEP_FILE = re.compile(r"^step-(\d+)\.json$")


def example_key(example: Example) -> str:
    """A stable 16-hex-digit hash of an example's prompt, gold answer and choices."""
    text = json.dumps(
        [example.prompt, example.answer, list(example.choices or ())], ensure_ascii=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def eval_fingerprint(keys: Sequence[str]) -> str:
    """Fingerprint of an evaluation set: a hash of its example keys, in order."""
    return hashlib.sha256("\n".join(keys).encode("ascii")).hexdigest()[:16]


def prediction_record(
    step: int, examples: Sequence[Example], predictions: Sequence[tuple[int, str | None, bool]]
) -> dict[str, Any]:
    """The JSON document of one evaluation: every example of ``examples`` exactly once, in
    order, with its key, predicted answer and correctness."""
    by_index = {int(i): (pred, bool(ok)) for i, pred, ok in predictions}
    if sorted(by_index) != list(range(len(examples))):
        raise AlphaLoRAError(
            f"The evaluation returned predictions for {len(by_index)} of {len(examples)} "
            "examples; every example must be scored exactly once."
        )
    keys = [example_key(ex) for ex in examples]
    return {
        "format": FORMAT,
        "step": int(step),
        "fingerprint": eval_fingerprint(keys),
        "n": len(examples),
        "index": list(range(len(examples))),
        "key": keys,
        "predicted": [by_index[i][0] for i in range(len(examples))],
        "correct": [by_index[i][1] for i in range(len(examples))],
    }


def save_predictions(folder: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` atomically as ``predictions/step-<step>.json`` in a run folder."""
    from alphalora.paths import atomic_write_json

    path = Path(folder) / PREDICTIONS_DIR / f"step-{int(record['step'])}.json"
    atomic_write_json(path, record)
    return path


def prediction_steps(folder: str | Path) -> list[int]:
    """Steps at which a run folder holds per-example predictions, ascending."""
    root = Path(folder) / PREDICTIONS_DIR
    if not root.is_dir():
        return []
    steps = [int(m.group(1)) for p in root.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(steps)


def load_predictions(folder: str | Path, step: int | None = None) -> dict[str, Any]:
    """The predictions of one evaluation of a run (the last one when ``step`` is None)."""
    steps = prediction_steps(folder)
    if not steps:
        raise AlphaLoRAError(
            f"No per-example predictions in {folder}: the run was evaluated by an older version "
            "or has not been evaluated yet, so it cannot be paired with another run."
        )
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise AlphaLoRAError(
            f"No predictions at step {step} in {folder}; evaluated steps: {steps}."
        )
    path = Path(folder) / PREDICTIONS_DIR / f"step-{step}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AlphaLoRAError(f"Cannot read {path}: {exc}.") from exc
    needed = ("fingerprint", "key", "correct", "n")
    if not isinstance(data, dict) or any(k not in data for k in needed):
        raise AlphaLoRAError(f"{path} is not a predictions file (missing {needed}).")
    if not len(data["key"]) == len(data["correct"]) == data["n"]:
        raise AlphaLoRAError(f"{path} is damaged: its lists disagree with n = {data['n']}.")
    return data
