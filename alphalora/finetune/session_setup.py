"""The set-up half of a training session: the state of one run, claiming it in the run store
(with its folder) and loading the task, the model with its adapters and the optimizer. Under
several processes the main one decides and writes; every process reaches each collective."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.checkpoints import CHECKPOINTS_DIR
from alphalora.finetune.config import TrainConfig
from alphalora.finetune.resolve import resolve_allocation, resolve_model_path
from alphalora.finetune.run_progress import RunProgress, StopRequested, stop_between_blocks
from alphalora.finetune.runtime import (
    Progress,
    StopFlag,
    check_writable,
    device_label,
    now,
    pid_alive,
)


class SessionSetup:
    """State of one call to :func:`~alphalora.finetune.train.train` and the phases before the
    loop: open the run, load the task, model and adapters. The loop and the end of the run are
    :class:`~alphalora.finetune.session.Session`'s, which builds on this class."""

    def __init__(
        self,
        config: TrainConfig,
        run_id: str | None,
        store: Any,
        resume: bool,
        progress: Progress | None,
    ) -> None:
        self.config = config
        self.run_id = run_id
        self.store = store
        self.resume = resume
        self.report = progress or (lambda fraction, message: None)
        self.stop = StopFlag()
        self.step = 0
        self.summary: dict[str, Any] = {}
        self.accuracy_before: float | None = None
        self.eval_loss_before: float | None = None
        self.last_eval: dict[str, Any] | None = None
        self.last_eval_step: int | None = None
        self.step_seconds: list[float] = []
        self.tokens_seen = 0
        self.elapsed_before = 0.0
        self.started = time.perf_counter()
        self.loop_started = False
        self.owns_run = False
        self.rng_snapshot: tuple[dict[str, Any], dict[str, Any]] | None = None
        self.eval_pending = False  # a mid-training evaluation was stopped: redo it on resume
        self.progress_row = RunProgress(None, config.steps)

    # -- store helpers (main process only) ------------------------------------------------
    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def _update(self, **fields: Any) -> None:
        if self.main and self.run_id is not None:
            self.store.update_run(self.run_id, **fields)

    def set_phase(self, phase: str, done: int | None = None, total: int | None = None) -> None:
        """Record the phase and progress on the run row (see :mod:`run_progress`)."""
        self.progress_row.update(phase, done, total, step=self.step)

    # -- stop requests --------------------------------------------------------------------
    def stop_requested(self) -> bool:
        """Whether a stop was asked for, agreed by every process (a collective under DDP)."""
        import torch

        flag = self.stop.requested
        if self.accelerator.num_processes > 1:
            t = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
            flag = bool(self.accelerator.reduce(t, reduction="sum").item() > 0)
        return flag

    def check_stop(self) -> None:
        """Raise :class:`StopRequested` if a stop was asked for; called by every process at
        the same points (between load phases)."""
        if self.stop_requested():
            raise StopRequested

    def check_stop_local(self) -> None:
        """Raise :class:`StopRequested` at a point only this process reaches (an evaluation
        batch, a progress callback of the export or analysis): single-process runs only,
        where no other process can be left waiting in a collective."""
        if self.stop.requested and self.accelerator.num_processes == 1:
            raise StopRequested

    def _report_or_stop(self, fraction: float, message: str) -> None:
        self.report(fraction, message)
        self.check_stop_local()

    def _log(self, step: int, metrics: dict[str, Any], split: str) -> None:
        if self.main:
            from alphalora.store.recovery import append_metrics_mirror

            self.store.log_metrics(self.run_id, step, metrics, split=split)
            append_metrics_mirror(self.folder, step, metrics, split)  # for `runs recover`

    # -- set-up ---------------------------------------------------------------------------
    def _from_main(self, value: Any, error: str | None) -> Any:
        """The main process's ``value`` on every process, and its ``error`` (a message from a
        check only the main process makes) raised on every process: no rank is left waiting
        alone in a later collective."""
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            box = [value, error]
            broadcast_object_list(box)
            value, error = box
        if error is not None:
            raise AlphaLoRAError(error)
        return value

    def _claim_run(self) -> None:
        """Main process: check the run can be resumed or started, or create it."""
        cfg = self.config
        if self.resume:
            if self.run_id is None:
                raise AlphaLoRAError("resume needs the id of the run to continue (--run-id).")
            run = self.store.get_run(self.run_id)
            if run["status"] == "completed":
                raise AlphaLoRAError(
                    f"Run {self.run_id} already completed; start a new run instead."
                )
            if run["status"] == "running" and pid_alive(run.get("pid")):
                raise AlphaLoRAError(
                    f"Run {self.run_id} is still running (pid {run['pid']}); stop it first."
                )
        elif self.run_id is None:
            self.run_id = self.store.create_run(cfg.to_dict(), name=cfg.name, status="queued")
            self.owns_run = True
        else:
            run = self.store.get_run(self.run_id)
            if run["status"] not in ("queued",):
                raise AlphaLoRAError(
                    f"Run {self.run_id} is {run['status']}; only a queued run can be started. "
                    "Use resume to continue an interrupted run."
                )

    def _make_folder(self) -> Path:
        """Main process: the run folder and its checkpoints folder, checked writable."""
        from alphalora.store.records import run_dir

        try:
            folder = run_dir(self.run_id)
        except OSError as exc:
            raise AlphaLoRAError(
                f"Cannot create the folder of run {self.run_id} ({exc.strerror or exc}). "
                "Set ALPHALORA_HOME to a writable folder."
            ) from exc
        check_writable(folder)
        check_writable(folder / CHECKPOINTS_DIR)
        return folder

    def open_run(self) -> None:
        from alphalora import paths
        from alphalora.store.records import check_run_id

        cfg = self.config
        error = None
        if self.main:
            try:
                self._claim_run()
            except AlphaLoRAError as exc:
                error = str(exc)
        self.run_id = self._from_main(self.run_id, error)
        self.owns_run = True
        error = None
        if self.main:
            try:
                self.folder = self._make_folder()
            except AlphaLoRAError as exc:
                error = str(exc)
        self._from_main(None, error)
        if not self.main:  # only the main process writes; the others read checkpoints from here
            self.folder = paths.data_dir() / "runs" / check_run_id(self.run_id)
        self.checkpoint_root = self.folder / CHECKPOINTS_DIR
        fields: dict[str, Any] = {
            "status": "running",
            "pid": os.getpid(),
            "device": device_label(self.accelerator),
            "heartbeat_at": now(),
            "error": None,
            "finished_at": None,
        }
        if not self.resume:
            fields["started_at"] = now()
        self._update(**fields)
        if self.main:
            run_id = self.run_id
            self.progress_row = RunProgress(
                lambda record: self.store.merge_summary(run_id, progress=record), cfg.steps
            )
        if self.main:
            from alphalora.paths import atomic_write_json

            atomic_write_json(self.folder / "config.json", cfg.to_dict())

    def load(self) -> None:
        """Load the task, the model with its adapters and the optimizer; record them in the
        run (its summary, and the resolved allocation)."""
        import torch
        from transformers import get_linear_schedule_with_warmup

        from alphalora.finetune.moe import trainable_parameter_count

        cfg = self.config
        self.set_phase("loading task")
        self.check_stop()
        self._load_task()
        self.set_phase("loading model")
        self.check_stop()
        model = self._add_adapters(self._load_model())
        stop_between_blocks(model, self.check_stop_local)  # evaluations stop within a block
        self.check_stop()
        self.params_trainable = trainable_parameter_count(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise AlphaLoRAError("No trainable parameters after adding the adapters.")
        optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.trainable = trainable
        self.unwrapped = self.accelerator.unwrap_model(self.model)
        self._features: dict[int, Any] = {}
        self._update(params_trainable=self.params_trainable)
        if self.main:
            from alphalora.paths import atomic_write_json

            extra = {
                "allocation": None if self.allocation is None else self.allocation.to_dict(),
                "params_trainable": self.params_trainable,
                "task": self.task.summary(),
                "model_path": self.model_path,
            }
            if self.allocation is not None:
                from alphalora.finetune.resolve import allocation_record_for

                atomic_write_json(self.folder / "allocation.json", self.allocation.to_dict())
                # the run row shows the resolved experts per layer and how they were chosen
                self._update(allocation=allocation_record_for(cfg, self.allocation))
            else:
                from alphalora.finetune.lora_ranks import lora_record

                record = lora_record(cfg.rank, cfg.lora_config)
                given = self.store.get_run(self.run_id).get("allocation") or {}
                if isinstance(given, dict) and given.get("label"):
                    record["label"] = given["label"]  # the name it was launched under
                self._update(allocation=record)
            self.store.merge_summary(self.run_id, **extra)

    def _load_task(self) -> None:
        """The task and its training and evaluation examples, cut to the config's counts."""
        from alphalora.finetune.tasks.load import load_task

        cfg = self.config
        self.report(0.0, f"Loading task {cfg.task}")
        self.task = load_task(cfg.task, scoring=cfg.scoring)
        train_examples = self.task.train
        if cfg.train_examples is not None:
            train_examples = train_examples[: cfg.train_examples]
        self.train_examples = train_examples
        eval_examples = self.task.eval
        if cfg.eval_examples is not None:
            eval_examples = eval_examples[: cfg.eval_examples]
        self.eval_examples = eval_examples
        self.eval_scoring = None if self.task.scoring == "choice" else "generate"

    def _load_model(self) -> Any:
        """The tokenizer (kept on the session) and the base model, in the run's precision."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = self.config
        self.report(0.0, f"Loading model {cfg.model}")
        # Under several processes the main one fills the shared caches first (the embedded
        # model's export here, the spectral analysis in _allocation); the others then reuse them.
        single = self.accelerator.num_processes == 1  # callbacks may stop only a single process
        with self.accelerator.main_process_first():
            path = resolve_model_path(cfg.model, self._report_or_stop if single else self.report)
        kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as exc:
            raise AlphaLoRAError(f"Could not load a tokenizer from {path}: {exc}") from exc
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            tokenizer.pad_token = tokenizer.eos_token
        self.check_stop()
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
            self.precision
        ]
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
        except (OSError, ValueError) as exc:
            raise AlphaLoRAError(f"Could not load the model from {path}: {exc}") from exc
        model.config.use_cache = False
        self.tokenizer = tokenizer
        self.model_path = path
        return model

    def _add_adapters(self, model: Any) -> Any:
        """``model`` with the config's adapters (MoE-LoRA with its allocation, or plain LoRA)."""
        from transformers import set_seed

        cfg = self.config
        n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
        if cfg.method == "moe-lora":
            from alphalora.finetune.moe import inject_moe_lora
            from alphalora.finetune.moe_inject import find_blocks

            n_layers = len(find_blocks(model)[1])
            self.set_phase("resolving allocation")
            self.check_stop()
            with self.accelerator.main_process_first():
                self.allocation = self._allocation(n_layers)
            self.check_stop()
            set_seed(cfg.seed)
            inject_moe_lora(
                model,
                self.allocation,
                targets=cfg.targets,
                rank=cfg.rank,
                lora_alpha=cfg.lora_alpha,
                dropout=cfg.dropout,
            )
        else:
            from alphalora.finetune.moe import make_peft_lora

            self.allocation = None
            set_seed(cfg.seed)
            model = self._plain_lora(model, make_peft_lora)
        self.n_layers = n_layers
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        return model

    def _plain_lora(self, model: Any, make_peft_lora: Any) -> Any:
        """Plain LoRA: one rank everywhere, or the per-module ranks of ``lora_config`` (every
        rank_pattern key must name an adapted module, or the run stops here)."""
        cfg = self.config
        extra = cfg.lora_config
        if not extra:
            return make_peft_lora(model, cfg.rank, cfg.targets, cfg.lora_alpha, cfg.dropout)
        from alphalora.finetune.lora_ranks import unmatched_patterns

        names = [name for name, _ in model.named_modules()]
        missing = unmatched_patterns(names, extra["rank_pattern"])
        if missing:
            raise AlphaLoRAError(
                f"lora_config.rank_pattern names {len(missing)} module(s) this model does not "
                f"have (e.g. {missing[0]!r}); export the ranks for this model (allocate … --as "
                "peft-ranks with its analysis table or config)."
            )
        return make_peft_lora(
            model,
            int(extra.get("r", cfg.rank)),
            extra.get("target_modules") or cfg.targets,
            float(extra.get("lora_alpha", cfg.lora_alpha)),
            cfg.dropout,
            rank_pattern=extra["rank_pattern"],
            alpha_pattern=extra.get("alpha_pattern"),
        )

    def _allocation(self, n_layers: int) -> Any:
        from alphalora.allocation.model import Allocation

        if self.resume:
            saved = self.folder / "allocation.json"
            if saved.is_file():
                allocation = Allocation.from_json(saved.read_text(encoding="utf-8"))
                if allocation.n_layers == n_layers:
                    return allocation
        self.report(0.0, "Resolving the expert allocation")
        analysis_device = "cpu" if self.accelerator.device.type == "cpu" else "auto"
        single = self.accelerator.num_processes == 1

        def analysis_progress(done: int, total: int, name: str) -> None:
            self.set_phase("resolving allocation", done, total)
            if single:
                self.check_stop_local()

        return resolve_allocation(
            self.config, n_layers, analysis_device=analysis_device, progress=analysis_progress
        )
