"""What a running trainer tells the run store about itself, and how it stops between phases.

:class:`RunProgress` keeps ``summary["progress"]`` of the run row up to date (the app shows
phase, n/total and an ETA from it): ``{"phase", "done", "total", "step", "steps", "at"}``,
written at each phase change and at most about once per second within a phase.
:class:`StopRequested` is raised at the safe points where a stop (SIGTERM, Ctrl-C) is checked
outside the training loop: between the load phases and between evaluation batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

PHASES = (
    "loading task",
    "loading model",
    "resolving allocation",
    "evaluating",
    "training",
    "saving",
    "finished",
)
WRITE_INTERVAL_S = 1.0


class StopRequested(BaseException):
    """A stop noticed at a safe point before or outside the training loop. A BaseException,
    like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it; ``train``
    turns it into a cancelled (SIGTERM) or interrupted (Ctrl-C) run."""


class RunProgress:
    """Writes a run's phase and progress into its row (main process only; a no-op elsewhere)."""

    def __init__(
        self,
        write: Callable[[dict[str, Any]], Any] | None,
        steps: int,
        *,
        interval: float = WRITE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self.steps = steps
        self.interval = interval
        self.clock = clock
        self.phase: str | None = None
        self._last = -float("inf")
        self.last_written: dict[str, Any] | None = None

    def update(
        self, phase: str, done: int | None = None, total: int | None = None, *, step: int = 0
    ) -> bool:
        """Record ``phase`` with ``done``/``total``: always at a phase change, else at most
        once per ``interval`` seconds. Returns whether it wrote."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        now = self.clock()
        if phase == self.phase and now - self._last < self.interval:
            return False
        self.phase, self._last = phase, now
        if self._write is None:
            return False
        from alphalora.store.records import now_iso

        record = {
            "phase": phase,
            "done": None if done is None else int(done),
            "total": None if total is None else int(total),
            "step": int(step),
            "steps": int(self.steps),
            "at": now_iso(),
        }
        self._write(record)
        self.last_written = record
        return True


def stop_between_blocks(model: Any, check: Callable[[], None]) -> int:
    """Call ``check`` (which raises to stop) before every transformer block's forward while
    the model is in evaluation mode, so that a stop during an evaluation of a large model takes
    effect within one block rather than one whole batch; training steps are never cut short.
    Returns the number of blocks hooked (0 for a model without a recognisable block list:
    the per-batch check still applies)."""
    from alphalora.errors import AlphaLoRAError
    from alphalora.finetune.moe_inject import find_blocks

    try:
        blocks = find_blocks(model)[1]
    except AlphaLoRAError:
        return 0

    def hook(module: Any, args: Any) -> None:
        if not module.training:
            check()

    for block in blocks:
        block.register_forward_pre_hook(hook)
    return len(blocks)
