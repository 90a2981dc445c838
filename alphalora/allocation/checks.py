"""Input checks shared by the allocation rules: whole numbers, layer alphas, β and the
per-layer bounds a budget must fit, each refused with an actionable message."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from alphalora.errors import AlphaLoRAError

MAX_TOTAL_EXPERTS = 1_000_000
"""The most experts an allocation may hold in total, hence also the most layers (each layer has
at least one). Far above any real MoE-LoRA (the papers use 160), low enough that every count
fits an int64 and the rounding and repair loops stay short."""


def is_int(value: Any) -> bool:
    """Whether ``value`` is a whole number (an integral type, but not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_alphas(alphas: Sequence[float] | np.ndarray) -> np.ndarray:
    """Layer alphas as a flat float array; refuses empty, non-finite or non-positive values."""
    try:
        arr = np.asarray(alphas, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise AlphaLoRAError(f"Layer alphas must be numbers: {exc}.") from exc
    if arr.ndim != 1:
        raise AlphaLoRAError(f"Layer alphas must be a flat list; got shape {arr.shape}.")
    if arr.size == 0:
        raise AlphaLoRAError("No layer alphas were given; pass one alpha per layer.")
    bad = np.flatnonzero(~np.isfinite(arr) | (arr <= 0)).tolist()
    if bad:
        raise AlphaLoRAError(
            f"Layer alphas must be finite and > 0; layer(s) {bad} have "
            f"{[float(arr[i]) for i in bad]}. Re-run the analysis or drop those layers."
        )
    return arr


def check_beta(beta: float) -> float:
    """β as a float; refuses non-numbers, non-finite and negative values."""
    try:
        b = float(beta)
    except (TypeError, ValueError) as exc:
        raise AlphaLoRAError(f"beta must be a number; got {beta!r}.") from exc
    if not math.isfinite(b) or b < 0:
        raise AlphaLoRAError(
            f"beta must be a finite number ≥ 0 (0 = uniform, 2.5 = paper); got {beta!r}."
        )
    return b


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int ≥ ``minimum``; the message names the parameter ``name``."""
    if not is_int(value):
        raise AlphaLoRAError(f"{name} must be a whole number; got {value!r}.")
    if value < minimum:
        raise AlphaLoRAError(f"{name} must be ≥ {minimum}; got {value}.")
    return int(value)


def check_budget(budget: Any, n_layers: int) -> int:
    """``budget`` as an int between ``n_layers`` (one expert per layer) and
    :data:`MAX_TOTAL_EXPERTS`; the one bound every allocation rule, the CLI and the app use."""
    if not is_int(budget):
        raise AlphaLoRAError(f"budget must be a whole number; got {budget!r}.")
    if budget > MAX_TOTAL_EXPERTS:
        raise AlphaLoRAError(
            f"A budget of {budget:,} experts is above the supported maximum of "
            f"{MAX_TOTAL_EXPERTS:,} in total. Give a budget between {n_layers} (one per layer) "
            f"and {MAX_TOTAL_EXPERTS:,}; the papers use 160 for 32 layers."
        )
    check_bounds(max(1, n_layers), int(budget), 1, None)
    return int(budget)


def check_layers(n_layers: Any) -> int:
    """A layer count as an int between 1 and :data:`MAX_TOTAL_EXPERTS`."""
    if not is_int(n_layers) or n_layers < 1:
        raise AlphaLoRAError(
            f"The layer count (--layers) must be a whole number ≥ 1; got {n_layers!r}."
        )
    n = int(n_layers)
    if n > MAX_TOTAL_EXPERTS:
        raise AlphaLoRAError(
            f"{n:,} layers is above the supported maximum of {MAX_TOTAL_EXPERTS:,} (each layer "
            "needs at least one expert); give the model's real layer count."
        )
    return n


def budget_range(n_layers: int) -> tuple[int, int]:
    """The budgets allowed for ``n_layers`` layers: (one per layer, :data:`MAX_TOTAL_EXPERTS`)."""
    return max(1, int(n_layers)), MAX_TOTAL_EXPERTS


def check_bounds(n_layers: int, budget: int, low: int, high: int | None) -> None:
    """Refuse a budget that cannot give ``n_layers`` layers between ``low`` and ``high`` each."""
    if high is not None and high < low:
        raise AlphaLoRAError(f"--max ({high}) is smaller than the per-layer minimum ({low}).")
    if budget < n_layers * low:
        raise AlphaLoRAError(
            f"A budget of {budget} experts cannot give {n_layers} layers at least {low} each "
            f"(needs ≥ {n_layers * low}). Raise the budget or lower the minimum."
        )
    if high is not None and budget > n_layers * high:
        raise AlphaLoRAError(
            f"A budget of {budget} experts cannot fit in {n_layers} layers with at most {high} "
            f"each (≤ {n_layers * high}). Lower the budget or raise the maximum."
        )
