"""The fine-tuning loop: MoE-LoRA (or a plain-LoRA baseline) on a task, with accelerate.

``train(config)`` resolves the allocation, injects the adapters, evaluates before training,
trains with AdamW + linear warmup/decay, logs every step to the run store, evaluates every
``eval_every`` steps and at the end, checkpoints the adapter and optimizer state atomically
(never the frozen base), and saves the adapter. A SIGTERM or Ctrl-C stops it cleanly after the
current step with a checkpoint; ``resume=True`` continues to the same result as an
uninterrupted run. The command line is ``python -m alphalora train CONFIG``; it runs unchanged
under ``accelerate launch`` with several processes (DDP): each process takes its own
``batch_size`` examples per micro-step (the global batch grows with the process count) and
scores its own shard of the evaluation; only the main one writes the run store, checkpoints and
adapter; every collective is reached by all processes.

The phases of a run are :class:`~alphalora.finetune.session.Session`'s (set-up in
``session_setup``); checkpoints on disk are ``checkpoints``, accelerate and the stop flag
``runtime``, the model and allocation ``resolve``, the data order ``data_order``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.config import TrainConfig, load_config
from alphalora.finetune.run_progress import StopRequested
from alphalora.finetune.runtime import Progress, make_accelerator, now
from alphalora.finetune.session import Session

OOM_HINT = (
    "Out of memory. Lower batch_size (and raise grad_accum to keep the global batch), lower "
    "max_length, or set gradient_checkpointing to true."
)


def _fail_message(exc: BaseException) -> str:
    import torch

    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return OOM_HINT
    if isinstance(exc, AlphaLoRAError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def train(
    config: TrainConfig | dict[str, Any] | str | Path | None,
    *,
    run_id: str | None = None,
    store: Any = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fine-tune as ``config`` says and record everything in the run store.

    Returns the run's summary with ``run_id``, ``status`` ("completed"; "cancelled" after
    SIGTERM, "interrupted" after Ctrl-C, both with a checkpoint), ``adapter_path`` and the
    accuracies before and after. ``resume=True``
    continues run ``run_id`` from its latest checkpoint. With ``config`` None the config stored
    in run ``run_id`` is used (a queued run created by the app, or the one resumed). Errors
    mark the run failed and are raised as :class:`AlphaLoRAError`.
    """
    from alphalora.store.run_store import RunStore

    store = store if store is not None else RunStore()
    if config is None:
        if not run_id:
            raise AlphaLoRAError("Give a training config (a JSON file or a preset name).")
        config = store.get_run(run_id)["config"]
    cfg = load_config(config)
    session = Session(cfg, run_id, store, resume, progress)
    session.accelerator, session.precision = make_accelerator(cfg)
    session.stop.install()
    try:
        try:
            session.open_run()
            session.load()
            if session.stop_requested():
                return session.interrupted(f"stopped by {session.stop.signal_name}", save=False)
            return session.run()
        except StopRequested:
            # noticed between load phases or evaluation batches: a checkpoint only once the
            # loop has made progress (none is needed before step 1)
            return session.interrupted(f"stopped by {session.stop.signal_name or 'request'}")
        except KeyboardInterrupt:
            if session.stop.in_update:
                return session.interrupted("interrupted during an update", save=False)
            # A second Ctrl-C stops this process only; under several, the others may be inside
            # a collective that would never finish, and a checkpoint is one: none is attempted.
            single = session.accelerator.num_processes == 1
            return session.interrupted("interrupted (Ctrl-C)", save=single)
        except BaseException as exc:
            message = _fail_message(exc)
            if session.main and session.owns_run:
                with contextlib.suppress(Exception):
                    store.update_run(
                        session.run_id,
                        status="failed",
                        error=message,
                        finished_at=now(),
                        heartbeat_at=now(),
                    )
                with contextlib.suppress(Exception):
                    session.set_phase("finished")
            if isinstance(exc, AlphaLoRAError):
                raise
            if not isinstance(exc, Exception):
                raise
            raise AlphaLoRAError(message) from exc
    finally:
        session.stop.restore()
