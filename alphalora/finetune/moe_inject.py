"""Put MoE-LoRA layers into a Hugging Face model, per an expert allocation, and take them out.

Transformer blocks are found as the model's block list (``model.layers`` for Llama/Mistral/
Qwen/Gemma, ``transformer.h`` for GPT-2, ``encoder.layer`` for BERT, any other ModuleList named
``layers``/``h``/``layer``/``blocks`` as a fallback); target linears are matched by their last
name component inside each block. Everything except the adapters is frozen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.moe_layer import MoELoRALinear

#: Default target module names per model family.
FAMILY_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "bert": ("query", "key", "value", "dense"),
}
#: ``config.model_type`` → family, for families whose names differ from Llama's.
_MODEL_TYPE_FAMILY = {
    "gpt2": "gpt2",
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "electra": "bert",
}
_BLOCK_LIST_NAMES = ("layers", "h", "layer", "blocks")
#: Attribute under which the injection settings are kept on the model (read by save_adapter).
STATE_ATTR = "alphalora_moe"


@dataclass(frozen=True)
class InjectionState:
    """What was injected: enough to rebuild the same adapter on a fresh base model."""

    experts: tuple[int, ...]
    top_k: tuple[int, ...]
    rank: int
    lora_alpha: float
    dropout: float
    targets: tuple[str, ...]
    family: str
    model_type: str
    blocks_path: str
    adapter_dtype: str
    modules: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists, not tuples)."""
        return {
            "experts": list(self.experts),
            "top_k": list(self.top_k),
            "rank": self.rank,
            "lora_alpha": self.lora_alpha,
            "dropout": self.dropout,
            "targets": list(self.targets),
            "family": self.family,
            "model_type": self.model_type,
            "blocks_path": self.blocks_path,
            "adapter_dtype": self.adapter_dtype,
            "num_layers": len(self.experts),
            "num_modules": len(self.modules),
        }


def model_family(model: nn.Module) -> str:
    """``llama`` (also Mistral/Qwen/Gemma and unknown decoders), ``gpt2`` or ``bert``."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", "") or "")
    if model_type in _MODEL_TYPE_FAMILY:
        return _MODEL_TYPE_FAMILY[model_type]
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if "c_attn" in names:
        return "gpt2"
    if {"query", "key", "value"} <= names:
        return "bert"
    return "llama"


def resolve_targets(model: nn.Module, targets: str | Sequence[str] | None) -> tuple[str, ...]:
    """Target module names: ``None``/``"auto"`` → the model family's defaults, a family name
    (``"llama"``, ``"gpt2"``, ``"bert"``) → that family's names, or an explicit list."""
    if targets is None or targets == "auto":
        return FAMILY_TARGETS[model_family(model)]
    if isinstance(targets, str):
        if targets in FAMILY_TARGETS:
            return FAMILY_TARGETS[targets]
        return tuple(t.strip() for t in targets.split(",") if t.strip())
    names = tuple(str(t) for t in targets)
    if not names:
        raise AlphaLoRAError("The list of target modules is empty: name at least one module.")
    return names


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's list of transformer blocks and its dotted path.

    With several candidates (e.g. a vision tower beside the language model) the one holding
    the most parameters wins.
    """
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and name.rsplit(".", 1)[-1] in _BLOCK_LIST_NAMES
    ]
    if not candidates:
        raise AlphaLoRAError(
            f"Cannot find the transformer blocks of this {type(model).__name__}: no module list "
            f"named one of {', '.join(_BLOCK_LIST_NAMES)}. Only Llama/Mistral/Qwen/Gemma, GPT-2 "
            "and BERT-style models are supported."
        )

    def size(item: tuple[str, nn.ModuleList]) -> int:
        return sum(p.numel() for p in item[1].parameters())

    return max(candidates, key=size)


def _sequence(obj: Any, key: str) -> list[int]:
    value = obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)
    if value is None:
        raise AlphaLoRAError(
            f"The allocation has no '{key}': pass an Allocation or a dict with 'experts' and "
            "'top_k' (one entry per transformer layer)."
        )
    if isinstance(value, int):
        return [value]
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise AlphaLoRAError(f"The allocation's '{key}' must be a list of integers: {exc}") from exc


def allocation_lists(allocation: Any) -> tuple[list[int], list[int]]:
    """(experts, top_k) per layer from an Allocation-like object or a dict.

    A single top-k value applies to every layer; top-k is capped at the layer's expert count
    (the papers' rule "top-2, or 1 where a layer has one expert").
    """
    experts = _sequence(allocation, "experts")
    top_k = _sequence(allocation, "top_k")
    if len(top_k) == 1 and len(experts) > 1:
        top_k = top_k * len(experts)
    if len(top_k) != len(experts):
        raise AlphaLoRAError(
            f"The allocation has {len(experts)} expert counts but {len(top_k)} top-k values; "
            "give one of each per layer."
        )
    for layer, (n, k) in enumerate(zip(experts, top_k, strict=True)):
        if n < 1 or k < 1:
            raise AlphaLoRAError(
                f"Layer {layer} has {n} experts and top-k {k}; both must be at least 1."
            )
    return experts, [min(n, k) for n, k in zip(experts, top_k, strict=True)]


def moe_modules(model: nn.Module) -> list[tuple[str, MoELoRALinear]]:
    """Every MoE-LoRA layer of ``model`` with its module name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MoELoRALinear)]


