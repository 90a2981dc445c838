"""LoRA *ranks* per adapted module from layer alphas: the AlphaLoRA softmax rule spreading a
rank budget instead of an expert budget, exported as a ``peft.LoraConfig`` with ``rank_pattern``.

The budget R is the total rank over every adapted module (a plain LoRA of rank r on L layers ×
m modules has R = r·L·m). Layer i's share is softmax(β·ln α)_i, split evenly over its m modules,
then rounded as the default expert mode does (water-filling inside [min, max], largest remainder,
ties to the larger α, then the lower index): Σr = R exactly and every module gets rank ≥ min ≥ 1,
so the ranks of one layer differ by at most 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alphalora.allocation.apportion import apportion
from alphalora.allocation.checks import check_alphas, check_beta, check_int
from alphalora.allocation.params import LLAMA_TARGETS
from alphalora.allocation.softmax_rules import _softmax_weights
from alphalora.errors import AlphaLoRAError

_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class RankAllocation:
    """LoRA rank of every adapted module (layer-major, ``targets`` order within a layer)."""

    ranks: tuple[int, ...]
    targets: tuple[str, ...]
    budget: int
    beta: float
    alphas: tuple[float, ...]
    min_rank: int = 1
    max_rank: int | None = None
    label: str = ""

    @property
    def n_layers(self) -> int:
        """Number of transformer layers."""
        return len(self.alphas)

    @property
    def layer_ranks(self) -> list[list[int]]:
        """Ranks per layer, one list of ``len(targets)`` per layer."""
        m = len(self.targets)
        return [list(self.ranks[i * m : (i + 1) * m]) for i in range(self.n_layers)]

    @property
    def mean_rank(self) -> float:
        """Average rank over the adapted modules (R / number of modules)."""
        return self.budget / len(self.ranks)

    def parameters(self, module_shapes: Mapping[str, tuple[int, int]]) -> int:
        """Trainable parameters: Σ over modules of r·(d_in + d_out)."""
        cost = _module_costs(self.targets, module_shapes)
        return int(sum(r * cost[i % len(self.targets)] for i, r in enumerate(self.ranks)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (for the run store and the app)."""
        return {
            "method": "alphalora-ranks",
            "label": self.label,
            "budget": self.budget,
            "beta": self.beta,
            "min_rank": self.min_rank,
            "max_rank": self.max_rank,
            "targets": list(self.targets),
            "layer_ranks": self.layer_ranks,
            "alphas": list(self.alphas),
        }


def llama_module_names(n_layers: int, targets: Sequence[str] = LLAMA_TARGETS) -> list[str]:
    """Module names of a Llama-style model (``model.layers.i.self_attn.q_proj``, …), layer-major."""
    names = []
    for i in range(n_layers):
        for kind in targets:
            block = "self_attn" if kind in _ATTENTION else "mlp"
            names.append(f"model.layers.{i}.{block}.{kind}")
    return names


def _module_costs(
    targets: Sequence[str], module_shapes: Mapping[str, tuple[int, int]]
) -> list[int]:
    missing = [t for t in targets if t not in module_shapes]
    if missing:
        raise AlphaLoRAError(
            f"No (d_in, d_out) shape for module(s) {missing}; give the model's config or shapes."
        )
    return [int(module_shapes[t][0]) + int(module_shapes[t][1]) for t in targets]


def check_rank_budget(budget: Any, n_modules: int, min_rank: int = 1) -> int:
    """A rank budget as an int; refuses one that cannot give every adapted module ``min_rank``."""
    budget = check_int("rank budget", budget, 1)
    if budget < n_modules * min_rank:
        raise AlphaLoRAError(
            f"A rank budget of {budget} is below the {n_modules} adapted modules × minimum rank "
            f"{min_rank}: every module needs rank ≥ {min_rank}. Raise the budget to at least "
            f"{n_modules * min_rank} (a plain LoRA of rank r uses r × {n_modules})."
        )
    return budget


