"""The run store's SQLite file: its schema (tables, indexes, version) and the connection
handling every store operation goes through (one connection per thread and process, WAL, busy
timeout, schema creation/upgrade, one immediate transaction per write, clear error messages)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from alphalora.errors import AlphaLoRAError
from alphalora.store.records import default_store_path

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0

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


class StoreConnection:
    """The SQLite file behind a :class:`~alphalora.store.run_store.RunStore`: opens one
    connection per thread and process, creates or upgrades the schema, and runs reads and
    write transactions with errors translated into actionable messages."""

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
        if self.path.is_dir():
            raise AlphaLoRAError(
                f"Run store {self.path} is a folder, not a run store file. Move the folder "
                "aside, or point ALPHALORA_RUNS_DB (or ALPHALORA_HOME) somewhere else."
            )
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already done so."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
