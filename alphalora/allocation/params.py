"""Trainable-parameter counts of a MoE-LoRA and the (d_in, d_out) shapes of the Llama-style
projections it adapts, read from a model config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from alphalora.allocation.checks import check_int
from alphalora.allocation.model import Allocation
from alphalora.errors import AlphaLoRAError

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_parameters_per_expert(
    module_shapes: Mapping[str, tuple[int, int]], rank: int = 8, include_router: bool = True
) -> int:
    """Trainable parameters one expert adds to one layer: r·(d_in + d_out) per adapted module,
    plus the expert's router row (d_in) per module when routers are counted."""
    rank = check_int("rank", rank, 1)
    if not module_shapes:
        raise AlphaLoRAError("No target modules given; name at least one (e.g. q_proj).")
    total = 0
    for kind, shape in module_shapes.items():
        try:
            d_in, d_out = (int(v) for v in shape)
        except (TypeError, ValueError) as exc:
            raise AlphaLoRAError(
                f"Module {kind!r} needs a (d_in, d_out) pair of integers; got {shape!r}."
            ) from exc
        if d_in < 1 or d_out < 1:
            raise AlphaLoRAError(f"Module {kind!r} has a non-positive size {shape!r}.")
        total += rank * (d_in + d_out) + (d_in if include_router else 0)
    return total


def _config_get(config: Any, *names: str) -> Any:
    for name in names:
        value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
        if value is not None:
            return value
    return None


def module_shapes_from_config(
    config: Mapping[str, Any] | Any, targets: Sequence[str] = LLAMA_TARGETS
) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each Llama-style projection from a model config (dict or
    ``transformers.PretrainedConfig``): hidden, intermediate, heads, kv heads, head_dim."""
    hidden = _config_get(config, "hidden_size")
    inter = _config_get(config, "intermediate_size")
    heads = _config_get(config, "num_attention_heads")
    if hidden is None or inter is None or heads is None:
        raise AlphaLoRAError(
            "The model config lacks hidden_size, intermediate_size or num_attention_heads; "
            "only Llama-style configs are supported here. Give module shapes explicitly."
        )
    kv_heads = _config_get(config, "num_key_value_heads") or heads
    head_dim = _config_get(config, "head_dim") or int(hidden) // int(heads)
    hidden, inter, heads, kv_heads, head_dim = (
        int(hidden),
        int(inter),
        int(heads),
        int(kv_heads),
        int(head_dim),
    )
    table = {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    unknown = [t for t in targets if t not in table]
    if unknown:
        raise AlphaLoRAError(
            f"Unknown target module(s) {unknown}; choose from {', '.join(LLAMA_TARGETS)}."
        )
    if not targets:
        raise AlphaLoRAError("No target modules given; name at least one (e.g. q_proj).")
    return {t: table[t] for t in targets}


def trainable_parameters(
    allocation: Allocation | Sequence[int],
    module_shapes: Mapping[str, tuple[int, int]],
    rank: int = 8,
    include_router: bool = True,
) -> int:
    """Total trainable parameters of a MoE-LoRA with this allocation (Σ_j N_j × per-expert)."""
    experts = allocation.experts if isinstance(allocation, Allocation) else tuple(allocation)
    return sum(int(n) for n in experts) * lora_parameters_per_expert(
        module_shapes, rank=rank, include_router=include_router
    )
