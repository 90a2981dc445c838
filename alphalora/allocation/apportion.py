"""Integer apportionment: split a total into whole numbers in proportion to weights, each inside
[low, high], summing to the total exactly (water-filling, then largest remainder)."""

from __future__ import annotations

import math

import numpy as np

from alphalora.errors import AlphaLoRAError


def _water_fill(weights: np.ndarray, total: int, low: int, high: float) -> np.ndarray:
    """Real-valued shares x_i ∝ w_i with low ≤ x_i ≤ high and Σx = total (box-capped)."""
    n = weights.size
    x = np.zeros(n)
    state = np.zeros(n, dtype=np.int8)  # 0 free, -1 pinned at low, +1 pinned at high
    for _ in range(n + 1):
        free = state == 0
        n_high = np.count_nonzero(state == 1)  # only finite caps are ever pinned
        rest = total - low * np.count_nonzero(state == -1) - (high * n_high if n_high else 0)
        w = weights[free]
        if w.sum() <= 0:  # every free weight underflowed: share the rest evenly
            w = np.ones_like(w)
        x[free] = rest * w / w.sum()
        x[state == -1] = low
        x[state == 1] = high
        below = free & (x < low)
        above = free & (x > high)
        if not below.any() and not above.any():
            break
        deficit = float(np.sum(low - x[below]) - np.sum(x[above] - high))
        if deficit >= 0:
            state[below] = -1
        if deficit <= 0:
            state[above] = 1
    return np.clip(x, low, high)


def _largest_remainder(
    x: np.ndarray, total: int, low: int, high: float, tiebreak: np.ndarray
) -> np.ndarray:
    """Round shares to integers summing to ``total`` (Hamilton), staying inside [low, high];
    equal remainders go to the larger ``tiebreak`` first, then to the lower index."""
    n = np.clip(np.floor(x + 1e-9), low, high).astype(np.int64)
    frac = x - n
    order = sorted(range(x.size), key=lambda i: (-frac[i], -tiebreak[i], i))
    while int(n.sum()) < total:
        progressed = False
        for i in order:
            if int(n.sum()) >= total:
                break
            if n[i] < high:
                n[i] += 1
                progressed = True
        if not progressed:  # pragma: no cover - excluded by the budget checks
            raise AlphaLoRAError("Cannot place every expert within --max; raise --max.")
    while int(n.sum()) > total:
        progressed = False
        for i in reversed(order):
            if int(n.sum()) <= total:
                break
            if n[i] > low:
                n[i] -= 1
                progressed = True
        if not progressed:  # pragma: no cover - excluded by the budget checks
            raise AlphaLoRAError("Cannot keep every layer at its minimum; lower --min.")
    return n


def apportion(
    weights: np.ndarray,
    total: int,
    low: int,
    high: int | None,
    tiebreak: np.ndarray | None = None,
) -> tuple[int, ...]:
    """Integers ∝ weights, each in [low, high], summing to ``total`` exactly."""
    cap = math.inf if high is None else float(high)
    x = _water_fill(weights, total, low, cap)
    order_key = weights if tiebreak is None else tiebreak
    return tuple(int(v) for v in _largest_remainder(x, total, low, cap, order_key))
