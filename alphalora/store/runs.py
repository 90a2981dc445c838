"""The run store: one SQLite file holding every fine-tune run and its metrics.

Trainers (separate processes) write to it; the CLI and the app read it. The file lives in the
data directory, uses WAL journaling and a 30 s busy timeout so several processes can read and
write at once, and every write is its own committed transaction: a killed process loses nothing
it already logged.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alphalora import paths
from alphalora.errors import AlphaLoRAError

if TYPE_CHECKING:  # pandas is imported lazily: trainers and workers start faster without it
    import pandas

STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
ACTIVE_STATUSES = ("queued", "running")
FINISHED_STATUSES = ("completed", "failed", "cancelled", "interrupted")

DB_ENV_VAR = "ALPHALORA_RUNS_DB"
"""Environment override for the store's file; :func:`alphalora.runs.jobs.start_run` sets it for the
processes it spawns so that they write to the same store as their parent."""

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id           TEXT PRIMARY KEY,
    name             TEXT,
    status           TEXT NOT NULL,
    config           TEXT NOT NULL,
    allocation       TEXT,
    summary          TEXT,
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    heartbeat_at     TEXT,
    pid              INTEGER,
    device           TEXT,
    error            TEXT,
    adapter_path     TEXT,
    params_trainable INTEGER,
    seconds_per_step REAL
);
CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE TABLE IF NOT EXISTS metrics (
    run_id    TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    split     TEXT NOT NULL,
    step      INTEGER NOT NULL,
    name      TEXT NOT NULL,
    value     REAL,
    json      TEXT,
    logged_at TEXT NOT NULL,
    PRIMARY KEY (run_id, split, step, name)
);
"""

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

LIST_COLUMNS = (
    "run_id",
    "name",
    "status",
    "method",
    "model",
    "task",
    "created_at",
    "started_at",
    "finished_at",
    "device",
    "accuracy_before",
    "accuracy_after",
    "seconds_per_step",
    "params_trainable",
    "total_experts",
    "error",
)


