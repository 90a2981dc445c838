"""Rows written back into the run store: the ids it holds, and a run row inserted with a given
id, for rebuilding rows lost with a damaged or emptied store file from the run folders
(:mod:`alphalora.runs.recover` reads the folders)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.store.records import STATUSES, check_run_id, dumps_json, now_iso, to_time
from alphalora.store.run_store import RunStore


def run_ids(store: RunStore) -> set[str]:
    """Every run id the store holds (one cheap query, nothing decoded)."""
    return {row["run_id"] for row in store._read("list run ids", "SELECT run_id FROM runs")}


def insert_run_row(
    store: RunStore,
    run_id: str,
    config: dict,
    *,
    status: str,
    created_at: Any,
    name: str | None = None,
    allocation: dict | None = None,
    summary: dict | None = None,
    **fields: Any,
) -> None:
    """Insert run ``run_id`` as given (refused when the id is already recorded); ``fields`` are
    the other columns :meth:`RunStore.update_run` accepts (error, finished_at, adapter_path…)."""
    check_run_id(run_id)
    if status not in STATUSES:
        raise AlphaLoRAError(f"Unknown status {status!r}; use one of {', '.join(STATUSES)}.")
    row = {
        "run_id": run_id,
        "name": name,
        "status": status,
        "config": dumps_json(config),
        "allocation": None if allocation is None else dumps_json(allocation),
        "summary": None if summary is None else dumps_json(summary),
        "created_at": to_time(created_at) or now_iso(),
    }

    columns, values = store._assignments(fields)  # checked like update_run's fields

    def insert(conn: sqlite3.Connection) -> None:
        if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
            raise AlphaLoRAError(f"Run {run_id} is already in the run store.")
        conn.execute(
            f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )
        if columns:
            conn.execute(
                f"UPDATE runs SET {', '.join(columns)} WHERE run_id = ?", (*values, run_id)
            )

    store._write("insert a recovered run", insert)


METRICS_MIRROR = "metrics.jsonl"
"""A run folder's copy of every metric logged (one JSON line per log call), read back by
``runs recover`` when the store lost the run's rows."""


def append_metrics_mirror(folder: Path, step: int, metrics: Mapping[str, Any], split: str) -> bool:
    """Append one log call to the run folder's metrics mirror; False (never raised) when it
    cannot be written: the store stays the record, the mirror is a spare copy."""
    line = dumps_json({"step": int(step), "split": str(split), "metrics": dict(metrics)})
    try:
        with open(Path(folder) / METRICS_MIRROR, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except (OSError, TypeError, ValueError):
        return False
    return True


def read_metrics_mirror(folder: Path) -> list[tuple[int, str, dict[str, Any]]]:
    """The (step, split, metrics) entries of a run folder's mirror, in logging order; lines
    that do not parse (a write cut short by a kill) are skipped."""
    path = Path(folder) / METRICS_MIRROR
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            item = json.loads(line)
            entries.append((int(item["step"]), str(item["split"]), dict(item["metrics"])))
        except (ValueError, TypeError, KeyError):
            continue
    return entries
