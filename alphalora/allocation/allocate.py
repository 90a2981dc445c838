"""One entry point for every allocation rule: alphas or a MoLA shape → :class:`Allocation`.

``allocate`` checks that the options fit together (a shape takes no β or bounds, the official
mode takes no bounds) and calls the rule: the AlphaLoRA default or official mode, a MoLA shape
or uniform. The command line and the Python API (``alphalora.allocate``) both go through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from alphalora.allocation.model import Allocation
from alphalora.allocation.shapes import mola_shape, uniform
from alphalora.allocation.softmax_rules import (
    alphalora_allocation,
    alphalora_official,
    temperature_to_beta,
)
from alphalora.errors import AlphaLoRAError

EXPERTS_PER_LAYER = 5
"""Default budget per layer: the paper's 160 experts at 32 layers."""
DEFAULT_BETA = 2.5
MODES = ("default", "official")


def allocate(
    alphas: Sequence[float] | None = None,
    *,
    budget: int | None = None,
    beta: float | None = None,
    temperature: float | None = None,
    mode: str | None = None,
    shape: str | None = None,
    n_layers: int | None = None,
    min_experts: int | None = None,
    max_experts: int | None = None,
    top_k: int = 2,
    min_at_least_top_k: bool = False,
) -> Allocation:
    """Experts per layer from layer ``alphas`` (AlphaLoRA, ``mode`` "default" or "official")
    or from a MoLA ``shape`` ("2468", "diamond", "uniform", …) over ``n_layers`` layers.

    ``budget`` defaults to 5 experts per layer (a shape's own total for a MoLA shape);
    ``temperature`` τ is 1/β. Alphas given with a shape are kept on the result for display.
    """
    if beta is not None and temperature is not None:
        raise AlphaLoRAError("Give beta or temperature (τ = 1/β), not both.")
    if mode is not None and mode not in MODES:
        raise AlphaLoRAError(f"Unknown allocation mode {mode!r}; use one of {', '.join(MODES)}.")
    if alphas is not None:
        alphas = [float(a) for a in alphas]
    if shape:
        used = [
            flag
            for flag, value in (
                ("--beta", beta),
                ("--temperature", temperature),
                ("--mode", mode),
                ("--min", min_experts),
                ("--max", max_experts),
            )
            if value is not None
        ]
        if used:
            raise AlphaLoRAError(
                f"{', '.join(used)} cannot be combined with --shape "
                "(they tune the alpha-based allocation)."
            )
        if alphas is not None and n_layers is not None and n_layers != len(alphas):
            raise AlphaLoRAError(
                f"--layers {n_layers} disagrees with the {len(alphas)} alphas given."
            )
        layers = len(alphas) if alphas is not None else (32 if n_layers is None else n_layers)
        if shape.strip().lower() == "uniform":
            total = budget if budget is not None else EXPERTS_PER_LAYER * layers
            result = uniform(layers, total, top_k=top_k)
        else:
            result = mola_shape(shape, layers, budget)
        if alphas is not None:
            result = dataclasses.replace(result, alphas=tuple(alphas))
        return result

    if alphas is None:
        raise AlphaLoRAError("Give layer alphas with --alphas or --preset, or a --shape.")
    if n_layers is not None and n_layers != len(alphas):
        raise AlphaLoRAError(f"--layers {n_layers} disagrees with the {len(alphas)} alphas.")
    if temperature is not None:
        beta = temperature_to_beta(temperature)
    elif beta is None:
        beta = DEFAULT_BETA
    if budget is None:
        budget = EXPERTS_PER_LAYER * len(alphas)
    if mode == "official":
        if min_experts is not None or max_experts is not None:
            raise AlphaLoRAError(
                "--min/--max only apply to --mode default; the official mode has no bounds."
            )
        if min_at_least_top_k:
            raise AlphaLoRAError("--min-at-least-top-k only applies to --mode default.")
        return alphalora_official(alphas, budget=budget, beta=beta)
    return alphalora_allocation(
        alphas,
        budget,
        beta,
        min_experts=1 if min_experts is None else min_experts,
        max_experts=max_experts,
        top_k=top_k,
        min_at_least_top_k=min_at_least_top_k,
    )
