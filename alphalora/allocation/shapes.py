"""Fixed allocations: MoLA's named shapes (Gao et al.), uniform and user-written (custom)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alphalora.allocation.apportion import apportion
from alphalora.allocation.checks import check_budget, check_layers, is_int
from alphalora.allocation.model import Allocation, default_top_k
from alphalora.errors import AlphaLoRAError

# MoLA's named shapes (Gao et al.): symbol, English name → per-group expert digits.
SHAPE_NAMES: dict[str, str] = {
    "triangle": "8642",
    "△": "8642",
    "inverted-triangle": "2468",
    "inverted_triangle": "2468",
    "▽": "2468",
    "hourglass": "8228",
    "⋈": "8228",
    "diamond": "2882",
    "◇": "2882",
    "square": "5555",
    "□": "5555",
}
SHAPE_SYMBOLS: dict[str, str] = {
    "8642": "△",
    "2468": "▽",
    "8228": "⋈",
    "2882": "◇",
    "5555": "□",
    "4444": "□",
    "6532": "△",
    "2356": "▽",
    "6226": "⋈",
    "2662": "◇",
    "8888": "□",
}
PAPER_SHAPES = ("8642", "2468", "8228", "2882", "5555", "4444", "6532", "6226", "2356", "2662")


def _group_sizes(n_layers: int, groups: int) -> list[int]:
    base, extra = divmod(n_layers, groups)
    return [base + (1 if g < extra else 0) for g in range(groups)]


def mola_shape(shape: str, n_layers: int, budget: int | None = None) -> Allocation:
    """MoLA's fixed shape (e.g. "2468", "diamond", "◇") over ``n_layers`` layers.

    The layers are cut into as many consecutive groups as the shape has digits (four for the
    paper's shapes); when they do not divide evenly the *first* groups get one extra layer each
    (30 layers → 8, 8, 7, 7). Each layer gets its group's digit; with ``budget`` the digits are
    rescaled in proportion (largest remainder, ≥ 1 per layer) to total exactly ``budget``.
    """
    if not isinstance(shape, str) or not shape.strip():
        raise AlphaLoRAError(f"A MoLA shape is a digit string such as 2468; got {shape!r}.")
    key = shape.strip()
    digits = SHAPE_NAMES.get(key.lower(), SHAPE_NAMES.get(key, key))
    if not digits.isdigit() or not digits.isascii() or "0" in digits:
        known = ", ".join(sorted(set(SHAPE_NAMES) - {"inverted_triangle"}))
        raise AlphaLoRAError(
            f"Unknown MoLA shape {shape!r}. Use digits 1-9 per layer group (e.g. 8642, 2468, "
            f"8228, 2882, 5555, 4444) or a name: {known}."
        )
    n_layers = check_layers(n_layers)
    if n_layers < len(digits):
        raise AlphaLoRAError(
            f"Shape {digits} has {len(digits)} groups but the model has only {n_layers} layers."
        )
    per_layer: list[int] = []
    for size, d in zip(_group_sizes(n_layers, len(digits)), digits, strict=True):
        per_layer.extend([int(d)] * size)
    symbol = SHAPE_SYMBOLS.get(digits, "")
    label = f"MoLA {symbol} {digits}".replace("  ", " ")
    if budget is None:
        experts = tuple(per_layer)
    else:
        target = check_budget(budget, n_layers)
        experts = apportion(np.asarray(per_layer, dtype=np.float64), target, 1, None)
        label += f" rescaled to {target}"
    return Allocation(
        experts=experts,
        top_k=default_top_k(experts, 2),
        method=f"mola-{digits}",
        budget=sum(experts),
        label=label,
    )


def uniform(n_layers: int, budget: int, top_k: int = 2) -> Allocation:
    """The same number of experts in every layer; a remainder goes to the first layers."""
    n_layers = check_layers(n_layers)
    target = check_budget(budget, n_layers)
    base, extra = divmod(target, n_layers)
    experts = tuple(base + (1 if i < extra else 0) for i in range(n_layers))
    return Allocation(
        experts=experts,
        top_k=default_top_k(experts, top_k),
        method="uniform",
        budget=target,
        label=f"Uniform ({target} over {n_layers} layers)",
    )


def custom(experts: Sequence[int], top_k: int | Sequence[int] = 2) -> Allocation:
    """A user-written allocation: experts per layer and one top-k (or one per layer)."""
    experts = tuple(experts)
    if not experts:
        raise AlphaLoRAError("A custom allocation needs one expert count per layer; got none.")
    bad = [i for i, n in enumerate(experts) if not is_int(n) or n < 1]
    if bad:
        raise AlphaLoRAError(
            f"Every layer needs a whole number ≥ 1 of experts; layer(s) {bad} have "
            f"{[experts[i] for i in bad]}."
        )
    if is_int(top_k):
        ks = default_top_k(experts, int(top_k))  # type: ignore[arg-type]
    else:
        ks = tuple(top_k)  # type: ignore[arg-type]
    return Allocation(
        experts=tuple(int(n) for n in experts),
        top_k=ks,
        method="custom",
        budget=sum(int(n) for n in experts),
        label="Custom",
    )
