"""Checking a saved adapter folder without a base model: its config, the weights' checksum,
and that every tensor is there with the shape the config implies (MoE-LoRA), or that a plain
LoRA (peft) adapter's files load. Behind ``python -m alphalora adapters check PATH``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    _read_weights,
    read_adapter_config,
)

_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.(lora_A|lora_B|router\.weight)$")
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def _check_moe(directory: Path) -> dict[str, Any]:
    config = read_adapter_config(directory)  # format, version, fields
    tensors = _read_weights(directory, config)  # present, checksum, readable
    experts, rank = config["experts"], config["rank"]
    modules: dict[tuple[int, str], dict[str, tuple[int, ...]]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if not match or int(match.group(1)) >= len(experts):
            raise AlphaLoRAError(f"The adapter at {directory} holds an unexpected tensor {key!r}.")
        layer, path, part = int(match.group(1)), match.group(2), match.group(3)
        modules.setdefault((layer, path), {})[part] = tuple(tensor.shape)
    for (layer, path), parts in sorted(modules.items()):
        width = experts[layer] * rank
        a, b, router = parts.get("lora_A"), parts.get("lora_B"), parts.get("router.weight")
        where = f"blocks.{layer}.{path}"
        if a is None or b is None or router is None:
            raise AlphaLoRAError(
                f"The adapter at {directory} is incomplete: {where} lacks lora_A, lora_B or its "
                "router. Copy it again or re-run the training."
            )
        if a[0] != width or b[1] != width or router != (experts[layer], a[1]):
            raise AlphaLoRAError(
                f"The adapter at {directory} does not match its config: {where} has lora_A "
                f"{a}, lora_B {b}, router {router} for {experts[layer]} experts of rank {rank}."
            )
    expected = config.get("num_modules")
    if isinstance(expected, int) and expected != len(modules):
        raise AlphaLoRAError(
            f"The adapter at {directory} has {len(modules)} adapted modules but its config "
            f"lists {expected}; it is incomplete. Copy it again or re-run the training."
        )
    return {
        "format": "MoE-LoRA",
        "base_model": config.get("base_model"),
        "layers": len(experts),
        "total_experts": sum(experts),
        "rank": rank,
        "targets": config["targets"],
        "modules": len(modules),
        "parameters": sum(
            a[0] * a[1] + b[0] * b[1] + r[0] * r[1]
            for a, b, r in (
                (p["lora_A"], p["lora_B"], p["router.weight"]) for p in modules.values()
            )
        ),
        "checksum": "verified" if config.get("weights_sha256") else "not recorded",
    }


def _check_peft(directory: Path) -> dict[str, Any]:
    from peft import PeftConfig
    from safetensors.torch import load_file

    try:
        config = PeftConfig.from_pretrained(str(directory))
    except (OSError, ValueError, TypeError) as exc:
        raise AlphaLoRAError(
            f"The LoRA adapter config in {directory} is missing or unreadable: {exc}"
        ) from exc
    weights = next((directory / n for n in PEFT_WEIGHTS if (directory / n).is_file()), None)
    if weights is None:
        raise AlphaLoRAError(
            f"The LoRA adapter at {directory} has no weights file ({' or '.join(PEFT_WEIGHTS)})."
        )
    if weights.suffix != ".safetensors":
        raise AlphaLoRAError(f"{weights} is a pickle; only safetensors adapters are checked.")
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise AlphaLoRAError(f"The adapter weights {weights} are unreadable: {exc}") from exc
    return {
        "format": "LoRA (peft)",
        "base_model": getattr(config, "base_model_name_or_path", None),
        "rank": getattr(config, "r", None),
        "targets": sorted(getattr(config, "target_modules", None) or []),
        "tensors": len(tensors),
        "parameters": sum(t.numel() for t in tensors.values()),
        "checksum": "not recorded (peft)",
    }


def check_adapter(directory: str | Path) -> dict[str, Any]:
    """Validate a saved adapter folder and summarise it; raises :class:`AlphaLoRAError`
    naming the damaged file and what to do. A run folder is accepted for its ``adapter/``."""
    directory = Path(directory).expanduser()
    if (directory / "adapter").is_dir() and not (directory / ADAPTER_CONFIG).is_file():
        directory = directory / "adapter"
    peft = any((directory / name).is_file() for name in PEFT_WEIGHTS)
    if peft and not (directory / ADAPTER_WEIGHTS).is_file():
        summary = _check_peft(directory)
    else:
        summary = _check_moe(directory)
    return {"path": str(directory), **summary}
