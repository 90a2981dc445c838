"""Layer alphas → LoRA experts per layer (docs/method.md §4): AlphaLoRA's reference rule
(``alphalora_official``), the default softmax rule with exact rounding and bounds
(``alphalora_allocation``), and the τ ↔ β conversion of its softmax view."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from alphalora.allocation.apportion import apportion
from alphalora.allocation.checks import (
    check_alphas,
    check_beta,
    check_bounds,
    check_budget,
    check_int,
)
from alphalora.allocation.model import METHOD_DEFAULT, METHOD_OFFICIAL, Allocation, default_top_k
from alphalora.errors import AlphaLoRAError


def temperature_to_beta(tau: float) -> float:
    """Inverse temperature β = 1/τ of the softmax view of the allocation (τ = ∞ ⇔ β = 0)."""
    try:
        t = float(tau)
    except (TypeError, ValueError) as exc:
        raise AlphaLoRAError(f"temperature must be a number; got {tau!r}.") from exc
    if math.isnan(t) or t <= 0:
        raise AlphaLoRAError(f"temperature must be > 0 (use inf for uniform); got {tau!r}.")
    return 0.0 if math.isinf(t) else 1.0 / t


def beta_to_temperature(beta: float) -> float:
    """Temperature τ = 1/β (β = 0 ⇔ τ = ∞)."""
    b = check_beta(beta)
    return math.inf if b == 0 else 1.0 / b


def _official_top_k(experts: Sequence[int]) -> tuple[int, ...]:
    return tuple(0 if n == 0 else (1 if n == 1 else 2) for n in experts)


def alphalora_official(
    alphas: Sequence[float] | np.ndarray, budget: int = 160, beta: float = 2.5
) -> Allocation:
    """AlphaLoRA's reference allocation, reproduced exactly (``expert_number.py``).

    s = α^β, n = np.round(T·s/Σs) (half to even), then the reference repair loop with the
    *unscaled* s, which piles every correction on one layer and can leave a layer with 0 experts
    (kept, flagged in :attr:`Allocation.warnings`). A count below 0 is refused.
    """
    a = check_alphas(alphas)
    b = check_beta(beta)
    target = check_budget(budget, a.size)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        s = np.power(a, b)
        share = s / s.sum()
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(share)) and s.sum() > 0):
        raise AlphaLoRAError(
            f"alpha^beta over- or underflows for beta = {b}; the official formula cannot be "
            "evaluated. Use a smaller beta or the default mode (computed in log space)."
        )
    n = np.round(share * target).astype(np.int64)
    # Each pass moves Σn by exactly one towards T, so |Σn − T| passes always finish the loop.
    for _ in range(abs(int(n.sum()) - target)):
        difference = target - int(n.sum())
        if difference > 0:
            n[int(np.argmin(s - n))] += 1
        elif difference < 0:
            n[int(np.argmax(s - n))] -= 1
    negative = np.flatnonzero(n < 0).tolist()
    if negative:
        raise AlphaLoRAError(
            f"The official AlphaLoRA formula gives a negative expert count to layer(s) "
            f"{negative} for budget {target}, beta {b}. Use the default mode instead."
        )
    experts = tuple(int(x) for x in n)
    zero = [i for i, x in enumerate(experts) if x == 0]
    label = f"AlphaLoRA official (T={target}, β={b:.3g})"
    if zero:
        label += f" — layer(s) {zero} got 0 experts"
    return Allocation(
        experts=experts,
        top_k=_official_top_k(experts),
        method=METHOD_OFFICIAL,
        budget=target,
        beta=b,
        alphas=tuple(float(x) for x in a),
        label=label,
    )


def _softmax_weights(log_scores: np.ndarray) -> np.ndarray:
    z = log_scores - log_scores.max()
    e = np.exp(z)
    return e / e.sum()


def alphalora_allocation(
    alphas: Sequence[float] | np.ndarray,
    budget: int,
    beta: float = 2.5,
    *,
    min_experts: int = 1,
    max_experts: int | None = None,
    top_k: int = 2,
    min_at_least_top_k: bool = False,
) -> Allocation:
    """AlphaLoRA with a corrected rounding: n_i = T·softmax(β·ln α)_i, largest remainder.

    Per-layer bounds are honoured by water-filling (layers at a bound are pinned and the rest is
    shared in proportion again), so Σn = T exactly and no layer ever gets 0 experts.
    """
    a = check_alphas(alphas)
    b = check_beta(beta)
    target = check_budget(budget, a.size)
    k = check_int("top_k", top_k, 1)
    low = check_int("min_experts", min_experts, 1)
    if min_at_least_top_k:
        low = max(low, k)
    high = None if max_experts is None else check_int("max_experts", max_experts, 1)
    check_bounds(a.size, target, low, high)
    # ties (β = 0 and T not divisible by L) go to the larger α, keeping n monotone in α
    experts = apportion(_softmax_weights(b * np.log(a)), target, low, high, tiebreak=a)
    bounds = f", min {low}" + ("" if high is None else f", max {high}")
    return Allocation(
        experts=experts,
        top_k=default_top_k(experts, k),
        method=METHOD_DEFAULT,
        budget=target,
        beta=b,
        alphas=tuple(float(x) for x in a),
        min_experts=low,
        max_experts=high,
        label=f"AlphaLoRA (T={target}, β={b:.3g}{bounds})",
    )
