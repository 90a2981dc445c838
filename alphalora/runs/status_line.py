"""One line that says what a run is doing: its phase, how far it is, and how long is left.

A running trainer keeps ``summary["progress"]`` on its run row up to date: ``{"phase", "done",
"total", "step", "steps", "at"}`` with the phase one of :data:`PHASES`, ``done``/``total`` the
examples scored so far in an evaluation (or the steps while training) and ``at`` an ISO-8601 UTC
time. Runs without it (older trainers) fall back to the logged steps. :func:`run_status` turns that,
the logged seconds per step and the run's status into the line the app shows, e.g.
``evaluating 120/200 held-out examples (before training) · about 40 s left`` or
``cancelled at step 13/40``. Pure: no store, no clock unless given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alphalora.finetune.run_progress import PHASES
from alphalora.runs.jobs import RESUMABLE_STATUSES
from alphalora.store.records import ACTIVE_STATUSES, parse_time

_RECENT_STEPS = 20  # seconds per step: median over the latest steps


@dataclass(frozen=True)
class RunStatus:
    """What a run is doing, ready to draw: ``text`` for the status line, ``fraction`` for a
    progress bar, ``tone`` (active, success, warning, error) for its colour."""

    state: str
    text: str
    fraction: float
    tone: str
    step: int
    steps: int
    phase: str | None = None
    done: int | None = None
    total: int | None = None
    eta_s: float | None = None
    resumable: bool = False
    detail: str | None = None


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value)


def _time(value: Any) -> Any:
    try:
        return parse_time(value) if isinstance(value, str) else None
    except ValueError:
        return None


def progress_of(run: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run's ``summary["progress"]`` when it is well formed (a known phase), else None."""
    summary = run.get("summary")
    progress = summary.get("progress") if isinstance(summary, Mapping) else None
    if not isinstance(progress, Mapping) or progress.get("phase") not in PHASES:
        return None
    return dict(progress)


