"""Job control with a fake trainer: start, watch, cancel, crash, reconcile, resume, CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from alphalora.cli import main
from alphalora.errors import AlphaLoRAError
from alphalora.runs import jobs
from alphalora.store.records import run_dir
from alphalora.store.run_store import RunStore

# A stand-in for `python -m alphalora train CONFIG --run-id ID [--resume]`: it records its argv,
# marks itself running, logs one metric every 0.2 s, and on SIGTERM marks itself cancelled
# (unless its config says to ignore SIGTERM).
FAKE_WORKER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path
    from alphalora.store.records import now_iso
    from alphalora.store.run_store import RunStore

    args = sys.argv[1:]
    config_path = Path(args[0])
    run_id = args[args.index("--run-id") + 1]
    config = json.loads(config_path.read_text())
    folder = config_path.parent
    n = len(list(folder.glob("argv-*.json")))
    (folder / f"argv-{n}.json").write_text(json.dumps({
        "argv": sys.argv[1:], "cwd": os.getcwd(), "db": os.environ.get("ALPHALORA_RUNS_DB"),
    }))
    store = RunStore()
    stop = []
    if config.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    store.update_run(run_id, status="running", pid=os.getpid(), started_at=now_iso(),
                     heartbeat_at=now_iso(), device="cpu")
    print("worker started", "--resume" in args, flush=True)
    frame = store.metrics(run_id) if "--resume" in args else None
    step = int(frame["step"].max()) if frame is not None and len(frame) else 0
    for _ in range(config.get("steps", 100000)):
        if stop:
            store.update_run(run_id, status="cancelled", finished_at=now_iso())
            print("worker cancelled", flush=True)
            sys.exit(0)
        step += 1
        store.log_metrics(run_id, step, {"train_loss": 1.0 / step, "lr": 1e-4})
        store.update_run(run_id, heartbeat_at=now_iso())
        time.sleep(0.2)
    store.update_run(run_id, status="completed", finished_at=now_iso())
    """
)


@pytest.fixture
def worker(tmp_path) -> list[str]:
    path = tmp_path / "fake_worker.py"
    path.write_text(FAKE_WORKER)
    return [sys.executable, str(path)]


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_start_watch_and_cancel(worker):
    store = RunStore()
    config = {"model": "fake", "task": "demo", "method": "alphalora"}
    run_id = jobs.start_run(config, name="watch-me", store=store, command=worker)
    run = store.get_run(run_id)
    assert run["status"] in ("queued", "running") and run["pid"] > 0
    assert run["name"] == "watch-me"
    folder = run_dir(run_id)
    assert json.loads((folder / "config.json").read_text()) == config
    launch = json.loads((folder / "launch.json").read_text())
    assert launch["argv"] == [*worker, str(folder / "config.json"), "--run-id", run_id]

    wait_for(lambda: store.metric_count(run_id) >= 4, what="metrics")
    first = store.metric_count(run_id)
    wait_for(lambda: store.metric_count(run_id) > first, what="more metrics")  # still growing
    assert store.get_run(run_id)["status"] == "running"
    recorded = json.loads((folder / "argv-0.json").read_text())
    assert recorded["cwd"] == str(folder)  # independent of the caller's working directory
    assert recorded["db"] == str(store.path.resolve())
    assert "worker started False" in jobs.tail_log(run_id)

    message = jobs.cancel_run(run_id, store=store, timeout=15)
    assert "cancel" in message
    run = store.get_run(run_id)
    assert run["status"] == "cancelled" and run["finished_at"]
    assert not jobs.is_alive(run["pid"])
    assert "worker cancelled" in jobs.tail_log(run_id, lines=2)
    kept = store.metric_count(run_id)
    assert kept >= first + 2
    assert len(store.metrics(run_id)) == kept // 2

    assert "not running" in jobs.cancel_run(run_id, store=store)
    assert jobs.reconcile(store) == []


