"""MoE-LoRA adapter files: ``adapter.safetensors`` (LoRA + router weights only) and
``adapter_config.json`` (everything needed to rebuild the layers on a fresh base model).

Both files are written atomically (temporary file in the same folder, then a rename); the
config is written last and carries the SHA-256 of the weights, so a half-copied or altered
adapter is refused with a clear message instead of loading silently wrong weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from alphalora import __version__
from alphalora.errors import AlphaLoRAError
from alphalora.finetune.moe_inject import (
    inject_moe_lora,
    injection_state,
    model_family,
    moe_modules,
    remove_moe_lora,
    trainable_parameter_count,
)
from alphalora.paths import atomic_write_json

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT = "alphalora-moe-lora"
FORMAT_VERSION = 1
_REQUIRED = {
    "experts": list,
    "top_k": list,
    "rank": int,
    "lora_alpha": (int, float),
    "dropout": (int, float),
    "targets": list,
    "family": str,
    "adapter_dtype": str,
    "weights_file": str,
}


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Adapter parameters keyed by position in the block list (``blocks.3.self_attn.q_proj.
    lora_A``), so the keys do not depend on the head class wrapped around the blocks."""
    params: dict[str, nn.Parameter] = {}
    for _, module in moe_modules(model):
        key = module.adapter_key
        params[f"{key}.lora_A"] = module.lora_A
        params[f"{key}.lora_B"] = module.lora_B
        params[f"{key}.router.weight"] = module.router.weight
    return params


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_save_safetensors(tensors: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_adapter(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    base_model: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the adapter of an injected ``model`` (unwrapped from DDP/accelerate) to
    ``directory``; ``base_model`` names the base checkpoint it belongs to. Returns the folder."""
    state = injection_state(model)
    directory = Path(directory)
    try:
        extra_json = json.loads(json.dumps(extra or {}))
    except (TypeError, ValueError) as exc:
        raise AlphaLoRAError(
            f"The adapter's extra information is not JSON-serialisable: {exc}"
        ) from exc
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AlphaLoRAError(
            f"Cannot create the adapter folder {directory}: {exc.strerror}."
        ) from exc
    tensors = {
        key: param.detach().to("cpu").contiguous()
        for key, param in adapter_parameters(model).items()
    }
    weights_path = directory / ADAPTER_WEIGHTS
    _atomic_save_safetensors(tensors, weights_path)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "base_model": str(base_model),
        **state.as_dict(),
        "trainable_parameters": trainable_parameter_count(model),
        "weights_file": ADAPTER_WEIGHTS,
        "weights_sha256": _sha256(weights_path),
        "alphalora_version": __version__,
        "extra": extra_json,
    }
    atomic_write_json(directory / ADAPTER_CONFIG, config)
    return directory


def read_adapter_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated ``adapter_config.json`` of an adapter folder."""
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise AlphaLoRAError(
            f"No adapter at {directory}: {ADAPTER_CONFIG} is missing. Pick a folder written by "
            "save_adapter() (a finished training run)."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AlphaLoRAError(
            f"The adapter config {path} is unreadable or corrupted: {exc}"
        ) from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise AlphaLoRAError(f"{path} is not an AlphaLoRA MoE-LoRA adapter config.")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise AlphaLoRAError(
            f"{path} has adapter format version {version!r}; this AlphaLoRA reads up to "
            f"{FORMAT_VERSION}. Upgrade AlphaLoRA Studio."
        )
    for key, kind in _REQUIRED.items():
        if not isinstance(config.get(key), kind):
            raise AlphaLoRAError(f"The adapter config {path} lacks a valid '{key}'; it is damaged.")
    if len(config["experts"]) != len(config["top_k"]):
        raise AlphaLoRAError(f"The adapter config {path} has mismatched experts/top_k lists.")
    if Path(config["weights_file"]).name != config["weights_file"]:
        raise AlphaLoRAError(f"The adapter config {path} names a weights file outside its folder.")
    if not isinstance(getattr(torch, config["adapter_dtype"], None), torch.dtype):
        raise AlphaLoRAError(f"The adapter config {path} has an unknown dtype.")
    return config


def _read_weights(directory: Path, config: dict[str, Any]) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    path = directory / config["weights_file"]
    if not path.is_file():
        raise AlphaLoRAError(
            f"The adapter at {directory} has no weights file ({config['weights_file']}); the "
            "folder is incomplete. Copy it again or re-run the training."
        )
    expected = config.get("weights_sha256")
    if expected is not None and _sha256(path) != expected:
        raise AlphaLoRAError(
            f"The adapter weights {path} do not match their checksum: the file is corrupted or "
            "was modified. Copy it again or re-run the training."
        )
    try:
        return load_file(path)
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise AlphaLoRAError(f"The adapter weights {path} are unreadable: {exc}") from exc


def _copy_weights(model: nn.Module, tensors: dict[str, Tensor], directory: Path) -> None:
    params = adapter_parameters(model)
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise AlphaLoRAError(
            f"The adapter at {directory} does not fit this model: {len(missing)} missing "
            f"weights (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}). "
            "Load it on the base model it was trained on."
        )
    wrong = [k for k, p in params.items() if tuple(tensors[k].shape) != tuple(p.shape)]
    if wrong:
        key = wrong[0]
        raise AlphaLoRAError(
            f"The adapter at {directory} does not fit this model: {key} has shape "
            f"{tuple(tensors[key].shape)} in the file but {tuple(params[key].shape)} in the "
            "model. Load it on the base model it was trained on."
        )
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(tensors[key])


def load_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Inject MoE-LoRA layers into a fresh base ``model`` as the saved config says and load
    the saved weights (strict). Returns ``model``; on failure the model is left unadapted."""
    directory = Path(directory)
    config = read_adapter_config(directory)
    family = model_family(model)
    if config["family"] != family:
        raise AlphaLoRAError(
            f"The adapter at {directory} was trained on a {config['family']} model "
            f"({config.get('base_model', 'unknown base')}) but this is a {family} model."
        )
    tensors = _read_weights(directory, config)
    inject_moe_lora(
        model,
        {"experts": config["experts"], "top_k": config["top_k"]},
        targets=config["targets"],
        rank=config["rank"],
        lora_alpha=config["lora_alpha"],
        dropout=config["dropout"],
        dtype=getattr(torch, config["adapter_dtype"]),
    )
    try:
        _copy_weights(model, tensors, directory)
    except BaseException:
        remove_moe_lora(model)
        raise
    return model
