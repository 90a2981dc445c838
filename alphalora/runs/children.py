"""The trainer processes this process started, and their reaping.

A child that exits stays a zombie (``<defunct>``) until its parent waits for it. The app starts
trainers and lives for days, so every exited child must be waited for even when nobody looks
at its run again: :func:`reap_children` does it on demand (``jobs.reconcile`` calls it) and a
small background thread does it while any child is tracked, so an idle app collects none.
"""

from __future__ import annotations

import subprocess
import threading
import time

REAP_INTERVAL_S = 1.0
"""How often the background reaper polls the tracked children."""

_LOCK = threading.Lock()
_CHILDREN: dict[int, subprocess.Popen] = {}
_REAPER: threading.Thread | None = None


def track(proc: subprocess.Popen) -> None:
    """Keep ``proc`` so that it is polled exactly and reaped once it exits."""
    global _REAPER
    with _LOCK:
        _CHILDREN[proc.pid] = proc
        if _REAPER is None or not _REAPER.is_alive():
            _REAPER = threading.Thread(target=_reaper_loop, name="alphalora-reaper", daemon=True)
            _REAPER.start()


def tracked(pid: int) -> bool:
    """Whether ``pid`` is a child this process started and has not reaped yet."""
    with _LOCK:
        return pid in _CHILDREN


def poll_child(pid: int) -> bool | None:
    """``True`` while child ``pid`` runs, ``False`` once it has exited (it is then reaped and
    forgotten), ``None`` when ``pid`` is not a tracked child."""
    with _LOCK:
        proc = _CHILDREN.get(pid)
    if proc is None:
        return None
    if proc.poll() is None:
        return True
    with _LOCK:
        _CHILDREN.pop(pid, None)
    return False


def reap_children() -> list[int]:
    """Wait for every tracked child that has exited (no zombie is left); returns their pids."""
    with _LOCK:
        procs = list(_CHILDREN.values())
    done = [p.pid for p in procs if p.poll() is not None]
    with _LOCK:
        for pid in done:
            _CHILDREN.pop(pid, None)
    return done


def _reaper_loop() -> None:
    """Reap exited children every :data:`REAP_INTERVAL_S` s; stop when none is tracked (the
    next :func:`track` starts a new thread)."""
    global _REAPER
    while True:
        time.sleep(REAP_INTERVAL_S)
        reap_children()
        with _LOCK:
            if not _CHILDREN:
                _REAPER = None
                return