def test_crash_is_reconciled_and_resumed(worker):
    store = RunStore()
    run_id = jobs.start_run({"model": "fake"}, store=store, command=worker)
    wait_for(lambda: store.metric_count(run_id) >= 6, what="metrics")
    pid = store.get_run(run_id)["pid"]
    with pytest.raises(AlphaLoRAError, match="only failed, interrupted or cancelled"):
        jobs.resume_run(run_id, store=store)

    os.killpg(pid, signal.SIGKILL)  # a crash: no chance to say anything
    wait_for(lambda: not jobs.is_alive(pid), what="the worker to die")
    before = store.metric_count(run_id)
    assert store.get_run(run_id)["status"] == "running"

    assert jobs.reconcile(store) == [run_id]
    run = store.get_run(run_id)
    assert run["status"] == "interrupted"
    assert run["error"] == jobs.INTERRUPTED_ERROR
    assert store.metric_count(run_id) == before  # everything logged before the kill is kept
    assert jobs.reconcile(store) == []

    jobs.resume_run(run_id, store=store)
    folder = run_dir(run_id)
    resumed = wait_for(lambda: (folder / "argv-1.json").exists(), what="the resumed worker")
    assert resumed
    argv = json.loads((folder / "argv-1.json").read_text())["argv"]
    assert argv == [str(folder / "config.json"), "--run-id", run_id, "--resume"]
    wait_for(lambda: store.metric_count(run_id) >= before + 4, what="metrics after resume")
    run = store.get_run(run_id)
    assert run["status"] == "running" and run["error"] is None and run["pid"] != pid
    steps = store.metrics(run_id)["step"].tolist()
    assert steps == sorted(set(steps))  # resumed numbering continues, nothing overwritten
    assert "worker started True" in jobs.tail_log(run_id)
    assert "cancel" in jobs.cancel_run(run_id, store=store, timeout=15)


def test_cancel_escalates_to_sigkill(worker):
    store = RunStore()
    run_id = jobs.start_run({"ignore_term": True}, store=store, command=worker)
    wait_for(lambda: store.metric_count(run_id) >= 2, what="metrics")
    pid = store.get_run(run_id)["pid"]
    message = jobs.cancel_run(run_id, store=store, timeout=0.5)
    assert "killed" in message
    run = store.get_run(run_id)
    assert run["status"] == "cancelled"
    assert "killed" in run["error"]
    assert not jobs.is_alive(pid)


def test_default_command_is_the_trainer(tmp_path):
    fake_python = tmp_path / "python"
    record = tmp_path / "argv.txt"
    fake_python.write_text(
        f'#!/bin/sh\necho "$@" > {record}\necho "$ALPHALORA_HOME" >> {record}\necho boom\nexit 3\n'
    )
    fake_python.chmod(0o755)
    store = RunStore()
    run_id = jobs.start_run({"model": "m"}, store=store, python=str(fake_python))
    config = run_dir(run_id) / "config.json"
    wait_for(lambda: record.exists() and record.read_text().count("\n") >= 2, what="argv")
    argv, home = record.read_text().splitlines()
    assert argv == f"-m alphalora train {config} --run-id {run_id}"
    assert home == os.environ["ALPHALORA_HOME"]
    pid = store.get_run(run_id)["pid"]
    wait_for(lambda: not jobs.is_alive(pid), what="the fake python to exit")
    assert jobs.reconcile(store) == [run_id]  # it never reported: interrupted, log kept
    assert "boom" in jobs.tail_log(run_id)


def test_start_failure_marks_the_run_failed():
    store = RunStore()
    with pytest.raises(AlphaLoRAError, match="could not start"):
        jobs.start_run({"model": "m"}, store=store, python="/nonexistent/python3")
    run = store.list_runs().iloc[0]
    assert run["status"] == "failed" and "could not start" in run["error"]


