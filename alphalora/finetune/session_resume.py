"""Resuming a session: the newest valid checkpoint is chosen (damaged newer ones are set aside
and named in the log and on the run row) and put back into the model, optimizer, scheduler and
RNG, on every process."""

from __future__ import annotations

import logging

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.checkpoint_check import (
    describe_fallback,
    newest_valid_checkpoint,
    set_aside,
)
from alphalora.finetune.checkpoints import load_checkpoint, read_checkpoint_state
from alphalora.finetune.session_setup import SessionSetup

log = logging.getLogger(__name__)


class SessionResume(SessionSetup):
    """The resume phase of a :class:`~alphalora.finetune.session.Session`."""

    def _choose_checkpoint(self) -> str | None:
        """Main process: the newest valid checkpoint's name; damaged newer ones are set aside
        and named in the log and on the run row (``summary["checkpoint_notes"]``)."""
        num = self.accelerator.num_processes
        chosen, damaged = newest_valid_checkpoint(self.folder, num)
        if damaged:
            moved = [set_aside(folder) for folder, _ in damaged]
            note = describe_fallback(chosen, damaged, moved)
            log.warning("run %s: %s", self.run_id, note)
            self.report(0.0, note)
            notes = (self.store.get_run(self.run_id).get("summary") or {}).get("checkpoint_notes")
            self.store.merge_summary(self.run_id, checkpoint_notes=[*(notes or []), note])
        return None if chosen is None else chosen.name

    def restore_checkpoint(self) -> bool:
        """Continue from the run's newest valid checkpoint; False (from step 0) when there is
        none. Damaged newer checkpoints are moved aside and named (see :meth:`_choose_checkpoint`)."""
        acc = self.accelerator
        name, error = None, None
        if self.main:
            try:
                name = self._choose_checkpoint()
            except (AlphaLoRAError, OSError) as exc:
                error = f"Cannot check the checkpoints of run {self.run_id}: {exc}"
        name = self._from_main(name, error)
        if name is None:
            self.report(0.0, "No checkpoint found: starting from step 0")
            return False
        folder = self.checkpoint_root / name
        state = read_checkpoint_state(folder, self.config, acc.num_processes)
        scaler = getattr(acc, "scaler", None)
        load_checkpoint(
            folder, self.unwrapped, self.optimizer, self.scheduler, scaler, acc.process_index
        )
        self.step = int(state["step"])
        self.accuracy_before = state.get("accuracy_before")
        self.eval_loss_before = state.get("eval_loss_before")
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.step_seconds = [float(s) for s in state.get("step_seconds", [])]
        self.eval_pending = bool(state.get("eval_pending", False))
        self.report(self.step / self.config.steps, f"Resumed from {folder.name}")
        return True
