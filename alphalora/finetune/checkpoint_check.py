"""Checking a run's checkpoints before a resume: every file present and readable (the state
JSON parses, the tensors file's header covers the file and matches its recorded checksum, the
optimizer and RNG archives pass their CRCs), so that a damaged newest checkpoint (truncated by a
full disk, a file deleted by hand) gives way to the newest valid one, named in the message,
instead of failing the resume with a raw SafetensorError or JSONDecodeError."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

from alphalora.finetune.checkpoints import (
    CHECKPOINTS_DIR,
    OPTIM_FILE,
    STATE_FILE,
    TRAINABLE_FILE,
    list_checkpoints,
)

DAMAGED_PREFIX = "damaged-"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed (recorded in a checkpoint's state for its tensors file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _check_state(folder: Path) -> tuple[dict | None, str | None]:
    path = folder / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{STATE_FILE} is not valid JSON ({exc})"
    step = state.get("step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return None, f"{STATE_FILE} has no valid step"
    return state, None


def _check_tensors(folder: Path, state: dict) -> str | None:
    from safetensors import SafetensorError, safe_open

    path = folder / TRAINABLE_FILE
    if not path.is_file():
        return f"{TRAINABLE_FILE} is missing"
    try:
        with safe_open(str(path), framework="pt") as handle:
            list(handle.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        return f"{TRAINABLE_FILE} is unreadable ({exc})"
    expected = (state.get("sha256") or {}).get(TRAINABLE_FILE)
    if expected is not None and file_sha256(path) != expected:
        return f"{TRAINABLE_FILE} does not match its checksum (altered or corrupted)"
    return None


def _check_archive(path: Path) -> str | None:
    """A ``torch.save`` file is a zip archive: its directory and every member's CRC."""
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        return f"{path.name} is unreadable ({exc})"
    return None if bad is None else f"{path.name} is corrupted (member {bad})"


def checkpoint_problem(folder: Path, num_processes: int | None = None) -> str | None:
    """Why checkpoint ``folder`` cannot be resumed from (the damaged file and what is wrong with
    it), or None when every file of the ``num_processes`` processes (by default, as many as the
    checkpoint records) is present and intact."""
    state, problem = _check_state(folder)
    if problem is not None or state is None:
        return problem
    if num_processes is None:
        recorded = state.get("num_processes")
        num_processes = recorded if isinstance(recorded, int) and recorded > 0 else 1
    problem = _check_tensors(folder, state) or _check_archive(folder / OPTIM_FILE)
    if problem is not None:
        return problem
    for index in range(num_processes):
        problem = _check_archive(folder / f"rng-{index}.pt")
        if problem is not None:
            return problem
        try:
            json.loads((folder / f"rng-{index}.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return f"rng-{index}.json is missing or not valid JSON ({exc})"
    return None


def newest_valid_checkpoint(
    run_folder: Path, num_processes: int | None = None
) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint of a run that passes :func:`checkpoint_problem` (None when none
    does), and the newer damaged ones as (folder, problem), newest first."""
    damaged: list[tuple[Path, str]] = []
    for _, folder in reversed(list_checkpoints(run_folder)):
        problem = checkpoint_problem(folder, num_processes)
        if problem is None:
            return folder, damaged
        damaged.append((folder, problem))
    return None, damaged


def set_aside(folder: Path) -> Path:
    """Rename a damaged checkpoint ``step-N`` to ``damaged-step-N`` (kept for inspection, never
    chosen or pruned again); returns the new path."""
    target = folder.with_name(DAMAGED_PREFIX + folder.name)
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{DAMAGED_PREFIX}{folder.name}-{n}")
    folder.rename(target)
    return target


def describe_fallback(
    chosen: Path | None, damaged: list[tuple[Path, str]], moved: list[Path]
) -> str:
    """One message naming each damaged checkpoint and file, and where the resume starts."""
    parts = [
        f"checkpoint {folder.name} is damaged: {problem}; moved to {CHECKPOINTS_DIR}/{target.name}"
        for (folder, problem), target in zip(damaged, moved, strict=True)
    ]
    if chosen is None:
        parts.append("no valid checkpoint is left, so the run starts again from step 0")
    else:
        parts.append(f"resuming from {chosen.name}, the newest valid checkpoint")
    return "; ".join(parts) + "."


def resume_preview(run_folder: Path) -> str | None:
    """What a resume of this run will meet, for ``runs resume`` to say before it starts: the
    damaged newest checkpoints and the one it will resume from; None when nothing is damaged."""
    chosen, damaged = newest_valid_checkpoint(run_folder)
    if not damaged:
        return None
    parts = [f"checkpoint {folder.name} is damaged: {problem}" for folder, problem in damaged]
    where = "from step 0" if chosen is None else f"from {chosen.name}"
    return "; ".join(parts) + f"; the run will set it aside and resume {where}."
