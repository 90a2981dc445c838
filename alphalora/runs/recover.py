"""Run folders without rows, and rows rebuilt from them.

Every run keeps a folder under ``<data dir>/runs/ID`` (its ``config.json``, ``allocation.json``,
checkpoints, adapter, log and ``metrics.jsonl``). When the run store loses rows (a damaged or
emptied ``runs.sqlite`` is recreated empty), :func:`orphan_run_folders` finds the folders that
have no row and :func:`recover_runs` rebuilds each row from what its folder holds: the config
and allocation, the status (completed with its summary when the adapter was saved; otherwise
interrupted, resumable from its newest valid checkpoint or from step 0) and the metrics."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alphalora import paths
from alphalora.store.recovery import insert_run_row, read_metrics_mirror, run_ids
from alphalora.store.run_store import RunStore

_RUN_ID = re.compile(r"^(\d{8}-\d{6})-[0-9a-f]{4}$")
_RUN_FILES = ("config.json", "log.txt", "launch.json", "checkpoints", "adapter")
RECOVERED_NOTE = "recovered from its run folder after the run store lost its row"


@dataclass
class Recovered:
    """What :func:`recover_runs` did with one orphan folder."""

    run_id: str
    status: str | None  # None: skipped
    detail: str
    metrics: int = 0


def _runs_root() -> Path:
    return paths.data_dir() / "runs"


def orphan_run_folders(store: RunStore) -> list[str]:
    """Ids of run folders (named like a run, holding a run's files) that have no row in
    ``store``, oldest first."""
    root = _runs_root()
    if not root.is_dir():
        return []
    known = run_ids(store)
    found = [
        entry.name
        for entry in root.iterdir()
        if entry.is_dir()
        and entry.name not in known
        and not entry.name.startswith(".")
        and any((entry / name).exists() for name in _RUN_FILES)
    ]
    return sorted(found)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _created_at(folder: Path) -> str:
    """When the run was created: its launch record, else the time in its id, else the
    folder's modification time."""
    launched = (_read_json(folder / "launch.json") or {}).get("launched_at")
    if isinstance(launched, str):
        return launched
    match = _RUN_ID.match(folder.name)
    if match:
        stamp = datetime.strptime(match.group(1), "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
        return stamp.isoformat(timespec="milliseconds")
    return datetime.fromtimestamp(folder.stat().st_mtime, UTC).isoformat(timespec="milliseconds")


def _adapter_summary(adapter: Path) -> dict | None:
    """The run summary saved with a finished adapter (MoE-LoRA or plain LoRA), or None."""
    moe = _read_json(adapter / "adapter_config.json")
    if (
        isinstance(moe, dict)
        and isinstance(moe.get("extra"), dict)
        and (adapter / "adapter.safetensors").is_file()
    ):
        summary = moe["extra"].get("summary")
        return summary if isinstance(summary, dict) else {}
    lora = _read_json(adapter / "alphalora_run.json")
    if isinstance(lora, dict):
        summary = lora.get("summary")
        return summary if isinstance(summary, dict) else {}
    return None


def _row_fields(folder: Path) -> tuple[str, dict[str, Any], str]:
    """(status, extra row fields, what was found) for one run folder."""
    from alphalora.finetune.checkpoint_check import newest_valid_checkpoint

    adapter = folder / "adapter"
    summary = _adapter_summary(adapter) if adapter.is_dir() else None
    if summary is not None:
        fields: dict[str, Any] = {
            "summary": summary,
            "adapter_path": str(adapter),
            "finished_at": adapter.stat().st_mtime,
        }
        for key in ("params_trainable", "seconds_per_step"):
            if isinstance(summary.get(key), int | float):
                fields[key] = summary[key]
        return "completed", fields, "adapter saved"
    chosen, _ = newest_valid_checkpoint(folder)
    where = f"from {chosen.name}" if chosen is not None else "from step 0 (no valid checkpoint)"
    state = _read_json(chosen / "trainer_state.json") if chosen is not None else None
    fields = {"error": f"{RECOVERED_NOTE}; resume it with `runs resume` ({where})"}
    if isinstance(state, dict) and state.get("accuracy_before") is not None:
        fields["summary"] = {"accuracy_before": state["accuracy_before"]}
    return "interrupted", fields, f"resumable {where}"


def recover_runs(store: RunStore) -> list[Recovered]:
    """Rebuild a row for every run folder without one (see the module docstring); folders
    whose ``config.json`` is missing or unreadable are skipped and say why."""
    done = []
    for run_id in orphan_run_folders(store):
        folder = _runs_root() / run_id
        config = _read_json(folder / "config.json")
        if not isinstance(config, dict):
            done.append(Recovered(run_id, None, "config.json is missing or not valid JSON"))
            continue
        allocation = _read_json(folder / "allocation.json")
        status, fields, found = _row_fields(folder)
        summary = fields.pop("summary", None)
        name = config.get("name") if isinstance(config.get("name"), str) else None
        insert_run_row(
            store, run_id, config, status=status, created_at=_created_at(folder), name=name,
            allocation=allocation if isinstance(allocation, dict) else None, summary=summary,
            **fields,
        )  # fmt: skip
        entries = read_metrics_mirror(folder)
        for step, split, metrics in entries:
            store.log_metrics(run_id, step, metrics, split=split)
        done.append(Recovered(run_id, status, found, len(entries)))
    return done