def _target_names_found(blocks: nn.ModuleList) -> list[str]:
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in blocks.named_modules()
            if isinstance(module, nn.Linear | Conv1D)
        }
    )


def inject_moe_lora(
    model: nn.Module,
    allocation: Any,
    *,
    targets: str | Sequence[str] | None = None,
    rank: int = 8,
    lora_alpha: float = 16,
    dropout: float = 0.05,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Replace the target linears of layer j by MoE-LoRA layers with ``allocation.experts[j]``
    experts and ``allocation.top_k[j]`` active ones; freeze everything else; return ``model``.

    ``targets`` None or ``"auto"`` picks the family defaults (all 7 Llama projections; GPT-2
    ``c_attn c_proj c_fc``; BERT ``query key value dense``). Adapter weights are float32 for a
    half-precision base (``dtype`` overrides).
    """
    if getattr(model, STATE_ATTR, None) is not None or moe_modules(model):
        raise AlphaLoRAError(
            "This model already has MoE-LoRA layers; load a fresh base model to inject again."
        )
    experts, top_k = allocation_lists(allocation)
    names = resolve_targets(model, targets)
    blocks_path, blocks = find_blocks(model)
    if len(experts) != len(blocks):
        raise AlphaLoRAError(
            f"The allocation covers {len(experts)} layers but the model has {len(blocks)} "
            f"transformer layers ({blocks_path}). Recompute the allocation for this model."
        )
    wanted = set(names)
    plan: list[tuple[int, str]] = []
    for layer, block in enumerate(blocks):
        for name, module in block.named_modules():
            if (
                name
                and name.rsplit(".", 1)[-1] in wanted
                and isinstance(module, nn.Linear | Conv1D)
            ):
                plan.append((layer, name))
    if not plan:
        raise AlphaLoRAError(
            f"No target module matched {list(names)} in {blocks_path}. Linear modules found there: "
            f"{', '.join(_target_names_found(blocks)) or 'none'}. Pass targets= with some of them."
        )
    for param in model.parameters():
        param.requires_grad_(False)
    created: list[str] = []
    adapter_dtype = None
    for layer, name in plan:
        block = blocks[layer]
        parent_name, _, child = name.rpartition(".")
        parent = block.get_submodule(parent_name) if parent_name else block
        layer_module = MoELoRALinear(
            getattr(parent, child),
            experts[layer],
            top_k[layer],
            rank=rank,
            lora_alpha=lora_alpha,
            dropout=dropout,
            layer_index=layer,
            dtype=dtype,
        )
        layer_module.train(parent.training)  # a new module would otherwise be in train mode
        layer_module.adapter_key = f"blocks.{layer}.{name}"
        setattr(parent, child, layer_module)
        created.append(f"{blocks_path}.{layer}.{name}")
        adapter_dtype = layer_module.lora_A.dtype
    config = getattr(model, "config", None)
    state = InjectionState(
        experts=tuple(experts),
        top_k=tuple(top_k),
        rank=int(rank),
        lora_alpha=float(lora_alpha),
        dropout=float(dropout),
        targets=tuple(names),
        family=model_family(model),
        model_type=str(getattr(config, "model_type", "") or ""),
        blocks_path=blocks_path,
        adapter_dtype=str(adapter_dtype).removeprefix("torch."),
        modules=tuple(created),
    )
    object.__setattr__(model, STATE_ATTR, state)
    return model


def injection_state(model: nn.Module) -> InjectionState:
    """The settings :func:`inject_moe_lora` recorded on ``model``."""
    state = getattr(model, STATE_ATTR, None)
    if not isinstance(state, InjectionState):
        raise AlphaLoRAError(
            "This model has no MoE-LoRA adapter: call inject_moe_lora() or load_adapter() first "
            "(unwrap DDP/accelerate wrappers before saving)."
        )
    return state


def remove_moe_lora(model: nn.Module) -> nn.Module:
    """Put the original base linears back (adapters discarded); base stays frozen."""
    for name, module in moe_modules(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.base)
    if STATE_ATTR in model.__dict__:
        del model.__dict__[STATE_ATTR]
    return model


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of parameters that will receive gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
        return "CAUSAL_LM"
    return None


def make_peft_lora(
    model: nn.Module,
    rank: int,
    targets: str | Sequence[str] | None = None,
    lora_alpha: float = 16,
    dropout: float = 0.05,
    rank_pattern: Mapping[str, int] | None = None,
    alpha_pattern: Mapping[str, float] | None = None,
) -> nn.Module:
    """Plain-LoRA baseline: ``peft.get_peft_model`` on the same target modules.

    ``rank_pattern`` (peft's regex → rank mapping) gives layers different ranks, e.g. r·N_j;
    ``alpha_pattern`` their lora_alpha.
    """
    from peft import LoraConfig, get_peft_model

    names = resolve_targets(model, targets)
    config = LoraConfig(
        r=int(rank),
        lora_alpha=lora_alpha,
        lora_dropout=dropout,
        target_modules=list(names),
        fan_in_fan_out=model_family(model) == "gpt2",
        bias="none",
        task_type=_task_type(model),
        rank_pattern=dict(rank_pattern or {}),
        alpha_pattern=dict(alpha_pattern or {}),
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise AlphaLoRAError(f"peft could not add LoRA to this model: {exc}") from exc
