"""The fine-tuning loop: MoE-LoRA (or a plain-LoRA baseline) on a task, with accelerate.

``train(config)`` resolves the allocation, injects the adapters, evaluates before training,
trains with AdamW + linear warmup/decay, logs every step to the run store, evaluates every
``eval_every`` steps and at the end, checkpoints the adapter and optimizer state atomically
(never the frozen base), and saves the adapter. A SIGTERM or Ctrl-C stops it cleanly after the
current step with a checkpoint; ``resume=True`` continues to the same result as an
uninterrupted run. Runnable as ``python -m alphalora.finetune.train CONFIG``, and unchanged under
``accelerate launch`` with several processes (DDP): each process takes its own ``batch_size``
examples per micro-step (the global batch grows with the process count) and scores its own shard
of the evaluation; only the main one writes the run store, checkpoints and adapter; every
collective is reached by all processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.config import DEFAULT_EXPERTS_PER_LAYER, TrainConfig, load_config

Progress = Callable[[float, str], None]

CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
TRAINABLE_FILE = "trainable.safetensors"
OPTIM_FILE = "optim_state.pt"
STATE_FILE = "trainer_state.json"
CHECKPOINT_FORMAT = 1

#: Config fields that change the trained weights: a resume must not alter them.
WEIGHT_FIELDS = (
    "model",
    "task",
    "scoring",
    "method",
    "allocation",
    "rank",
    "lora_alpha",
    "dropout",
    "targets",
    "batch_size",
    "grad_accum",
    "lr",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "max_length",
    "train_examples",
    "seed",
    "precision",
    "aux_loss_coef",
)

OOM_HINT = (
    "Out of memory. Lower batch_size (and raise grad_accum to keep the global batch), lower "
    "max_length, or set gradient_checkpointing to true."
)


# --------------------------------------------------------------------------- pure helpers


@lru_cache(maxsize=64)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return tuple(order)


def batch_indices(
    n: int,
    seed: int,
    micro_step: int,
    batch_size: int,
    num_processes: int = 1,
    process_index: int = 0,
) -> list[int]:
    """Example indices of one micro-batch: a seeded permutation per epoch, read as one endless
    stream, so the data position is fully given by ``micro_step`` (resumable, no state)."""
    if n < 1:
        raise AlphaLoRAError("The training split is empty; the task needs training examples.")
    start = (micro_step * num_processes + process_index) * batch_size
    out = []
    for pos in range(start, start + batch_size):
        epoch, offset = divmod(pos, n)
        out.append(_epoch_order(n, seed, epoch)[offset])
    return out


def config_fingerprint(config: TrainConfig) -> str:
    """SHA-256 over the fields that determine the trained weights."""
    data = config.to_dict()
    picked = {k: data[k] for k in WEIGHT_FIELDS}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def _is_embedded(ref: str) -> bool:
    from alphalora.spectral.embedded import EMBEDDED_REF

    return ref == EMBEDDED_REF or ref.startswith(EMBEDDED_REF + ":")


def resolve_model_path(ref: str, progress: Progress | None = None) -> str:
    """A local folder (or hub id) that ``from_pretrained`` can load: the embedded model is
    exported once to a cached Hugging Face folder."""
    if _is_embedded(ref):
        from alphalora.spectral.embedded import export_embedded_hf, resolve_embedded

        def setup(fraction: float, message: str) -> None:
            if progress is not None:  # the export is set-up: training progress stays at 0
                progress(0.0, message)

        return str(export_embedded_hf(setup, resolve_embedded(ref)))
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise AlphaLoRAError(
                f"{path} has no config.json: fine-tuning needs a Hugging Face model folder "
                "(config.json, *.safetensors, tokenizer files)."
            )
        return str(path)
    if "/" in ref and not ref.startswith((".", "/", "~")):
        return ref
    raise AlphaLoRAError(
        f"Model {ref!r} not found: give 'embedded', a Hugging Face model folder, or a hub id "
        "such as 'HuggingFaceTB/SmolLM2-360M-Instruct'."
    )


def resolve_allocation(config: TrainConfig, n_layers: int, *, analysis_device: str = "auto") -> Any:
    """Turn ``config.allocation`` (explicit lists or a spec) into an :class:`Allocation` for a
    model with ``n_layers`` transformer layers; refuses a layer-count mismatch."""
    from alphalora.allocation.shapes import custom, mola_shape, uniform
    from alphalora.allocation.softmax_rules import alphalora_allocation, alphalora_official

    spec = dict(config.allocation or {"method": "alphalora"})
    if "experts" in spec:
        experts = list(spec["experts"])
        if len(experts) != n_layers:
            raise AlphaLoRAError(
                f"The allocation lists {len(experts)} layers but the model has {n_layers} "
                "transformer layers; give one expert count per layer."
            )
        top_k = spec.get("top_k")
        return custom(experts, 2 if top_k is None else top_k)
    method = spec["method"]
    per_layer = spec.get("experts_per_layer") or DEFAULT_EXPERTS_PER_LAYER
    budget = spec.get("budget")
    beta = 2.5 if spec.get("beta") is None else float(spec["beta"])
    top_k = int(spec.get("top_k") or 2)
    if method == "mola":
        return mola_shape(spec["shape"], n_layers, budget)
    if budget is None:
        budget = int(round(per_layer * n_layers))
    if method == "uniform":
        return uniform(n_layers, budget, top_k)
    from alphalora.spectral.analysis import layer_alphas

    alphas = layer_alphas(config.model, fit=spec.get("fit") or "hill-peak", device=analysis_device)
    if len(alphas) != n_layers:
        raise AlphaLoRAError(
            f"The spectral analysis found {len(alphas)} layers but the model loads with "
            f"{n_layers}; cannot allocate experts per layer."
        )
    if method == "alphalora-official":
        return alphalora_official(alphas, budget, beta)
    return alphalora_allocation(
        alphas,
        budget,
        beta,
        min_experts=int(spec.get("min") or 1),
        max_experts=spec.get("max"),
        top_k=top_k,
    )


# --------------------------------------------------------------------------- checkpoints


def list_checkpoints(run_folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first, as (step, folder)."""
    root = Path(run_folder) / CHECKPOINTS_DIR
    found = []
    if root.is_dir():
        for entry in root.iterdir():
            name = entry.name
            if name.startswith("step-") and name[5:].isdigit() and (entry / STATE_FILE).is_file():
                found.append((int(name[5:]), entry))
    return sorted(found)


