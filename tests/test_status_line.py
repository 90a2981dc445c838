"""The run status line: phase, n/total, time left from summary["progress"] and the logged
seconds per step; cancelled/interrupted runs said plainly with their step."""

from __future__ import annotations

import pandas as pd
import pytest

from alphalora.runs.status_line import (
    eval_eta,
    first_snapshot,
    format_duration,
    progress_of,
    run_status,
    seconds_per_step,
)


def _run(status: str, progress: dict | None = None, steps: int = 40, **extra) -> dict:
    summary = {"progress": progress} if progress is not None else {}
    return {"run_id": "r", "status": status, "config": {"steps": steps}, "summary": summary,
            **extra}  # fmt: skip


def _progress(phase: str, step: int = 0, done=None, total=None, at="2026-01-01T00:00:00+00:00"):
    return {"phase": phase, "done": done, "total": total, "step": step, "steps": 40, "at": at}


def _metrics(steps: int, seconds: float = 2.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_id": ["r"] * steps,
            "split": ["train"] * steps,
            "step": list(range(1, steps + 1)),
            "train_loss": [1.0] * steps,
            "seconds_per_step": [seconds] * steps,
        }
    )


def test_evaluating_shows_examples_scored_and_the_time_left_from_two_snapshots():
    first = _progress("evaluating", done=40, total=200, at="2026-01-01T00:00:00+00:00")
    latest = _progress("evaluating", done=120, total=200, at="2026-01-01T00:00:20+00:00")
    status = run_status(_run("running", latest), pd.DataFrame(), first=first)
    assert status.phase == "evaluating" and (status.done, status.total) == (120, 200)
    assert status.fraction == pytest.approx(0.6)
    assert status.eta_s == pytest.approx(20.0)  # 80 examples in 20 s, 80 left
    assert status.text == "evaluating 120/200 held-out examples (before training) · about 20 s left"
    # Without an earlier snapshot there is no speed yet: no time left is invented.
    alone = run_status(_run("running", latest), None)
    assert alone.eta_s is None and alone.text.startswith("evaluating 120/200")
    mid = run_status(_run("running", _progress("evaluating", step=20, done=5, total=200)), None)
    assert "(at step 20/40)" in mid.text


def test_training_shows_the_step_and_eta_from_seconds_per_step():
    status = run_status(_run("running", _progress("training", step=13)), _metrics(13, 2.0))
    assert status.text == "training · step 13/40 · about 54 s left"  # 27 steps × 2 s
    assert status.fraction == pytest.approx(13 / 40) and status.tone == "active"
    loading = run_status(_run("running", _progress("loading model")), None)
    assert loading.text == "loading model… · step 0/40" and loading.phase == "loading model"
    saving = run_status(_run("running", _progress("saving", step=40)), _metrics(40))
    assert saving.text.startswith("saving the adapter…")


def test_without_progress_falls_back_to_the_logged_step():
    assert run_status(_run("queued"), None).text == "queued: starting the trainer…"
    status = run_status(_run("running"), _metrics(10, 1.0))
    assert status.text == "running · step 10/40 · about 30 s left"
    broken = _run("running", {"phase": "dancing"})  # unknown phase: ignored
    assert progress_of(broken) is None
    assert run_status(broken, _metrics(3)).text.startswith("running · step 3/40")


def test_a_cancel_is_said_plainly_with_its_step_and_offers_resume():
    run = _run(
        "cancelled",
        _progress("training", step=13),  # the last progress the trainer wrote
        error="stopped by SIGTERM at step 13/40; resume with --resume",
    )
    status = run_status(run, _metrics(13))
    assert status.text == "cancelled at step 13/40"
    assert status.tone == "warning" and status.resumable and status.detail is None
    killed = run_status(_run("cancelled", error="did not stop within 10 s of SIGTERM; killed"))
    assert killed.detail and "killed" in killed.detail
    failed = run_status(_run("failed", error="CUDA out of memory"), _metrics(3))
    assert failed.tone == "error" and failed.text == "failed at step 3/40" and failed.resumable
    done = run_status(_run("completed", _progress("finished", step=40)), _metrics(40))
    assert done.text == "completed · step 40/40" and done.tone == "success"
    assert not done.resumable


def test_snapshots_durations_and_speed():
    a = _progress("evaluating", done=10, total=200)
    b = _progress("evaluating", done=50, total=200, at="2026-01-01T00:00:10+00:00")
    assert first_snapshot(None, a) == a
    assert first_snapshot(a, b) == a  # same evaluation: keep the earliest
    other = _progress("evaluating", step=20, done=0, total=200)
    assert first_snapshot(a, other) == other  # a new evaluation starts over
    assert first_snapshot(a, None) is None
    assert eval_eta(a, b) == pytest.approx(37.5)
    assert eval_eta(a, a) is None and eval_eta(a, {**b, "at": "garbage"}) is None
    assert [format_duration(s) for s in (0, 45, 200, 1800, 7500)] == [
        "0 s", "45 s", "3 min 20 s", "30 min", "2 h 05 min",
    ]  # fmt: skip
    assert seconds_per_step(None, {"seconds_per_step": 0.5}) == 0.5
    assert seconds_per_step(_metrics(30, 3.0)) == 3.0
