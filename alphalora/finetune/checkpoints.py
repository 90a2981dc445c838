"""A run's checkpoints on disk: the adapter weights, optimizer/scheduler/scaler and RNG state of
every process, and the step, written to a temporary folder and renamed into place (never the
frozen base). A checkpoint is complete once its state file is written; a resume refuses one made
with other weight-changing settings or another process count."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.config import TrainConfig

CHECKPOINTS_DIR = "checkpoints"
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


def config_fingerprint(config: TrainConfig) -> str:
    """SHA-256 over the fields that determine the trained weights."""
    data = config.to_dict()
    picked = {k: data[k] for k in WEIGHT_FIELDS}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


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


def capture_rng() -> tuple[dict[str, Any], dict[str, Any]]:
    """Tensor RNG states (torch, CUDA) and JSON-able ones (python, numpy), captured now."""
    import torch

    tensors = {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    return tensors, _rng_state()


def set_rng_state(state: dict[str, Any], tensors: dict[str, Any]) -> None:
    """Put back RNG states captured by :func:`capture_rng` (JSON-able ``state``, ``tensors``)."""
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_rng"])
    if tensors.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda_rng"])


def trainable_state(model: Any) -> dict[str, Any]:
    """The trainable parameters of ``model`` (the adapter), detached on the CPU, by name."""
    return {
        name: p.detach().to("cpu").contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def stage_checkpoint(
    final: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    scaler: Any,
    rng_states: list[tuple[int, dict[str, Any], dict[str, Any]]],
) -> Path:
    """Write a checkpoint's adapter weights, optimizer/scheduler/scaler state and the RNG state
    of every process (``(process index, tensors, JSON-able)``) into a fresh temporary folder next
    to ``final``; returns that folder, for :func:`commit_checkpoint`."""
    import torch
    from safetensors.torch import save_file

    from alphalora.paths import atomic_write_json

    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for index, tensors, meta in rng_states:  # every process's RNG, written by the main one
        torch.save(tensors, tmp / f"rng-{index}.pt")
        atomic_write_json(tmp / f"rng-{index}.json", meta)
    save_file(trainable_state(model), str(tmp / TRAINABLE_FILE))
    blob: dict[str, Any] = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
    if scaler is not None:
        blob["scaler"] = scaler.state_dict()
    torch.save(blob, tmp / OPTIM_FILE)
    return tmp


def commit_checkpoint(tmp: Path, final: Path, state: dict[str, Any]) -> None:
    """Write the state file that completes the staged checkpoint ``tmp`` and rename it into
    place as ``final`` (replacing one of the same step)."""
    from alphalora.paths import atomic_write_json

    atomic_write_json(tmp / STATE_FILE, state)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def prune_checkpoints(run_folder: Path, keep: int) -> None:
    """Remove the oldest checkpoints of a run beyond the newest ``keep``."""
    for _, old in list_checkpoints(run_folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def read_checkpoint_state(folder: Path, config: TrainConfig, num_processes: int) -> dict[str, Any]:
    """The state file of checkpoint ``folder``; refuses a checkpoint made with other
    weight-changing settings (:data:`WEIGHT_FIELDS`) or by another number of processes."""
    state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    if state.get("fingerprint") != config_fingerprint(config):
        raise AlphaLoRAError(
            f"The checkpoint {folder} was made with a different configuration (one of "
            f"{', '.join(WEIGHT_FIELDS)} changed); resume with the run's own config."
        )
    if state.get("num_processes") != num_processes:
        raise AlphaLoRAError(
            f"The checkpoint was written by {state.get('num_processes')} process(es) but "
            f"this resume runs {num_processes}; use the same launch."
        )
    return state


def load_checkpoint(
    folder: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    scaler: Any,
    process_index: int,
) -> None:
    """Put checkpoint ``folder`` back: the adapter weights into ``model``, the optimizer,
    scheduler and scaler state, and this process's RNG state."""
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(folder / TRAINABLE_FILE))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != set(params):
        raise AlphaLoRAError(f"The checkpoint {folder} does not match this model's adapter.")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name].to(param.device, param.dtype))
    blob = torch.load(folder / OPTIM_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    if scaler is not None and "scaler" in blob:
        scaler.load_state_dict(blob["scaler"])
    tensors = torch.load(folder / f"rng-{process_index}.pt", weights_only=True)
    meta = json.loads((folder / f"rng-{process_index}.json").read_text(encoding="utf-8"))
    set_rng_state(meta, tensors)