def latest_checkpoint(run_folder: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    found = list_checkpoints(run_folder)
    return found[-1][1] if found else None


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch_cuda": torch.cuda.is_available(),
    }


def _capture_rng() -> tuple[dict[str, Any], dict[str, Any]]:
    """Tensor RNG states (torch, CUDA) and JSON-able ones (python, numpy), captured now."""
    import torch

    tensors = {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    return tensors, _rng_state()


def _set_rng_state(state: dict[str, Any], tensors: dict[str, Any]) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_rng"])
    if tensors.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda_rng"])


# --------------------------------------------------------------------------- the trainer


@dataclass
class _StopFlag:
    """Set by SIGTERM/SIGINT: finish the current step, checkpoint, stop."""

    requested: bool = False
    signal_name: str = ""
    in_update: bool = False
    previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()


def _now() -> str:
    from alphalora.store.records import now_iso

    return now_iso()


def _pid_alive(pid: int | None) -> bool:
    if not pid or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _check_writable(folder: Path) -> None:
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise AlphaLoRAError(
            f"The run folder {folder} is not writable ({exc.strerror or exc}). Free some space "
            "or set ALPHALORA_HOME to a writable folder."
        ) from exc


def _make_accelerator(config: TrainConfig) -> tuple[Any, str]:
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise AlphaLoRAError(
            "device 'cuda' was asked for but no CUDA GPU is visible; use device 'cpu' or 'auto'."
        )
    use_cpu = config.device == "cpu" or not cuda
    bf16_ok = cuda and not use_cpu and torch.cuda.is_bf16_supported()
    precision = config.resolved_precision(cuda and not use_cpu, bf16_ok)
    if precision == "fp16" and use_cpu:
        raise AlphaLoRAError("precision fp16 needs a GPU; use fp32 or bf16 on CPU.")
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    # accelerate keeps one state per process; a second run in the same process (tests, the
    # benchmark) with another precision or device needs it reset first.
    shared = getattr(AcceleratorState, "_shared_state", None) or {}
    device = (getattr(PartialState, "_shared_state", None) or {}).get("device")
    other_precision = shared.get("_mixed_precision") not in (None, mixed)
    other_device = device is not None and (getattr(device, "type", "cpu") == "cpu") != use_cpu
    if other_precision or other_device:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 or not hasattr(
            AcceleratorState, "_reset_state"
        ):
            raise AlphaLoRAError(
                "accelerate is already set up with another precision or device in this "
                "process; start a fresh process for this run."
            )
        AcceleratorState._reset_state(reset_partial_state=True)
    try:
        accelerator = Accelerator(cpu=use_cpu, mixed_precision=mixed)
    except ValueError as exc:
        raise AlphaLoRAError(f"accelerate could not be set up: {exc}") from exc
    return accelerator, precision


def _device_label(accelerator: Any) -> str:
    import torch

    device = accelerator.device
    label = str(device)
    if device.type == "cuda":
        label += f" ({torch.cuda.get_device_name(device)})"
    if accelerator.num_processes > 1:
        label += f" ×{accelerator.num_processes}"
    return label


class _Session:
    """State of one call to :func:`train`; methods are the phases of the run."""

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
        self.stop = _StopFlag()
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

    # -- store helpers (main process only) ------------------------------------------------
    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def _update(self, **fields: Any) -> None:
        if self.main and self.run_id is not None:
            self.store.update_run(self.run_id, **fields)

    def _log(self, step: int, metrics: dict[str, Any], split: str) -> None:
        if self.main:
            self.store.log_metrics(self.run_id, step, metrics, split=split)

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
            if run["status"] == "running" and _pid_alive(run.get("pid")):
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
        _check_writable(folder)
        _check_writable(folder / CHECKPOINTS_DIR)
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
            "device": _device_label(self.accelerator),
            "heartbeat_at": _now(),
            "error": None,
            "finished_at": None,
        }
        if not self.resume:
            fields["started_at"] = _now()
        self._update(**fields)
        if self.main:
            from alphalora.paths import atomic_write_json

            atomic_write_json(self.folder / "config.json", cfg.to_dict())

    def load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

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

        self.report(0.0, f"Loading model {cfg.model}")
        # Under several processes the main one fills the shared caches first (the embedded
        # model's export here, the spectral analysis in _allocation); the others then reuse them.
        with self.accelerator.main_process_first():
            path = resolve_model_path(cfg.model, self.report)
        kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as exc:
            raise AlphaLoRAError(f"Could not load a tokenizer from {path}: {exc}") from exc
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            tokenizer.pad_token = tokenizer.eos_token
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
        n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
        if cfg.method == "moe-lora":
            from alphalora.finetune.moe import inject_moe_lora
            from alphalora.finetune.moe_inject import find_blocks

            n_layers = len(find_blocks(model)[1])
            with self.accelerator.main_process_first():
                self.allocation = self._allocation(n_layers)
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
            model = make_peft_lora(model, cfg.rank, cfg.targets, cfg.lora_alpha, cfg.dropout)
        self.n_layers = n_layers
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        from alphalora.finetune.moe import trainable_parameter_count

        self.params_trainable = trainable_parameter_count(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise AlphaLoRAError("No trainable parameters after adding the adapters.")
        optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        from transformers import get_linear_schedule_with_warmup

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
                "model_path": path,
            }
            if self.allocation is not None:
                atomic_write_json(self.folder / "allocation.json", self.allocation.to_dict())
                # the run row shows the resolved experts per layer, not the spec
                self._update(allocation=self.allocation.to_dict())
            self.store.merge_summary(self.run_id, **extra)

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
        return resolve_allocation(self.config, n_layers, analysis_device=analysis_device)

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
        counts = evaluate_counts(
            self.unwrapped,
            self.tokenizer,
            shard,
            batch_size,
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

    # -- checkpoints ----------------------------------------------------------------------
    def _trainable_state(self) -> dict[str, Any]:
        return {
            name: p.detach().to("cpu").contiguous()
            for name, p in self.unwrapped.named_parameters()
            if p.requires_grad
        }

    def save_checkpoint(self) -> Path | None:
        """Adapter weights + optimizer/scheduler/RNG + step, written to a temporary folder and
        renamed into place; the oldest beyond ``keep_checkpoints`` are removed."""
        import torch
        from safetensors.torch import save_file

        from alphalora.paths import atomic_write_json

        acc = self.accelerator
        final = self.checkpoint_root / f"step-{self.step}"
        tmp = self.checkpoint_root / f".tmp-step-{self.step}-{os.getpid()}"
        rng, rng_meta = self.rng_snapshot or _capture_rng()
        states = [(acc.process_index, rng, rng_meta)]
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            states = gather_object(states)
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for index, tensors, meta in states:  # every process's RNG, written by the main one
                torch.save(tensors, tmp / f"rng-{index}.pt")
                atomic_write_json(tmp / f"rng-{index}.json", meta)
            save_file(self._trainable_state(), str(tmp / TRAINABLE_FILE))
            blob: dict[str, Any] = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
            }
            scaler = getattr(acc, "scaler", None)
            if scaler is not None:
                blob["scaler"] = scaler.state_dict()
            torch.save(blob, tmp / OPTIM_FILE)
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
                "saved_at": _now(),
            }
            atomic_write_json(tmp / STATE_FILE, state)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for _, old in list_checkpoints(self.folder)[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def restore_checkpoint(self) -> bool:
        import torch
        from safetensors.torch import load_file

        folder = latest_checkpoint(self.folder)
        if folder is None:
            self.report(0.0, "No checkpoint found: starting from step 0")
            return False
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        if state.get("fingerprint") != config_fingerprint(self.config):
            raise AlphaLoRAError(
                f"The checkpoint {folder} was made with a different configuration (one of "
                f"{', '.join(WEIGHT_FIELDS)} changed); resume with the run's own config."
            )
        if state.get("num_processes") != self.accelerator.num_processes:
            raise AlphaLoRAError(
                f"The checkpoint was written by {state.get('num_processes')} process(es) but "
                f"this resume runs {self.accelerator.num_processes}; use the same launch."
            )
        weights = load_file(str(folder / TRAINABLE_FILE))
        params = {n: p for n, p in self.unwrapped.named_parameters() if p.requires_grad}
        if set(weights) != set(params):
            raise AlphaLoRAError(f"The checkpoint {folder} does not match this model's adapter.")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(weights[name].to(param.device, param.dtype))
        blob = torch.load(folder / OPTIM_FILE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and "scaler" in blob:
            scaler.load_state_dict(blob["scaler"])
        index = self.accelerator.process_index
        tensors = torch.load(folder / f"rng-{index}.pt", weights_only=True)
        meta = json.loads((folder / f"rng-{index}.json").read_text(encoding="utf-8"))
        _set_rng_state(meta, tensors)
        self.step = int(state["step"])
        self.accuracy_before = state.get("accuracy_before")
        self.eval_loss_before = state.get("eval_loss_before")
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.step_seconds = [float(s) for s in state.get("step_seconds", [])]
        self.report(self.step / self.config.steps, f"Resumed from {folder.name}")
        return True

    # -- training -------------------------------------------------------------------------
    def train_step(self) -> dict[str, Any]:
        import torch

        cfg = self.config
        acc = self.accelerator
        moe = self.allocation is not None
        t0 = time.perf_counter()
        self.rng_snapshot = _capture_rng()
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

    def stop_requested(self) -> bool:
        import torch

        flag = self.stop.requested
        if self.accelerator.num_processes > 1:
            t = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
            flag = bool(self.accelerator.reduce(t, reduction="sum").item() > 0)
        return flag

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
                finished_at=_now(),
                heartbeat_at=_now(),
            )
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
        while self.step < cfg.steps:
            if self.stop_requested():
                return self.interrupted(f"stopped by {self.stop.signal_name or 'request'}")
            metrics = self.train_step()
            self._log(self.step, metrics, "train")
            self._update(heartbeat_at=_now())
            message = f"step {self.step}/{cfg.steps} loss {metrics['train_loss']:.4f}"
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                result = self.evaluate(self.step)
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
            "device": _device_label(self.accelerator),
            "precision": self.precision,
            "method": cfg.method,
            "n_eval": final["n"],
            "experts": None if self.allocation is None else list(self.allocation.experts),
        }
        if self.main:
            self._save_adapter(adapter, summary)
            self.store.merge_summary(self.run_id, **summary)
            fields: dict[str, Any] = {
                "status": "completed",
                "adapter_path": str(adapter),
                "finished_at": _now(),
                "heartbeat_at": _now(),
                "params_trainable": self.params_trainable,
            }
            if per_step is not None:
                fields["seconds_per_step"] = per_step
            self.store.update_run(self.run_id, **fields)
        self.accelerator.wait_for_everyone()
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
    session = _Session(cfg, run_id, store, resume, progress)
    session.accelerator, session.precision = _make_accelerator(cfg)
    session.stop.install()
    try:
        try:
            session.open_run()
            session.load()
            if session.stop_requested():
                return session.interrupted(f"stopped by {session.stop.signal_name}", save=False)
            return session.run()
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
                        finished_at=_now(),
                        heartbeat_at=_now(),
                    )
            if isinstance(exc, AlphaLoRAError):
                raise
            if not isinstance(exc, Exception):
                raise
            raise AlphaLoRAError(message) from exc
    finally:
        session.stop.restore()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m alphalora.finetune.train CONFIG [options]``: same as ``python -m alphalora train``."""
    from alphalora.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
