"""One training session after set-up: its micro-batches, evaluation, the training loop with its
checkpoints and clean stop, and the end of the run (final evaluation, adapter, summary)."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.checkpoint_check import file_sha256
from alphalora.finetune.checkpoints import (
    CHECKPOINT_FORMAT,
    TRAINABLE_FILE,
    capture_rng,
    commit_checkpoint,
    config_fingerprint,
    prune_checkpoints,
    stage_checkpoint,
)
from alphalora.finetune.data_order import batch_indices
from alphalora.finetune.runtime import device_label, now
from alphalora.finetune.session_resume import SessionResume

ADAPTER_DIR = "adapter"


class Session(SessionResume):
    """State of one call to :func:`~alphalora.finetune.train.train`; methods are the phases of
    the run (the set-up ones in :class:`SessionSetup`)."""

    # -- data -----------------------------------------------------------------------------
    def _feature(self, index: int) -> Any:
        from alphalora.finetune.encoding import encode_example

        feat = self._features.get(index)
        if feat is None:
            feat = encode_example(
                self.tokenizer, self.train_examples[index], self.config.max_length
            )
            self._features[index] = feat
        return feat

    def _micro_batch(self, micro_step: int) -> dict[str, Any]:
        from alphalora.finetune.encoding import collate, pad_token_id

        idx = batch_indices(
            len(self.train_examples),
            self.config.seed,
            micro_step,
            self.config.batch_size,
            self.accelerator.num_processes,
            self.accelerator.process_index,
        )
        batch = collate([self._feature(i) for i in idx], pad_token_id(self.tokenizer))
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    # -- evaluation -----------------------------------------------------------------------
    def evaluate(self, step: int) -> dict[str, Any]:
        import torch

        from alphalora.finetune.encoding import collate, encode_examples, pad_token_id
        from alphalora.finetune.scoring import evaluate_counts

        cfg = self.config
        acc = self.accelerator
        batch_size = cfg.eval_batch_size or 2 * cfg.batch_size
        shard = self.eval_examples[acc.process_index :: acc.num_processes]
        self.report(self.step / cfg.steps, f"Evaluating at step {step} ({len(self.eval_examples)})")
        self.set_phase("evaluating", 0, len(self.eval_examples))
        counts = evaluate_counts(
            self.unwrapped,
            self.tokenizer,
            shard,
            batch_size,
            on_batch=self._eval_batch,
            max_length=cfg.max_length,
            scoring=self.eval_scoring,
        )
        sums = torch.tensor(
            [counts.loss_sum, counts.tokens, counts.correct, counts.n, counts.unparsable],
            dtype=torch.float64,
            device=acc.device,
        )
        if acc.num_processes > 1:
            sums = acc.reduce(sums, reduction="sum")
        loss_sum, tokens, correct, n, unparsable = sums.tolist()
        self._save_predictions(step, counts.predictions)
        metrics: dict[str, Any] = {
            "eval_loss": loss_sum / tokens if tokens else float("nan"),
            "accuracy": correct / n if n else float("nan"),
            "n": int(n),
            "unparsable": int(unparsable),
        }
        if self.allocation is not None:
            from alphalora.finetune.moe import clear_router_state, router_load

            probe = encode_examples(self.tokenizer, self.eval_examples[:batch_size], cfg.max_length)
            batch = collate(probe, pad_token_id(self.tokenizer))
            was_training = self.unwrapped.training
            self.unwrapped.eval()
            with torch.no_grad():
                mask = batch["attention_mask"].to(acc.device)
                self.unwrapped(input_ids=batch["input_ids"].to(acc.device), attention_mask=mask)
                metrics["router_load"] = router_load(self.unwrapped, mask)
            clear_router_state(self.unwrapped)
            if was_training:
                self.unwrapped.train()
        self._log(step, metrics, "eval")
        self.last_eval, self.last_eval_step = metrics, step
        return metrics

    def _eval_batch(self, done: int, total: int) -> None:
        """After each evaluation batch: progress on the run row (this process's share scaled to
        the whole evaluation), and a stop if one was asked for (single process)."""
        n = len(self.eval_examples)
        self.set_phase("evaluating", min(n, done * self.accelerator.num_processes), n)
        self.check_stop_local()

    def _save_predictions(self, step: int, local: list[tuple[int, str | None, bool]]) -> None:
        """Gather every process's per-example predictions (indices mapped back from its shard)
        to the main process, which writes them to the run folder for paired comparisons."""
        from alphalora.finetune.predictions import prediction_record, save_predictions

        acc = self.accelerator
        rows = [(acc.process_index + acc.num_processes * i, p, ok) for i, p, ok in local]
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            rows = gather_object(rows)
        if self.main:
            record = prediction_record(step, self.eval_examples, rows)
            save_predictions(self.folder, record)
            self.store.merge_summary(self.run_id, eval_fingerprint=record["fingerprint"])

    # -- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """Adapter weights + optimizer/scheduler/RNG + step, written to a temporary folder and
        renamed into place; the oldest beyond ``keep_checkpoints`` are removed."""
        acc = self.accelerator
        final = self.checkpoint_root / f"step-{self.step}"
        rng, rng_meta = self.rng_snapshot or capture_rng()
        states = [(acc.process_index, rng, rng_meta)]
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            states = gather_object(states)
        if self.main:
            scaler = getattr(acc, "scaler", None)
            tmp = stage_checkpoint(
                final, self.unwrapped, self.optimizer, self.scheduler, scaler, states
            )
            state = {
                "format": CHECKPOINT_FORMAT,
                "step": self.step,
                "micro_step": self.step * self.config.grad_accum,
                "num_processes": acc.num_processes,
                "fingerprint": config_fingerprint(self.config),
                "accuracy_before": self.accuracy_before,
                "eval_loss_before": self.eval_loss_before,
                "elapsed": self.elapsed_before + (time.perf_counter() - self.started),
                "tokens_seen": self.tokens_seen,
                "step_seconds": self.step_seconds[-1000:],
                "saved_at": now(),
                "sha256": {TRAINABLE_FILE: file_sha256(tmp / TRAINABLE_FILE)},
                "eval_pending": self.eval_pending,
            }
            commit_checkpoint(tmp, final, state)
            prune_checkpoints(self.folder, self.config.keep_checkpoints)
        acc.wait_for_everyone()
        return final

    # -- training -------------------------------------------------------------------------
    def train_step(self) -> dict[str, Any]:
        import torch

        cfg = self.config
        acc = self.accelerator
        moe = self.allocation is not None
        t0 = time.perf_counter()
        self.rng_snapshot = capture_rng()
        self.model.train()
        lr = float(self.scheduler.get_last_lr()[0])
        sums = torch.zeros(3, dtype=torch.float64, device=acc.device)
        for m in range(cfg.grad_accum):
            batch = self._micro_batch(self.step * cfg.grad_accum + m)
            sync = m == cfg.grad_accum - 1
            ctx = contextlib.nullcontext() if sync else acc.no_sync(self.model)
            with ctx:
                out = self.model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    labels=batch["labels"],
                )
                task_loss = out.loss
                if moe:
                    from alphalora.finetune.moe import load_balancing_loss

                    if cfg.aux_loss_coef > 0:
                        aux = load_balancing_loss(self.unwrapped, batch["attention_mask"])
                    else:
                        with torch.no_grad():
                            aux = load_balancing_loss(self.unwrapped, batch["attention_mask"])
                    total = task_loss + cfg.aux_loss_coef * aux
                else:
                    aux = torch.zeros((), device=acc.device)
                    total = task_loss
                acc.backward(total / cfg.grad_accum)
            sums += torch.stack(
                [
                    task_loss.detach().double(),
                    aux.detach().double(),
                    batch["attention_mask"].sum().double(),
                ]
            )
        if moe:
            from alphalora.finetune.moe import clear_router_state

            clear_router_state(self.unwrapped)
        grad_norm = None
        if cfg.max_grad_norm is not None:
            grad_norm = acc.clip_grad_norm_(self.trainable, cfg.max_grad_norm)
        self.stop.in_update = True
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.stop.in_update = False
        self.rng_snapshot = None
        if acc.num_processes > 1:
            sums = acc.reduce(sums, reduction="sum")
            sums[:2] /= acc.num_processes
        task_sum, aux_sum, tokens = sums.tolist()
        seconds = time.perf_counter() - t0
        self.step_seconds.append(seconds)
        self.tokens_seen += int(tokens)
        metrics = {
            "train_loss": task_sum / cfg.grad_accum,
            "lr": lr,
            "seconds_per_step": seconds,
            "tokens_per_s": tokens / seconds if seconds > 0 else None,
        }
        if moe:
            metrics["aux_loss"] = aux_sum / cfg.grad_accum
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        if not math.isfinite(metrics["train_loss"]):
            raise AlphaLoRAError(
                f"The training loss became {metrics['train_loss']} at step {self.step}; lower "
                "lr or use fp32/bf16 precision."
            )
        return metrics

    def interrupted(self, reason: str, save: bool = True) -> dict[str, Any]:
        checkpoint = None
        if save and self.loop_started and self.step > 0:
            checkpoint = self.save_checkpoint()
        message = f"{reason} at step {self.step}/{self.config.steps}"
        # SIGTERM is how a run is cancelled (jobs.cancel_run); Ctrl-C or a failure to finish
        # an update leaves it interrupted. Either can be resumed from the checkpoint.
        status = "cancelled" if self.stop.signal_name == "SIGTERM" else "interrupted"
        if self.main:
            self.store.update_run_if(
                self.run_id,
                {"status": "running"},
                status=status,
                error=message + ("; resume with --resume" if checkpoint else ""),
                finished_at=now(),
                heartbeat_at=now(),
            )
        self.set_phase("finished")
        return {
            "run_id": self.run_id,
            "status": status,
            "step": self.step,
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "message": message,
        }

    def run(self) -> dict[str, Any]:
        cfg = self.config
        if self.resume:
            self.restore_checkpoint()
        if self.eval_pending:  # a stop cut this step's evaluation short: do it now
            self.evaluate(self.step)
            self.eval_pending = False
        if self.step == 0 and cfg.eval_before:
            before = self.evaluate(0)
            self.accuracy_before = before["accuracy"]
            self.eval_loss_before = before["eval_loss"]
            if self.main:
                self.store.merge_summary(
                    self.run_id,
                    accuracy_before=self.accuracy_before,
                    eval_loss_before=self.eval_loss_before,
                )
            self.report(0.0, f"accuracy before training {self.accuracy_before:.3f}")
        self.loop_started = True
        self.set_phase("training", self.step, cfg.steps)
        while self.step < cfg.steps:
            if self.stop_requested():
                return self.interrupted(f"stopped by {self.stop.signal_name or 'request'}")
            metrics = self.train_step()
            self._log(self.step, metrics, "train")
            self._update(heartbeat_at=now())
            self.set_phase("training", self.step, cfg.steps)
            message = f"step {self.step}/{cfg.steps} loss {metrics['train_loss']:.4f}"
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                self.eval_pending = True
                result = self.evaluate(self.step)
                self.eval_pending = False
                message += f" accuracy {result['accuracy']:.3f}"
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            self.report(self.step / cfg.steps, message)
        return self.finish()

    def finish(self) -> dict[str, Any]:
        cfg = self.config
        final = self.evaluate(self.step)
        adapter = self.folder / ADAPTER_DIR
        seconds = self.elapsed_before + (time.perf_counter() - self.started)
        timed = self.step_seconds[1:] or self.step_seconds  # step 1 includes warm-up
        per_step = statistics.median(timed) if timed else None  # robust to a busy machine
        summary = {
            "accuracy_before": self.accuracy_before,
            "accuracy_after": final["accuracy"],
            "eval_loss_before": self.eval_loss_before,
            "eval_loss_after": final["eval_loss"],
            "steps": self.step,
            "seconds": seconds,
            "seconds_per_step": per_step,
            "tokens_seen": self.tokens_seen,
            "params_trainable": self.params_trainable,
            "device": device_label(self.accelerator),
            "precision": self.precision,
            "method": cfg.method,
            "n_eval": final["n"],
            "experts": None if self.allocation is None else list(self.allocation.experts),
        }
        self.set_phase("saving")
        if self.main:
            self._save_adapter(adapter, summary)
            self.store.merge_summary(self.run_id, **summary)
            fields: dict[str, Any] = {
                "status": "completed",
                "adapter_path": str(adapter),
                "finished_at": now(),
                "heartbeat_at": now(),
                "params_trainable": self.params_trainable,
            }
            if per_step is not None:
                fields["seconds_per_step"] = per_step
            self.store.update_run(self.run_id, **fields)
        self.accelerator.wait_for_everyone()
        self.set_phase("finished")
        self.report(1.0, f"accuracy {final['accuracy']:.3f}; adapter saved to {adapter}")
        return {
            "run_id": self.run_id,
            "status": "completed",
            "adapter_path": str(adapter),
            **summary,
        }

    def _save_adapter(self, adapter: Path, summary: dict[str, Any]) -> None:
        extra = {"run_id": self.run_id, "task": self.config.task, "summary": summary}
        if self.allocation is not None:
            from alphalora.finetune.moe import save_adapter

            save_adapter(self.unwrapped, adapter, base_model=self.config.model, extra=extra)
            return
        tmp = adapter.parent / f".tmp-{ADAPTER_DIR}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        self.unwrapped.save_pretrained(str(tmp), safe_serialization=True)
        from alphalora.paths import atomic_write_json

        atomic_write_json(tmp / "alphalora_run.json", extra)
        if adapter.exists():
            shutil.rmtree(adapter)
        os.replace(tmp, adapter)
