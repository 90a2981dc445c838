"""How the run store writes values down: run statuses, run ids and folders, ISO-8601 UTC times,
JSON for dict fields and metric values, and where the store's file lives."""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alphalora import paths
from alphalora.errors import AlphaLoRAError

STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
ACTIVE_STATUSES = ("queued", "running")
FINISHED_STATUSES = ("completed", "failed", "cancelled", "interrupted")

DB_ENV_VAR = "ALPHALORA_RUNS_DB"
"""Environment override for the store's file; :func:`alphalora.runs.jobs.start_run` sets it for the
processes it spawns so that they write to the same store as their parent."""

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


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


def to_time(value: Any) -> str | None:
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
            return to_time(parse_time(value))
        except ValueError as exc:
            raise AlphaLoRAError(f"Not an ISO-8601 time: {value!r}.") from exc
    raise AlphaLoRAError(f"Cannot store {value!r} as a time; pass an ISO string or a datetime.")


def to_plain(value: Any) -> Any:
    """Turn numpy/torch scalars and arrays into plain Python numbers and lists."""
    if hasattr(value, "tolist") and not isinstance(value, list | tuple):
        return value.tolist()
    if isinstance(value, tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    plain = to_plain(value)
    if plain is value:
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
    return plain


def dumps_json(obj: Any) -> str:
    """JSON text of ``obj``; numpy/torch values become plain numbers, paths strings."""
    return json.dumps(obj, default=_json_default)


def encode_metric(name: str, value: Any) -> tuple[float | None, str | None]:
    """A metric value as (REAL column, JSON column): numbers go to REAL, lists and
    non-finite numbers (which SQLite would turn into NULL) to JSON."""
    value = to_plain(value)
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
        return None, dumps_json(value)
    raise AlphaLoRAError(
        f"Metric {name!r} has a value of type {type(value).__name__}; "
        "log numbers, lists of numbers or None."
    )


def decode_metric(value: float | None, text: str | None) -> Any:
    """A metric value back from its (REAL column, JSON column) pair; a damaged JSON value
    reads as None (a missing value) rather than breaking the whole table."""
    if text is None:
        return value
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


TIME_FIELDS = ("created_at", "started_at", "finished_at", "heartbeat_at")


def damage_of(run: dict[str, Any], json_fields: tuple[str, ...]) -> list[str]:
    """Decode a stored run row in place, tolerating damage: a JSON field that does not parse,
    or a time that is not ISO-8601, becomes None. Returns what was damaged, for people."""
    problems = []
    for key in json_fields:
        text = run.get(key)
        try:
            run[key] = json.loads(text) if text else None
        except (TypeError, ValueError):
            run[key] = None
            problems.append(f"{key} is not valid JSON")
    for key in TIME_FIELDS:
        value = run.get(key)
        if value is None:
            continue
        try:
            parse_time(value)
        except (TypeError, ValueError):
            run[key] = None
            problems.append(f"{key} {str(value)[:40]!r} is not an ISO-8601 time")
    if run.get("status") not in STATUSES:
        problems.append(f"status {str(run.get('status'))[:40]!r} is unknown")
    return problems


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
