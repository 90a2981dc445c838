"""Job control: start fine-tunes as detached processes, cancel, resume and reconcile them.

A run is a separate process (``python -m alphalora train CONFIG --run-id ID``) in its own
session, logging to ``<run dir>/log.txt`` and writing its status and metrics to the run store.
Nothing here waits for a run: callers poll the store. :func:`reconcile` notices runs whose
process died without saying so (killed, machine restarted) and marks them interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import alphalora
from alphalora import paths
from alphalora.errors import AlphaLoRAError
from alphalora.runs import children
from alphalora.store.records import (
    ACTIVE_STATUSES,
    DB_ENV_VAR,
    check_run_id,
    now_iso,
    parse_time,
    run_dir,
)
from alphalora.store.run_store import RunStore

INTERRUPTED_ERROR = "process ended unexpectedly (see log)"
RESUMABLE_STATUSES = ("failed", "interrupted", "cancelled")
QUEUE_GRACE_S = 120.0
"""A queued run with no pid for this long lost the process that was starting it."""
PID_REUSE_SLACK_S = 300.0
"""A live process that started this long after the run's last sign of life is not the run's."""


def trainer_command(python: str | None = None, num_processes: int = 1) -> list[str]:
    """The argv prefix that runs the trainer: ``python -m alphalora train``, or with
    ``num_processes`` > 1 the same module under ``accelerate launch`` (DDP: one process per GPU,
    or gloo processes on CPU), with a free rendezvous port picked by accelerate."""
    exe = python or sys.executable
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise AlphaLoRAError(f"num_processes must be a whole number ≥ 1; got {num_processes!r}.")
    if num_processes == 1:
        return [exe, "-m", "alphalora", "train"]
    return [
        exe,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",  # accelerate's torch.distributed launcher; on CPU the trainer uses gloo
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",  # the trainer sets its precision from the config
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        "-m",
        "alphalora",
        "train",
    ]


def is_alive(pid: int | None) -> bool:
    """Whether process ``pid`` is running (an exited child is reaped and counts as dead)."""
    if not pid or int(pid) <= 0:
        return False
    pid = int(pid)
    child = children.poll_child(pid)  # a process we started: polled (and reaped) exactly
    if child is not None:
        return child
    try:  # a child of ours spawned elsewhere in this process: reap it if it has exited
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    stat = _proc_stat(pid)
    return not (stat and stat[0] in ("Z", "X"))


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (state first), or ``None``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        return text.rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_start(pid: int) -> datetime | None:
    """When process ``pid`` started (Linux ``/proc``), or ``None`` where unknown."""
    stat = _proc_stat(pid)
    if not stat or len(stat) < 20:
        return None
    try:
        ticks = int(stat[19])  # field 22 of stat: start time in clock ticks after boot
        boot = None
        for line in Path("/proc/stat").read_text(encoding="utf-8").splitlines():
            if line.startswith("btime "):
                boot = int(line.split()[1])
                break
        if boot is None:
            return None
        return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), UTC)
    except (OSError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _last_sign_of_life(run: dict) -> datetime | None:
    times = [parse_time(run.get(k)) for k in ("created_at", "started_at", "heartbeat_at")]
    times = [t for t in times if t is not None]
    return max(times) if times else None


def run_process_alive(run: dict) -> bool:
    """Whether the run's recorded process is alive and is really that run's process (a pid
    reused by an unrelated program after a crash or a reboot does not count)."""
    pid = run.get("pid")
    if not is_alive(pid):
        return False
    if children.tracked(int(pid)) or run["run_id"] in _cmdline(int(pid)):
        return True
    started = _process_start(int(pid))
    last = _last_sign_of_life(run)
    if started is None or last is None:
        return True
    return (started - last).total_seconds() <= PID_REUSE_SLACK_S


def _log_path(run_id: str) -> Path:
    return paths.data_dir() / "runs" / check_run_id(run_id) / "log.txt"


def _spawn(
    run_id: str,
    launcher: list[str],
    extra: list[str],
    store: RunStore,
    env: dict | None,
) -> int:
    """Start ``launcher + [config, --run-id, id] + extra`` detached; record and return its pid."""
    folder = run_dir(run_id)
    config_path = folder / "config.json"
    argv = [*launcher, str(config_path), "--run-id", run_id, *extra]
    package_root = str(Path(alphalora.__file__).resolve().parent.parent)
    child_env = dict(os.environ)
    child_env[paths.ENV_VAR] = str(paths.data_dir())
    child_env[DB_ENV_VAR] = str(store.path.resolve())
    child_env["PYTHONUNBUFFERED"] = "1"
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p
    )
    child_env.update({str(k): str(v) for k, v in (env or {}).items()})
    log_path = folder / "log.txt"
    with open(log_path, "ab") as log:
        log.write(f"=== {now_iso()} launching: {' '.join(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=folder,
                env=child_env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            message = f"could not start the process {argv[0]!r}: {exc.strerror or exc}"
            log.write(f"=== {message}\n".encode())
            store.update_run(run_id, status="failed", error=message, finished_at=now_iso())
            raise AlphaLoRAError(
                f"Run {run_id}: {message}. Check the Python interpreter/command."
            ) from exc
    children.track(proc)
    paths.atomic_write_json(
        folder / "launch.json",
        {"argv": argv, "launcher": launcher, "pid": proc.pid, "launched_at": now_iso()},
    )
    store.update_run(run_id, pid=proc.pid)
    return proc.pid


def start_run(
    config: dict,
    *,
    name: str | None = None,
    store: RunStore | None = None,
    env: dict | None = None,
    python: str | None = None,
    allocation: dict | None = None,
    command: list[str] | None = None,
    num_processes: int = 1,
) -> str:
    """Record a queued run, write its config and start the trainer detached; returns the id.

    ``command`` (for tests and tools, e.g. ``["accelerate", "launch", "-m", "alphalora",
    "train"]``) replaces the ``python -m alphalora train`` prefix; the config path,
    ``--run-id ID`` (and ``--resume``) are appended to it either way. ``num_processes`` > 1
    (without ``command``) runs it under ``accelerate launch`` (see :func:`trainer_command`);
    a resume reuses the same launcher. ``allocation`` defaults to ``config["allocation"]``
    when that is a dict.
    """
    store = store or RunStore()
    if not isinstance(config, dict):
        raise AlphaLoRAError("A run's config must be a dict (the training configuration).")
    if allocation is None and isinstance(config.get("allocation"), dict):
        allocation = config["allocation"]
    launcher = list(command) if command else trainer_command(python, num_processes)
    run_id = store.create_run(config, name=name, allocation=allocation, status="queued")
    paths.atomic_write_json(run_dir(run_id) / "config.json", config)
    _spawn(run_id, launcher, [], store, env)
    return run_id


def _signal(pid: int, sig: int, group_leaders: set[int]) -> None:
    """Send ``sig`` to the process group we created for the run, or else to ``pid`` alone
    (never to our own group)."""
    try:
        pgid = os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        pgid = None
    try:
        if pgid is not None and pgid != os.getpgrp() and pgid in group_leaders:
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _launch_info(run_id: str) -> dict:
    path = paths.data_dir() / "runs" / check_run_id(run_id) / "launch.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _wait_dead(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def cancel_run(run_id: str, *, store: RunStore | None = None, timeout: float = 20) -> str:
    """Stop a queued/running run: SIGTERM its process group so the trainer checkpoints and
    marks itself cancelled; after ``timeout`` s, SIGKILL and mark it cancelled. Returns a
    message saying what happened (also for a run that was not running)."""
    store = store or RunStore()
    reconcile(store)
    run = store.get_run(run_id)
    if run["status"] not in ACTIVE_STATUSES:
        return f"Run {run_id} is {run['status']}, not running: nothing to cancel."
    deadline = time.monotonic() + min(float(timeout), 5.0)
    while not run.get("pid") and time.monotonic() < deadline:  # being launched right now
        time.sleep(0.1)
        run = store.get_run(run_id)
    pid = run.get("pid")
    if not pid or not run_process_alive(run):
        if store.update_run_if(
            run_id, {"status": ACTIVE_STATUSES}, status="cancelled", finished_at=now_iso()
        ):
            return f"Run {run_id} had no running process; marked cancelled."
        return f"Run {run_id} is {store.get_run(run_id)['status']}, not running: nothing to cancel."
    launch = _launch_info(run_id)
    leaders = {int(pid)} | ({int(launch["pid"])} if launch.get("pid") else set())
    _signal(int(pid), signal.SIGTERM, leaders)
    killed = False
    if not _wait_dead(int(pid), float(timeout)):
        _signal(int(pid), signal.SIGKILL, leaders)
        killed = True
        _wait_dead(int(pid), 10.0)
    error = f"did not stop within {timeout:g} s of SIGTERM; killed" if killed else None
    fields = {"status": "cancelled", "finished_at": now_iso()}
    if error:
        fields["error"] = error
    if store.update_run_if(run_id, {"status": ACTIVE_STATUSES, "pid": pid}, **fields):
        if killed:
            return f"Run {run_id} did not stop within {timeout:g} s; killed and marked cancelled."
        return f"Run {run_id} stopped; marked cancelled."
    final = store.get_run(run_id)["status"]
    if final == "cancelled":
        return f"Run {run_id} cancelled (the trainer saved its state)."
    return f"Run {run_id} ended as {final} before it could be cancelled."


def resume_run(
    run_id: str,
    *,
    store: RunStore | None = None,
    env: dict | None = None,
    python: str | None = None,
    command: list[str] | None = None,
) -> None:
    """Restart a failed, interrupted or cancelled run from its last checkpoint
    (``… train CONFIG --run-id ID --resume``) with the launcher it was started with."""
    store = store or RunStore()
    reconcile(store)
    run = store.get_run(run_id)
    if run["status"] not in RESUMABLE_STATUSES:
        raise AlphaLoRAError(
            f"Run {run_id} is {run['status']}; only failed, interrupted or cancelled runs can be "
            "resumed."
        )
    folder = run_dir(run_id)
    if not (folder / "config.json").is_file():
        paths.atomic_write_json(folder / "config.json", run["config"])
    if command:
        launcher = list(command)
    elif python:
        launcher = trainer_command(python)
    else:
        launcher = _launch_info(run_id).get("launcher") or trainer_command()
    if not store.update_run_if(
        run_id,
        {"status": RESUMABLE_STATUSES},
        status="queued",
        pid=None,
        error=None,
        finished_at=None,
        heartbeat_at=now_iso(),
    ):
        raise AlphaLoRAError(f"Run {run_id} changed state meanwhile; look at it again.")
    _spawn(run_id, launcher, ["--resume"], store, env)


def reconcile(store: RunStore | None = None) -> list[str]:
    """Mark queued/running runs whose process is gone as interrupted; returns their ids.
    Cheap (reads active runs only): the CLI and the app call it whenever they look. Trainers
    started here that have ended are reaped first, so none is left a zombie."""
    children.reap_children()
    store = store or RunStore()
    now = datetime.now(UTC)
    changed = []
    for run in store.runs(statuses=ACTIVE_STATUSES):
        if run.get("pid") is None:
            last = _last_sign_of_life(run)
            if last is not None and (now - last).total_seconds() < QUEUE_GRACE_S:
                continue  # being launched right now
        elif run_process_alive(run):
            continue
        applied = store.update_run_if(
            run["run_id"],
            {"status": ACTIVE_STATUSES, "pid": run.get("pid")},
            status="interrupted",
            error=INTERRUPTED_ERROR,
            finished_at=now_iso(),
        )
        if applied:
            changed.append(run["run_id"])
    return changed


def tail_log(run_id: str, lines: int = 50) -> str:
    """The last ``lines`` lines of the run's log (empty when it has none yet)."""
    path = _log_path(run_id)
    if lines <= 0 or not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        block, data = 8192, b""
        while end > 0 and data.count(b"\n") <= lines:
            start = max(0, end - block)
            fh.seek(start)
            data = fh.read(end - start) + data
            end = start
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
