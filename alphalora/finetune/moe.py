"""MoE-LoRA public API: the layer, injection, the balancing loss, adapter files, peft baseline.

Typical training step (what the trainer calls)::

    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    aux = load_balancing_loss(model, attention_mask=mask)   # after the forward, same batch
    (out.loss + 0.001 * aux).backward()

The layer lives in :mod:`alphalora.finetune.moe_layer`, injection in :mod:`alphalora.finetune.moe_inject`, files
in :mod:`alphalora.finetune.adapters`; this module adds the model-level routing statistics.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor, nn

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    load_adapter,
    read_adapter_config,
    save_adapter,
)
from alphalora.finetune.moe_inject import (
    FAMILY_TARGETS,
    InjectionState,
    inject_moe_lora,
    injection_state,
    make_peft_lora,
    model_family,
    moe_modules,
    remove_moe_lora,
    resolve_targets,
    trainable_parameter_count,
)
from alphalora.finetune.moe_layer import MoELoRALinear, assignment_share, route, switch_balance_loss

#: Coefficient the trainer multiplies the balancing loss by (docs/method.md §5).
AUX_LOSS_COEF = 0.001

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "AUX_LOSS_COEF",
    "FAMILY_TARGETS",
    "InjectionState",
    "MoELoRALinear",
    "assignment_share",
    "clear_router_state",
    "inject_moe_lora",
    "injection_state",
    "load_adapter",
    "load_balancing_loss",
    "make_peft_lora",
    "model_family",
    "moe_modules",
    "read_adapter_config",
    "remove_moe_lora",
    "resolve_targets",
    "route",
    "router_load",
    "save_adapter",
    "switch_balance_loss",
    "trainable_parameter_count",
]


def _layers_with_routing(model: nn.Module) -> dict[int, list[MoELoRALinear]]:
    modules = [m for _, m in moe_modules(model)]
    if not modules:
        raise AlphaLoRAError("This model has no MoE-LoRA layers: call inject_moe_lora() first.")
    if any(m.last_probs is None for m in modules):
        raise AlphaLoRAError(
            "The MoE-LoRA layers hold no router outputs yet: run a forward pass on the batch "
            "before asking for the balancing loss or the router load."
        )
    groups: dict[int, list[MoELoRALinear]] = defaultdict(list)
    for module in modules:
        groups[module.layer_index].append(module)
    return dict(sorted(groups.items()))


def _token_weight(attention_mask: Tensor | None, module: MoELoRALinear) -> Tensor | None:
    if attention_mask is None:
        return None
    tokens = module.last_index.shape[0]
    if attention_mask.numel() != tokens:
        raise AlphaLoRAError(
            f"The attention mask has {attention_mask.numel()} entries but layer "
            f"{module.layer_index} routed {tokens} tokens; pass the mask of the batch that was "
            "just run through the model."
        )
    return attention_mask.reshape(-1).to(device=module.last_index.device, dtype=torch.float32)


def _layer_tensors(
    modules: list[MoELoRALinear], attention_mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    probs = torch.cat([m.last_probs for m in modules])
    index = torch.cat([m.last_index for m in modules])
    weights = [_token_weight(attention_mask, m) for m in modules]
    weight = None if attention_mask is None else torch.cat(weights)
    return probs, index, weight


def load_balancing_loss(model: nn.Module, attention_mask: Tensor | None = None) -> Tensor:
    """Σ over layers of N_j·Σ_i f_i·P_i over the concatenated router outputs of the layer's
    adapted modules from the last forward; padding (attention_mask == 0) is left out.

    Differentiable through the router probabilities; multiply by ``AUX_LOSS_COEF`` and add to
    the task loss. A perfectly balanced router scores 1 per layer.
    """
    layers = _layers_with_routing(model)
    losses = [
        switch_balance_loss(*_layer_tensors(mods, attention_mask)) for mods in layers.values()
    ]
    total = torch.stack([loss.to(losses[0].device) for loss in losses]).sum()
    training = any(m.training and m.num_experts > 1 for mods in layers.values() for m in mods)
    if training and torch.is_grad_enabled() and not total.requires_grad:
        raise AlphaLoRAError(
            "The router outputs of the last forward carry no gradient, so the balancing loss "
            "cannot train the routers. This happens with reentrant gradient checkpointing: "
            "enable it with gradient_checkpointing_kwargs={'use_reentrant': False}, or run the "
            "forward with gradients enabled."
        )
    return total


def router_load(model: nn.Module, attention_mask: Tensor | None = None) -> list[list[float]]:
    """Per layer (in layer order), the share of top-k assignments each expert received in the
    last forward (padding left out if a mask is given). For logging: one host sync."""
    shares = []
    for modules in _layers_with_routing(model).values():
        _, index, weight = _layer_tensors(modules, attention_mask)
        shares.append(assignment_share(index, modules[0].num_experts, weight))
    flat = torch.cat([share.to(shares[0].device) for share in shares]).cpu().tolist()
    sizes = [share.numel() for share in shares]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [flat[start : start + size] for start, size in zip(starts, sizes, strict=True)]


def clear_router_state(model: nn.Module) -> None:
    """Drop the stored router outputs of every MoE-LoRA layer (e.g. before evaluation)."""
    for _, module in moe_modules(model):
        module.clear_router_state()