def test_reconcile_rules(monkeypatch):
    store = RunStore()
    fresh = store.create_run({}, status="queued")  # being launched: left alone
    assert jobs.reconcile(store) == []

    alive = store.create_run({}, status="running")
    store.update_run(alive, pid=os.getpid())
    dead_proc = subprocess.Popen(["true"])
    dead_proc.wait()
    dead = store.create_run({}, status="running")
    store.update_run(dead, pid=dead_proc.pid)
    assert jobs.reconcile(store) == [dead]
    assert store.get_run(alive)["status"] == "running"

    # A pid that now belongs to a process started long after the run last showed life.
    reused = store.create_run({}, status="running")
    store.update_run(reused, pid=os.getpid(), heartbeat_at="2000-01-01T00:00:00+00:00")
    with sqlite3.connect(store.path) as conn:
        conn.execute(
            "UPDATE runs SET created_at = '2000-01-01T00:00:00+00:00' WHERE run_id = ?", (reused,)
        )
    assert jobs.reconcile(store) == [reused]
    assert store.get_run(alive)["status"] == "running"

    monkeypatch.setattr(jobs, "QUEUE_GRACE_S", 0.0)
    assert jobs.reconcile(store) == [fresh]  # its launcher vanished before recording a pid
    store.update_run(alive, status="completed")


def test_tail_log_and_is_alive():
    assert jobs.tail_log("20260101-000000-abcd") == ""
    folder = run_dir("20260101-000000-abcd")
    (folder / "log.txt").write_text("".join(f"line {i}\n" for i in range(5000)))
    assert jobs.tail_log("20260101-000000-abcd", lines=3) == "line 4997\nline 4998\nline 4999"
    assert jobs.is_alive(os.getpid())
    assert not jobs.is_alive(None) and not jobs.is_alive(0)


def test_cli_cancel_and_resume(worker, capsys):
    store = RunStore()
    run_id = jobs.start_run({"model": "fake"}, store=store, command=worker)
    wait_for(lambda: store.metric_count(run_id) >= 2, what="metrics")

    assert main(["runs", "resume", run_id]) == 1
    assert "only failed, interrupted or cancelled" in capsys.readouterr().err

    assert main(["runs", "cancel", run_id, "--timeout", "15"]) == 0
    assert "cancel" in capsys.readouterr().out
    assert store.get_run(run_id)["status"] == "cancelled"
    assert main(["runs", "cancel", run_id]) == 0
    assert "not running" in capsys.readouterr().out

    assert main(["runs", "resume", run_id]) == 0  # reuses the launcher it was started with
    assert "Resumed run" in capsys.readouterr().out
    folder = run_dir(run_id)
    wait_for(lambda: (folder / "argv-1.json").exists(), what="the resumed worker")
    assert json.loads((folder / "argv-1.json").read_text())["argv"][-1] == "--resume"
    wait_for(lambda: store.get_run(run_id)["status"] == "running", what="running again")
    assert main(["runs", "delete", run_id]) == 1
    assert "cancel it first" in capsys.readouterr().err
    assert main(["runs", "cancel", run_id]) == 0
    assert main(["runs", "delete", run_id]) == 0
    assert not Path(folder).exists()
    assert main(["runs", "cancel", "no-such-run"]) == 1
    assert "No run with id" in capsys.readouterr().err


def _proc_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (Z = zombie), or None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def test_a_trainer_that_finishes_by_itself_is_reaped_without_anyone_looking(worker):
    """The app never waits for a trainer; a run that completes on its own must not stay
    <defunct> under the server (the background reaper collects it)."""
    store = RunStore()
    run_id = jobs.start_run({"steps": 1}, store=store, command=worker)
    wait_for(lambda: store.get_run(run_id)["status"] == "completed", what="the run to complete")
    pid = store.get_run(run_id)["pid"]
    wait_for(lambda: _proc_state(pid) is None, what=f"process {pid} to be reaped")
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # nothing left to wait for: it was reaped


def test_reconcile_reaps_finished_trainers(worker, monkeypatch):
    """Without the background thread, listing runs (reconcile) reaps children that ended."""
    from alphalora.runs import children

    wait_for(lambda: children._REAPER is None or not children._REAPER.is_alive(), what="reaper")
    monkeypatch.setattr(children, "_reaper_loop", lambda: None)
    store = RunStore()
    run_id = jobs.start_run({"steps": 1}, store=store, command=worker)
    wait_for(lambda: store.get_run(run_id)["status"] == "completed", what="the run to complete")
    pid = store.get_run(run_id)["pid"]
    wait_for(lambda: _proc_state(pid) == "Z", what="the finished trainer to become a zombie")
    assert jobs.reconcile(store) == []  # the run is completed: nothing to mark interrupted
    assert _proc_state(pid) is None and not children.tracked(pid)