def allocate_ranks(
    alphas: Sequence[float],
    budget: int,
    beta: float = 2.5,
    *,
    targets: Sequence[str] = LLAMA_TARGETS,
    min_rank: int = 1,
    max_rank: int | None = None,
) -> RankAllocation:
    """Ranks per adapted module: R·softmax(β·ln α)_i split over layer i's modules, rounded by
    largest remainder inside [min_rank, max_rank] (the default expert mode's rounding)."""
    a = check_alphas(alphas)
    b = check_beta(beta)
    targets = tuple(targets)
    if not targets:
        raise AlphaLoRAError("No target modules given; name at least one (e.g. q_proj).")
    low = check_int("min_rank", min_rank, 1)
    high = None if max_rank is None else check_int("max_rank", max_rank, 1)
    if high is not None and high < low:
        raise AlphaLoRAError(f"max_rank ({high}) is smaller than min_rank ({low}).")
    m = len(targets)
    n_modules = a.size * m
    total = check_rank_budget(budget, n_modules, low)
    if high is not None and total > n_modules * high:
        raise AlphaLoRAError(
            f"A rank budget of {total} cannot fit {n_modules} modules of rank ≤ {high} "
            f"(≤ {n_modules * high}). Lower the budget or raise max_rank."
        )
    weights = np.repeat(_softmax_weights(b * np.log(a)) / m, m)
    ranks = apportion(weights, total, low, high, tiebreak=np.repeat(a, m))
    bounds = f", min {low}" + ("" if high is None else f", max {high}")
    return RankAllocation(
        ranks=ranks,
        targets=targets,
        budget=total,
        beta=b,
        alphas=tuple(float(x) for x in a),
        min_rank=low,
        max_rank=high,
        label=f"LoRA ranks by α (R={total}, β={b:.3g}{bounds})",
    )


def peft_lora_config(
    allocation: RankAllocation,
    module_names: Sequence[str] | None = None,
    *,
    lora_alpha: float = 16.0,
    dropout: float = 0.05,
) -> dict[str, Any]:
    """A dict that ``peft.LoraConfig(**d)`` accepts: ``r`` is the rounded mean rank, each module
    its own rank in ``rank_pattern`` and lora_alpha·r_i/r in ``alpha_pattern``, so every module
    keeps the scaling lora_alpha/r of a uniform LoRA of the mean rank."""
    names = list(module_names or llama_module_names(allocation.n_layers, allocation.targets))
    if len(names) != len(allocation.ranks):
        raise AlphaLoRAError(
            f"{len(names)} module names for {len(allocation.ranks)} ranks; give one name per "
            "adapted module, layer by layer."
        )
    base = max(1, round(allocation.mean_rank))
    return {
        "r": base,
        "lora_alpha": float(lora_alpha),
        "lora_dropout": float(dropout),
        "target_modules": list(allocation.targets),
        "rank_pattern": {n: int(r) for n, r in zip(names, allocation.ranks, strict=True)},
        "alpha_pattern": {
            n: float(lora_alpha) * int(r) / base
            for n, r in zip(names, allocation.ranks, strict=True)
        },
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }


def uniform_lora_parameters(
    rank: int, n_layers: int, module_shapes: Mapping[str, tuple[int, int]],
    targets: Sequence[str] = LLAMA_TARGETS,
) -> int:  # fmt: skip
    """Trainable parameters of a plain LoRA of one rank on every target of every layer."""
    rank = check_int("rank", rank, 1)
    return int(rank * n_layers * sum(_module_costs(targets, module_shapes)))


def matching_uniform_rank(
    target_params: int, n_layers: int, module_shapes: Mapping[str, tuple[int, int]],
    targets: Sequence[str] = LLAMA_TARGETS,
) -> tuple[int, int]:  # fmt: skip
    """The plain-LoRA rank whose parameter count is closest to ``target_params``, and that
    count (compare the two to say how close)."""
    per_rank = n_layers * sum(_module_costs(targets, module_shapes))
    rank = max(1, round(target_params / per_rank))
    return rank, rank * per_rank


def matching_rank_budget(
    target_params: int,
    alphas: Sequence[float],
    module_shapes: Mapping[str, tuple[int, int]],
    beta: float = 2.5,
    *,
    targets: Sequence[str] = LLAMA_TARGETS,
    min_rank: int = 1,
    max_rank: int | None = None,
) -> RankAllocation:
    """The rank allocation (same rule and bounds) whose parameter count is closest to
    ``target_params``, e.g. a MoE-LoRA's, for an equal-parameter comparison."""
    targets = tuple(targets)
    costs = _module_costs(targets, module_shapes)
    n_modules = len(alphas) * len(targets)
    low_budget = n_modules * min_rank
    high_budget = None if max_rank is None else n_modules * max_rank
    guess = max(low_budget, round(target_params * len(costs) / sum(costs)))
    if high_budget is not None:
        guess = min(guess, high_budget)
    best: RankAllocation | None = None
    for budget in range(guess - 2 * len(targets), guess + 2 * len(targets) + 1):
        if budget < low_budget or (high_budget is not None and budget > high_budget):
            continue
        option = allocate_ranks(
            alphas, budget, beta, targets=targets, min_rank=min_rank, max_rank=max_rank
        )
        gap = abs(option.parameters(module_shapes) - target_params)
        if best is None or gap < abs(best.parameters(module_shapes) - target_params):
            best = option
    assert best is not None  # the guess itself is always inside the bounds
    return best