def format_duration(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``2 h 05 min``: short and rounded to what matters."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        minutes, rest = divmod(s, 60)
        return f"{minutes} min {rest:02d} s" if minutes < 10 else f"{minutes} min"
    hours, rest = divmod(s, 3600)
    return f"{hours} h {rest // 60:02d} min"


def seconds_per_step(metrics: Any, run: Mapping[str, Any] | None = None) -> float | None:
    """Median time of the latest optimizer steps (the trainer logs ``seconds_per_step`` with
    every step); the run's stored average when no step is logged yet."""
    try:
        rows = metrics[metrics["split"] == "train"].sort_values("step")
        values = rows["seconds_per_step"].dropna().astype(float).tail(_RECENT_STEPS)
        values = values[values > 0]
        if len(values):
            return float(values.median())
    except (AttributeError, KeyError, TypeError, ValueError):
        pass
    stored = (run or {}).get("seconds_per_step")
    return float(stored) if isinstance(stored, int | float) and stored > 0 else None


def last_step(metrics: Any) -> int:
    """The latest training step with logged metrics (0 when none)."""
    try:
        steps = metrics[metrics["split"] == "train"]["step"]
        return int(steps.max()) if len(steps) else 0
    except (AttributeError, KeyError, TypeError, ValueError):
        return 0


def first_snapshot(
    previous: Mapping[str, Any] | None, progress: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The earliest snapshot seen of the current phase (same phase and step, no fewer done):
    the app keeps it between refreshes to measure the evaluation's speed."""
    if progress is None:
        return None
    if (
        previous is not None
        and previous.get("phase") == progress.get("phase")
        and previous.get("step") == progress.get("step")
        and (_int(previous.get("done")) or 0) <= (_int(progress.get("done")) or 0)
    ):
        return dict(previous)
    return dict(progress)


def eval_eta(first: Mapping[str, Any] | None, latest: Mapping[str, Any]) -> float | None:
    """Seconds left in an evaluation from two snapshots of it (examples per second so far)."""
    if first is None:
        return None
    t0, t1 = _time(first.get("at")), _time(latest.get("at"))
    d0, d1, total = _int(first.get("done")), _int(latest.get("done")), _int(latest.get("total"))
    if None in (t0, t1, d0, d1, total) or d1 <= d0:
        return None
    seconds = (t1 - t0).total_seconds()
    if seconds <= 0:
        return None
    return max(0.0, (total - d1) * seconds / (d1 - d0))


def _left(eta: float | None) -> str:
    return "" if eta is None else f" · about {format_duration(eta)} left"


def _active(run: Mapping[str, Any], metrics: Any, first: Mapping[str, Any] | None) -> RunStatus:
    state = run.get("status") or "queued"
    config = run.get("config") if isinstance(run.get("config"), Mapping) else {}
    progress = progress_of(run)
    steps = _int((progress or {}).get("steps")) or _int(config.get("steps")) or 1
    step = _int((progress or {}).get("step"))
    step = last_step(metrics) if step is None else step
    per_step = seconds_per_step(metrics, run)
    train_eta = per_step * max(steps - step, 0) if per_step else None
    at_step = f"step {step}/{steps}"
    common = {"state": state, "tone": "active", "step": step, "steps": steps}
    if progress is None:
        if state == "queued":
            text = "queued: starting the trainer…"
            return RunStatus(text=text, fraction=0.0, **common)
        text = f"running · {at_step}{_left(train_eta if step else None)}"
        return RunStatus(text=text, fraction=min(step / steps, 1.0), eta_s=train_eta, **common)
    phase = progress["phase"]
    done, total = _int(progress.get("done")), _int(progress.get("total"))
    if phase == "evaluating" and total:
        done = min(done or 0, total)
        eta = eval_eta(first, progress)
        when = "before training" if step == 0 else f"at {at_step}"
        text = f"evaluating {done}/{total} held-out examples ({when}){_left(eta)}"
        return RunStatus(text=text, fraction=done / total, phase=phase, done=done, total=total,
                         eta_s=eta, **common)  # fmt: skip
    if phase == "training":
        text = f"training · {at_step}{_left(train_eta if step else None)}"
        return RunStatus(text=text, fraction=min(step / steps, 1.0), phase=phase, done=step,
                         total=steps, eta_s=train_eta, **common)  # fmt: skip
    words = {"saving": "saving the adapter", "finished": "finished: writing the results"}
    text = f"{words.get(phase, phase)}… · {at_step}"
    return RunStatus(text=text, fraction=min(step / steps, 1.0), phase=phase, **common)


def run_status(
    run: Mapping[str, Any],
    metrics: Any = None,
    *,
    first: Mapping[str, Any] | None = None,
) -> RunStatus:
    """The status line of ``run`` (a decoded run row) with its ``metrics`` frame (one run's
    rows of ``RunStore.metrics``); ``first`` is an earlier snapshot of the same phase (see
    :func:`first_snapshot`) for the evaluation's time left."""
    state = run.get("status") or "queued"
    if state in ACTIVE_STATUSES:
        return _active(run, metrics, first)
    config = run.get("config") if isinstance(run.get("config"), Mapping) else {}
    progress = progress_of(run) or {}
    steps = _int(progress.get("steps")) or _int(config.get("steps")) or 1
    step = max(_int(progress.get("step")) or 0, last_step(metrics))
    at_step = f"step {step}/{steps}"
    error = run.get("error") or None
    common = {"state": state, "step": step, "steps": steps, "fraction": min(step / steps, 1.0)}
    if state == "completed":
        return RunStatus(text=f"completed · {at_step}", tone="success", **common)
    if state == "cancelled":
        # The trainer's own "stopped by SIGTERM at step …; resume with --resume" is said above.
        detail = None if error is None or error.startswith("stopped by") else error
        return RunStatus(text=f"cancelled at {at_step}", tone="warning", resumable=True,
                         detail=detail, **common)  # fmt: skip
    if state == "interrupted":
        return RunStatus(text=f"interrupted at {at_step}", tone="warning", resumable=True,
                         detail=error, **common)  # fmt: skip
    return RunStatus(text=f"{state} at {at_step}", tone="error", resumable=state in RESUMABLE_STATUSES,
                     detail=error, **common)  # fmt: skip
