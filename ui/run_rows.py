"""One row per run on the Fine-tune and Runs pages: its colour, what it is doing (phase,
n/total, time left, or "cancelled at step 13/40") and the button that applies (Cancel while
it runs, Resume after a cancel, an interruption or a failure).

Buttons act in ``on_click`` callbacks, which Streamlit runs before the page is drawn again,
so the row shows the new status at once instead of after another click.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from alphalora.allocation.labels import allocation_label
from alphalora.errors import AlphaLoRAError
from alphalora.plots.style import run_colour
from alphalora.runs import jobs
from alphalora.runs.status_line import RunStatus, first_snapshot, progress_of, run_status

_FIRST_KEY = "alphalora_progress_first"  # run id → earliest snapshot of its current phase
_NOTICE_KEY = "alphalora_run_notice"  # (kind, message) left by a button for the next run


def status_of(run: dict, metrics: pd.DataFrame | None) -> RunStatus:
    """The run's status line, measuring an evaluation's speed between page refreshes."""
    seen = st.session_state.setdefault(_FIRST_KEY, {})
    first = first_snapshot(seen.get(run["run_id"]), progress_of(run))
    if first is None:
        seen.pop(run["run_id"], None)
    else:
        seen[run["run_id"]] = first
    return run_status(run, metrics, first=first)


def _cancel(run_id: str) -> None:
    try:
        st.session_state[_NOTICE_KEY] = ("toast", jobs.cancel_run(run_id, timeout=10))
    except AlphaLoRAError as exc:
        st.session_state[_NOTICE_KEY] = ("error", str(exc))


def _resume(run_id: str) -> None:
    try:
        jobs.resume_run(run_id)
        st.session_state[_NOTICE_KEY] = ("toast", f"Run {run_id} resumed from its checkpoint.")
    except AlphaLoRAError as exc:
        st.session_state[_NOTICE_KEY] = ("error", str(exc))


def show_notice() -> None:
    """What the last Cancel/Resume did: a toast, or an error box when it could not."""
    notice = st.session_state.pop(_NOTICE_KEY, None)
    if notice is None:
        return
    kind, message = notice
    if kind == "error":
        st.error(message)
    else:
        st.toast(message)


def colour_chip(run_id: str) -> str:
    """A square in the run's chart colour, to put before its name (HTML)."""
    return f'<span style="color:{run_colour(run_id)}">■</span>'


def run_row(run: dict, metrics: pd.DataFrame | None, label: str, key: str) -> RunStatus:
    """Draw the run's row (colour and name, status, Cancel/Resume) and return its status."""
    rid = run["run_id"]
    status = status_of(run, metrics)
    c1, c2, c3 = st.columns([3, 5, 1.2], vertical_alignment="center")
    c1.markdown(f"{colour_chip(rid)} **{label}** · `{status.state}`", unsafe_allow_html=True)
    c1.caption(allocation_label(run.get("allocation"), (run.get("config") or {}).get("method")))
    if status.tone in ("active", "success"):
        c2.progress(min(max(status.fraction, 0.0), 1.0), text=status.text)
    else:
        colour = "orange" if status.tone == "warning" else "red"
        c2.markdown(f":{colour}[{status.text}]")
    if status.tone == "active":
        c3.button("Cancel", key=f"{key}_cancel_{rid}", on_click=_cancel, args=(rid,))
    elif status.resumable:
        c3.button("Resume", key=f"{key}_resume_{rid}", on_click=_resume, args=(rid,))
    if status.detail and status.tone == "error":
        st.error(f"Run {rid} ({status.state}): {status.detail}")
    elif status.detail:
        st.caption(status.detail)
    return status


def run_metrics(metrics: pd.DataFrame, run_id: str) -> Any:
    """The rows of ``metrics`` that belong to ``run_id``."""
    if metrics is None or metrics.empty or "run_id" not in metrics:
        return metrics
    return metrics[metrics["run_id"] == run_id]