def now_iso() -> str:
    """The current UTC time as ISO-8601 with milliseconds (the format of every stored time)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def parse_time(value: str | None) -> datetime | None:
    """Parse a stored ISO-8601 time back into an aware UTC datetime (``None`` stays ``None``)."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _to_time(value: Any) -> str | None:
    """Accept an ISO string, a datetime or a Unix timestamp; store ISO-8601 UTC."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat(timespec="milliseconds")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), UTC).isoformat(timespec="milliseconds")
    if isinstance(value, str):
        try:
            return _to_time(parse_time(value))
        except ValueError as exc:
            raise AlphaLoRAError(f"Not an ISO-8601 time: {value!r}.") from exc
    raise AlphaLoRAError(f"Cannot store {value!r} as a time; pass an ISO string or a datetime.")


def _plain(value: Any) -> Any:
    """Turn numpy/torch scalars and arrays into plain Python numbers and lists."""
    if hasattr(value, "tolist") and not isinstance(value, list | tuple):
        return value.tolist()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    plain = _plain(value)
    if plain is value:
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
    return plain


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default)


def _encode_metric(name: str, value: Any) -> tuple[float | None, str | None]:
    """A metric value as (REAL column, JSON column): numbers go to REAL, lists and
    non-finite numbers (which SQLite would turn into NULL) to JSON."""
    value = _plain(value)
    if value is None:
        return None, None
    if isinstance(value, bool):
        return float(value), None
    if isinstance(value, int | float):
        number = float(value)
        if math.isfinite(number):
            return number, None
        return None, json.dumps(number)
    if isinstance(value, list | dict):
        return None, _dumps(value)
    raise AlphaLoRAError(
        f"Metric {name!r} has a value of type {type(value).__name__}; "
        "log numbers, lists of numbers or None."
    )


def _decode_metric(value: float | None, text: str | None) -> Any:
    if text is None:
        return value
    return json.loads(text)


def new_run_id() -> str:
    """A short id that sorts by creation time: ``YYYYMMDD-HHMMSS-xxxx`` (UTC, 4 random hex)."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def check_run_id(run_id: str) -> str:
    """Reject ids that could escape the runs folder or are not strings."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id) or ".." in run_id:
        raise AlphaLoRAError(
            f"{run_id!r} is not a valid run id (letters, digits, '-', '_', '.'); "
            "list runs with `python -m alphalora runs list`."
        )
    return run_id


def run_dir(run_id: str) -> Path:
    """The folder of one run (config, log, checkpoints, adapter), created if missing."""
    path = paths.subdir("runs") / check_run_id(run_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_store_path() -> Path:
    """``$ALPHALORA_RUNS_DB`` if set, else ``<data dir>/runs.sqlite``."""
    override = os.environ.get(DB_ENV_VAR)
    if override:
        return Path(override).expanduser()
    return paths.data_dir() / "runs.sqlite"


def _pick_text(source: Mapping[str, Any] | None, keys: Sequence[str]) -> str | None:
    """The first of ``keys`` present in ``source`` as text; a nested dict gives its name/id."""
    if not isinstance(source, Mapping):
        return None
    for key in keys:
        value = source.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, Mapping):
            inner = _pick_text(value, ("name", "id", "source", "path", "model_id", "method"))
            if inner:
                return inner
            continue
        return str(value)
    return None


def total_experts(allocation: Mapping[str, Any] | None) -> int | None:
    """Total number of LoRA experts of an allocation dict (``total_experts``/``budget`` or the
    sum of its per-layer ``experts`` list), or ``None`` when it does not say."""
    if not isinstance(allocation, Mapping):
        return None
    for key in ("total_experts", "total", "budget"):
        value = allocation.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
    for key in ("experts", "experts_per_layer", "n_experts", "counts"):
        value = allocation.get(key)
        if isinstance(value, Mapping):
            value = list(value.values())
        if isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
            return int(sum(value))
    return None


def run_summary_row(run: Mapping[str, Any]) -> dict[str, Any]:
    """One decoded run as a flat row of :data:`LIST_COLUMNS` (method/model/task are read from
    the config, then the allocation; accuracies from the summary)."""
    config = run.get("config") or {}
    allocation = run.get("allocation") or (
        config.get("allocation") if isinstance(config, Mapping) else None
    )
    summary = run.get("summary") or {}
    method = _pick_text(config, ("method", "allocation_method", "mode")) or _pick_text(
        allocation, ("method", "mode", "shape")
    )
    return {
        "run_id": run["run_id"],
        "name": run.get("name"),
        "status": run["status"],
        "method": method,
        "model": _pick_text(config, ("model", "model_name", "model_id", "base_model", "source")),
        "task": _pick_text(config, ("task", "task_name", "dataset", "data")),
        "created_at": run.get("created_at"),
        "started_at": run.get("started_at"),
        "finished_at": run.get("finished_at"),
        "device": run.get("device"),
        "accuracy_before": summary.get("accuracy_before") if isinstance(summary, dict) else None,
        "accuracy_after": summary.get("accuracy_after") if isinstance(summary, dict) else None,
        "seconds_per_step": run.get("seconds_per_step"),
        "params_trainable": run.get("params_trainable"),
        "total_experts": total_experts(allocation if isinstance(allocation, Mapping) else None),
        "error": run.get("error"),
    }


class RunStore:
    """All runs and their metrics in one SQLite file; safe to share between threads and
    processes (one connection per thread and process, WAL, busy timeout)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        self._local = threading.local()
        self._connect()  # fail early, with a clear message, if the file cannot be used

    # -- connection handling ------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    def _fail(self, exc: Exception, action: str) -> AlphaLoRAError:
        """Translate an SQLite/OS error into an actionable message naming the file."""
        text = str(exc)
        lowered = text.lower()
        if "locked" in lowered or "busy" in lowered:
            hint = (
                f"another process kept the run store busy for more than {BUSY_TIMEOUT_S:.0f} s; "
                "try again, and check no process is stuck holding it"
            )
        elif "readonly" in lowered or "read-only" in lowered or "unable to open" in lowered:
            hint = (
                "the file or its folder is not writable; set ALPHALORA_HOME to a writable folder "
                "(or fix the permissions)"
            )
        elif "malformed" in lowered or "not a database" in lowered:
            hint = "the file is damaged or not a run store; move it aside to start a fresh one"
        elif isinstance(exc, OSError):
            hint = "set ALPHALORA_HOME to a writable folder"
        else:
            hint = "see the message above"
        return AlphaLoRAError(f"Run store {self.path}: cannot {action} ({text}); {hint}.")

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        # A connection inherited through fork must never be used: open a fresh one.
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._fail(exc, "create its folder") from exc
        try:
            conn = sqlite3.connect(
                str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=True
            )
        except sqlite3.Error as exc:
            raise self._fail(exc, "open the file") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._ensure_schema(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise self._fail(exc, "prepare the file") from exc
        except BaseException:
            conn.close()
            raise
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    @staticmethod
    def _retry(func: Any, attempts: int = 5) -> Any:
        """Run ``func``, retrying briefly on a lock (some pragmas bypass the busy handler)."""
        for attempt in range(attempts):
            try:
                return func()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc).lower() or attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        return None

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise AlphaLoRAError(
                f"Run store {self.path} has schema version {version}, newer than this AlphaLoRA "
                f"understands ({SCHEMA_VERSION}); upgrade AlphaLoRA Studio."
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _write(self, action: str, func: Any) -> Any:
        """Run ``func(conn)`` inside one immediate (write-locking) transaction and commit."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._fail(exc, action) from exc
        try:
            result = func(conn)
            conn.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            _rollback(conn)
            raise self._fail(exc, action) from exc
        except BaseException:
            _rollback(conn)
            raise

    def _read(self, action: str, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        conn = self._connect()
        try:
            cursor = conn.execute(sql, tuple(params))
            columns = [d[0] for d in cursor.description]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
        except sqlite3.Error as exc:
            raise self._fail(exc, action) from exc

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local.conn = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            config_json = _dumps(dict(config))
            allocation_json = None if allocation is None else _dumps(allocation)
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
                value = _to_time(value)
            elif kind == "json":
                try:
                    value = _dumps(value)
                except (TypeError, ValueError) as exc:
                    raise AlphaLoRAError(f"Field {key!r} is not JSON-serialisable: {exc}.") from exc
            elif kind in ("int", "float"):
                try:
                    value = (int if kind == "int" else float)(_plain(value))
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
            summary = json.loads(row[0]) if row[0] else {}
            summary.update(items)
            conn.execute("UPDATE runs SET summary = ? WHERE run_id = ?", (_dumps(summary), run_id))
            return summary

        return self._write("update a run's summary", apply)

    @staticmethod
    def _decode_run(row: Mapping[str, Any]) -> dict:
        run = dict(row)
        for key in _JSON_FIELDS:
            run[key] = json.loads(run[key]) if run.get(key) else None
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
            fields = ("run_id", "name", "method", "model", "task", "device", "error")
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
            step = int(_plain(step))
        except (TypeError, ValueError) as exc:
            raise AlphaLoRAError(f"A metric step must be an integer, got {step!r}.") from exc
        logged = now_iso()
        rows = []
        for name, value in metrics.items():
            if not isinstance(name, str) or not name or name in ("run_id", "split", "step"):
                raise AlphaLoRAError(f"Invalid metric name {name!r}.")
            number, text = _encode_metric(name, value)
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
            record[row["name"]] = _decode_metric(row["value"], row["json"])
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


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already done so."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


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
