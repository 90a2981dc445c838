"""The run store: one SQLite file holding every fine-tune run and its metrics.

Trainers (separate processes) write to it; the CLI and the app read it. The file lives in the
data directory, uses WAL journaling and a 30 s busy timeout so several processes can read and
write at once, and every write is its own committed transaction: a killed process loses nothing
it already logged.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from alphalora import paths
from alphalora.errors import AlphaLoRAError
from alphalora.store.listing import LIST_COLUMNS, run_summary_row
from alphalora.store.records import (
    ACTIVE_STATUSES,
    STATUSES,
    check_run_id,
    damage_of,
    decode_metric,
    dumps_json,
    encode_metric,
    new_run_id,
    now_iso,
    to_plain,
    to_time,
)
from alphalora.store.schema import StoreConnection

if TYPE_CHECKING:  # pandas is imported lazily: trainers and workers start faster without it
    import pandas

# Fields ``update_run`` accepts, with the converter applied before storing.
_JSON_FIELDS = ("config", "allocation", "summary")
_UPDATABLE = {
    "status": "status",
    "pid": "int",
    "device": "text",
    "error": "text",
    "started_at": "time",
    "finished_at": "time",
    "heartbeat_at": "time",
    "summary": "json",
    "allocation": "json",
    "adapter_path": "text",
    "params_trainable": "int",
    "seconds_per_step": "float",
    "name": "text",
}


class RunStore(StoreConnection):
    """All runs and their metrics in one SQLite file; safe to share between threads and
    processes (one connection per thread and process, WAL, busy timeout)."""

    # -- runs ------------------------------------------------------------------------
    @staticmethod
    def _unknown(run_id: str) -> AlphaLoRAError:
        return AlphaLoRAError(
            f"No run with id {run_id!r}. List runs with `python -m alphalora runs list`."
        )

    def create_run(
        self,
        config: dict,
        *,
        name: str | None = None,
        allocation: dict | None = None,
        status: str = "queued",
    ) -> str:
        """Record a new run and return its id (``YYYYMMDD-HHMMSS-xxxx``)."""
        if status not in STATUSES:
            raise AlphaLoRAError(f"Unknown status {status!r}; use one of {', '.join(STATUSES)}.")
        if not isinstance(config, Mapping):
            raise AlphaLoRAError("A run's config must be a dict (the training configuration).")
        try:
            config_json = dumps_json(dict(config))
            allocation_json = None if allocation is None else dumps_json(allocation)
        except (TypeError, ValueError) as exc:
            raise AlphaLoRAError(
                f"The run's config/allocation is not JSON-serialisable: {exc}."
            ) from exc
        for _ in range(50):
            run_id = new_run_id()
            created = now_iso()

            def insert(conn: sqlite3.Connection, run_id: str = run_id, created: str = created):
                exists = conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone()
                if exists:
                    return False
                conn.execute(
                    "INSERT INTO runs (run_id, name, status, config, allocation, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (run_id, name, status, config_json, allocation_json, created),
                )
                return True

            if self._write("create a run", insert):
                return run_id
        raise AlphaLoRAError("Could not find a free run id; try again.")  # pragma: no cover

    def _assignments(self, fields: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
        unknown = sorted(set(fields) - set(_UPDATABLE))
        if unknown:
            raise AlphaLoRAError(
                f"Cannot update run field(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(_UPDATABLE))}."
            )
        columns, values = [], []
        for key, value in fields.items():
            kind = _UPDATABLE[key]
            if kind == "status":
                if value not in STATUSES:
                    raise AlphaLoRAError(
                        f"Unknown status {value!r}; use one of {', '.join(STATUSES)}."
                    )
            elif value is None:
                pass
            elif kind == "time":
                value = to_time(value)
            elif kind == "json":
                try:
                    value = dumps_json(value)
                except (TypeError, ValueError) as exc:
                    raise AlphaLoRAError(f"Field {key!r} is not JSON-serialisable: {exc}.") from exc
            elif kind in ("int", "float"):
                try:
                    value = (int if kind == "int" else float)(to_plain(value))
                except (TypeError, ValueError) as exc:
                    raise AlphaLoRAError(f"Field {key!r} must be a number, got {value!r}.") from exc
            elif kind == "text":
                value = str(value)
            columns.append(f"{key} = ?")
            values.append(value)
        return columns, values

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set some fields of a run (status, pid, device, error, times, summary, …)."""
        self.update_run_if(run_id, None, **fields)

    def update_run_if(self, run_id: str, expect: Mapping[str, Any] | None, **fields: Any) -> bool:
        """Like :meth:`update_run`, but only while the run's current values match ``expect``
        (column → value, or a tuple/list/set of allowed values), checked in the same
        transaction; returns whether it applied. Used to mark a run interrupted or cancelled
        without overwriting what its trainer (or a resume) wrote meanwhile."""
        columns, values = self._assignments(fields)
        conditions = dict(expect or {})
        for key in conditions:
            if key not in _UPDATABLE:
                raise AlphaLoRAError(f"Cannot compare run field {key!r}.")

        def apply(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,))
            row = cursor.fetchone()
            if row is None:
                raise self._unknown(run_id)
            current = dict(zip([d[0] for d in cursor.description], row, strict=True))
            for key, allowed in conditions.items():
                options = (
                    allowed if isinstance(allowed, tuple | list | set | frozenset) else (allowed,)
                )
                if current[key] not in options:
                    return False
            if columns:
                conn.execute(
                    f"UPDATE runs SET {', '.join(columns)} WHERE run_id = ?", (*values, run_id)
                )
            return bool(columns)

        return self._write("update a run", apply)

    def merge_summary(self, run_id: str, **items: Any) -> dict:
        """Add keys to a run's summary dict (read-modify-write in one transaction)."""

        def apply(conn: sqlite3.Connection) -> dict:
            row = conn.execute("SELECT summary FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise self._unknown(run_id)
            try:
                summary = json.loads(row[0]) if row[0] else {}
            except ValueError:  # a damaged summary is kept as text, never lost
                summary = {"damaged_summary": row[0]}
            if not isinstance(summary, dict):
                summary = {"damaged_summary": row[0]}
            summary.update(items)
            conn.execute(
                "UPDATE runs SET summary = ? WHERE run_id = ?", (dumps_json(summary), run_id)
            )
            return summary

        return self._write("update a run's summary", apply)

    @staticmethod
    def _decode_run(row: Mapping[str, Any]) -> dict:
        """A stored row as a dict with its JSON fields decoded; a damaged row (JSON that does
        not parse, a bad time) is still returned, with ``damaged`` listing what is wrong."""
        run = dict(row)
        damaged = damage_of(run, _JSON_FIELDS)
        if damaged:
            run["damaged"] = damaged
        return run

    def get_run(self, run_id: str) -> dict:
        """Every field of one run, with config/allocation/summary decoded from JSON."""
        rows = self._read("read a run", "SELECT * FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise self._unknown(run_id)
        return self._decode_run(rows[0])

    def exists(self, run_id: str) -> bool:
        """Whether a run with this id is recorded."""
        return bool(self._read("read a run", "SELECT 1 FROM runs WHERE run_id = ?", (run_id,)))

    def runs(self, *, statuses: Iterable[str] | None = None) -> list[dict]:
        """Decoded runs, newest first, optionally only those in ``statuses``."""
        sql, params = "SELECT * FROM runs", []
        if statuses is not None:
            statuses = list(statuses)
            if not statuses:
                return []
            sql += f" WHERE status IN ({', '.join('?' * len(statuses))})"
            params = statuses
        sql += " ORDER BY created_at DESC, rowid DESC"
        return [self._decode_run(r) for r in self._read("list runs", sql, params)]

    def list_runs(
        self, *, status: str | None = None, search: str | None = None
    ) -> pandas.DataFrame:
        """One row per run, newest first (columns :data:`LIST_COLUMNS`); ``search`` matches
        id, name, method, model, task, device and error, case-insensitively."""
        import pandas as pd

        if status is not None and status not in STATUSES:
            raise AlphaLoRAError(f"Unknown status {status!r}; use one of {', '.join(STATUSES)}.")
        rows = [
            run_summary_row(r) for r in self.runs(statuses=None if status is None else [status])
        ]
        if search:
            needle = search.lower()
            fields = ("run_id", "name", "method", "allocation", "model", "task", "device", "error")
            rows = [r for r in rows if any(needle in str(r[f] or "").lower() for f in fields)]
        frame = pd.DataFrame(rows, columns=list(LIST_COLUMNS))
        for column in ("accuracy_before", "accuracy_after", "seconds_per_step"):
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        for column in ("params_trainable", "total_experts"):
            frame[column] = pd.array(
                [None if pd.isna(v) else int(v) for v in frame[column]], dtype="Int64"
            )
        return frame

    def delete_run(self, run_id: str, *, remove_files: bool = True) -> None:
        """Forget a run and its metrics and, by default, remove its folder (log, adapter).
        A run whose process is still alive must be cancelled first."""
        run = self.get_run(run_id)
        if run["status"] in ACTIVE_STATUSES and run.get("pid") and _pid_exists(run["pid"]):
            raise AlphaLoRAError(
                f"Run {run_id} is {run['status']} (pid {run['pid']}); cancel it first with "
                f"`python -m alphalora runs cancel {run_id}`."
            )

        def apply(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

        self._write("delete a run", apply)
        if remove_files:
            folder = paths.data_dir() / "runs" / check_run_id(run_id)
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)

    # -- metrics -----------------------------------------------------------------------
    def log_metrics(
        self,
        run_id: str,
        step: int,
        metrics: Mapping[str, float | int | list | None],
        split: str = "train",
    ) -> None:
        """Record metrics of one step (committed at once). Lists (e.g. ``router_load``) are
        kept as JSON; logging the same (split, step, name) again replaces the value."""
        if not isinstance(metrics, Mapping):
            raise AlphaLoRAError("Metrics must be a mapping of name → number/list/None.")
        try:
            step = int(to_plain(step))
        except (TypeError, ValueError) as exc:
            raise AlphaLoRAError(f"A metric step must be an integer, got {step!r}.") from exc
        logged = now_iso()
        rows = []
        for name, value in metrics.items():
            if not isinstance(name, str) or not name or name in ("run_id", "split", "step"):
                raise AlphaLoRAError(f"Invalid metric name {name!r}.")
            number, text = encode_metric(name, value)
            rows.append((run_id, str(split), step, name, number, text, logged))
        if not rows:
            return

        def apply(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise self._unknown(run_id)
            conn.executemany(
                "INSERT OR REPLACE INTO metrics "
                "(run_id, split, step, name, value, json, logged_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        self._write("log metrics", apply)

    def metric_count(self, run_id: str | None = None) -> int:
        """Number of stored metric values (of one run, or of all runs)."""
        if run_id is None:
            rows = self._read("count metrics", "SELECT COUNT(*) AS n FROM metrics")
        else:
            rows = self._read(
                "count metrics", "SELECT COUNT(*) AS n FROM metrics WHERE run_id = ?", (run_id,)
            )
        return int(rows[0]["n"])

    def metrics(
        self, run_ids: str | Sequence[str], *, split: str | None = None
    ) -> pandas.DataFrame:
        """Metrics of one or several runs, wide: one row per (run_id, split, step), one column
        per metric; list-valued metrics (``router_load``) are decoded into list cells."""
        import pandas as pd

        ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
        for run_id in ids:
            if not self.exists(run_id):
                raise self._unknown(run_id)
        if not ids:
            return pd.DataFrame(columns=["run_id", "split", "step"])
        sql = (
            "SELECT run_id, split, step, name, value, json FROM metrics "
            f"WHERE run_id IN ({', '.join('?' * len(ids))})"
        )
        params: list[Any] = list(ids)
        if split is not None:
            sql += " AND split = ?"
            params.append(split)
        sql += " ORDER BY rowid"  # columns and splits in the order they were first logged
        records: dict[tuple[str, str, int], dict[str, Any]] = {}
        names: dict[str, None] = {}
        splits: dict[str, int] = {}
        for row in self._read("read metrics", sql, params):
            key = (row["run_id"], row["split"], row["step"])
            record = records.setdefault(
                key, {"run_id": row["run_id"], "split": row["split"], "step": row["step"]}
            )
            record[row["name"]] = decode_metric(row["value"], row["json"])
            names.setdefault(row["name"], None)
            splits.setdefault(row["split"], len(splits))
        order = {run_id: i for i, run_id in enumerate(ids)}
        ordered = sorted(
            records.values(), key=lambda r: (order[r["run_id"]], splits[r["split"]], r["step"])
        )
        frame = pd.DataFrame(ordered, columns=["run_id", "split", "step", *names])
        frame["step"] = frame["step"].astype("int64")
        for name in names:
            cells = frame[name]
            if not any(isinstance(v, list | dict) for v in cells):
                frame[name] = pd.to_numeric(cells, errors="coerce").astype("float64")
        return frame.reset_index(drop=True)


def _pid_exists(pid: int) -> bool:
    """Whether a process with this pid exists (zombies count as gone)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, ValueError, OverflowError):
        return False
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="utf-8") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True
