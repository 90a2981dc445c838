"""One entry point for every task source: a shipped task by name, a user file by path, or a
Hugging Face dataset as ``hf:…``; the fine-tuning session loads its task through here."""

from __future__ import annotations

from pathlib import Path

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.tasks.examples import Task
from alphalora.finetune.tasks.files import load_user_task
from alphalora.finetune.tasks.hf_task import load_hf_task
from alphalora.finetune.tasks.records import free_form
from alphalora.finetune.tasks.shipped import SHIPPED_TASKS


def load_task(spec: str | Path, *, scoring: str = "auto") -> Task:
    """A shipped task by name (``rotten-tomatoes``), a user JSONL/CSV file by path, or a
    Hugging Face dataset as ``hf:NAME[:CONFIG][?options]`` (see
    :mod:`alphalora.finetune.tasks.hf_task`)."""
    text = str(spec).strip()
    if text.startswith("hf:"):
        return load_hf_task(text, scoring=scoring)
    if text in SHIPPED_TASKS:
        task = SHIPPED_TASKS[text]()
        if scoring == "generate":
            task.scoring, task.choices = "generate", None
            task.train, task.eval = free_form(task.train), free_form(task.eval)
        return task
    path = Path(text).expanduser()
    if path.suffix.lower() in (".jsonl", ".json", ".csv", ".tsv") or path.exists():
        return load_user_task(path, scoring=scoring)
    raise AlphaLoRAError(
        f"Unknown task {text!r}. Use a shipped task ({', '.join(SHIPPED_TASKS)}), a path to "
        "a .jsonl/.csv file with prompt/answer or question/choices/answer columns, or a Hugging "
        "Face dataset prefixed with hf: (e.g. hf:cornell-movie-review-data/rotten_tomatoes, "
        "hf:nyu-mll/glue:sst2, or hf:FOLDER for a folder written by save_to_disk)."
    )
