"""Layer alphas → LoRA experts per layer (METHOD.md §4), MoLA's fixed shapes, parameter counts.

Everything here is a pure function over numbers; the result is an immutable :class:`Allocation`
that serialises to a small, versioned JSON document.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alphalora.errors import AlphaLoRAError

SCHEMA_VERSION = 1

METHOD_OFFICIAL = "alphalora-official"
METHOD_DEFAULT = "alphalora"

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

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


# --------------------------------------------------------------------------- the result type


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class Allocation:
    """Experts and top-k per layer, with how they were obtained (method, budget, β, alphas)."""

    experts: tuple[int, ...]
    top_k: tuple[int, ...]
    method: str
    budget: int
    beta: float | None = None
    alphas: tuple[float, ...] | None = None
    min_experts: int | None = None
    max_experts: int | None = None
    label: str = ""

    def __post_init__(self) -> None:
        experts = tuple(self.experts)
        top_k = tuple(self.top_k)
        if not experts:
            raise AlphaLoRAError("An allocation needs at least one layer; got an empty list.")
        bad = [i for i, n in enumerate(experts) if not _is_int(n)]
        if bad:
            raise AlphaLoRAError(
                f"Expert counts must be whole numbers; layer(s) {bad} are not "
                f"({[experts[i] for i in bad]})."
            )
        experts = tuple(int(n) for n in experts)
        allow_zero = self.method == METHOD_OFFICIAL
        low = [i for i, n in enumerate(experts) if n < (0 if allow_zero else 1)]
        if low:
            raise AlphaLoRAError(
                f"Every layer needs at least 1 expert; layer(s) {low} have "
                f"{[experts[i] for i in low]}."
            )
        if len(top_k) != len(experts):
            raise AlphaLoRAError(
                f"top_k has {len(top_k)} entries but experts has {len(experts)}; "
                "give one top-k per layer."
            )
        if any(not _is_int(k) for k in top_k):
            raise AlphaLoRAError(f"top_k values must be whole numbers; got {list(top_k)}.")
        top_k = tuple(int(k) for k in top_k)
        wrong = [
            i
            for i, (n, k) in enumerate(zip(experts, top_k, strict=True))
            if (n == 0 and k != 0) or (n > 0 and not 1 <= k <= n)
        ]
        if wrong:
            raise AlphaLoRAError(
                f"top_k must be between 1 and the layer's expert count; layer(s) {wrong} have "
                f"top_k {[top_k[i] for i in wrong]} for {[experts[i] for i in wrong]} experts."
            )
        if not _is_int(self.budget) or int(self.budget) != sum(experts):
            raise AlphaLoRAError(
                f"The budget ({self.budget}) must equal the total number of experts "
                f"({sum(experts)})."
            )
        alphas = self.alphas
        if alphas is not None:
            alphas = tuple(float(a) for a in alphas)
            if len(alphas) != len(experts):
                raise AlphaLoRAError(
                    f"alphas has {len(alphas)} entries but experts has {len(experts)}."
                )
        beta = None if self.beta is None else float(self.beta)
        if beta is not None and not (math.isfinite(beta) and beta >= 0):
            raise AlphaLoRAError(f"beta must be a finite number ≥ 0; got {self.beta}.")
        object.__setattr__(self, "experts", experts)
        object.__setattr__(self, "top_k", top_k)
        object.__setattr__(self, "budget", int(self.budget))
        object.__setattr__(self, "alphas", alphas)
        object.__setattr__(self, "beta", beta)

    @property
    def n_layers(self) -> int:
        """Number of transformer layers the allocation covers."""
        return len(self.experts)

    @property
    def total(self) -> int:
        """Total number of experts (Σ over layers)."""
        return sum(self.experts)

    @property
    def warnings(self) -> list[str]:
        """Problems a user should see (only the official mode can produce them)."""
        zero = [i for i, n in enumerate(self.experts) if n == 0]
        if not zero:
            return []
        return [
            f"layer(s) {zero} received 0 experts (a known defect of the reference repair loop); "
            "these layers get no adapter. Use the default mode to guarantee ≥ 1 per layer."
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (with ``schema_version``) that :meth:`from_dict` reads back."""
        return {
            "schema_version": SCHEMA_VERSION,
            "method": self.method,
            "label": self.label,
            "n_layers": self.n_layers,
            "budget": self.budget,
            "total": self.total,
            "beta": self.beta,
            "min_experts": self.min_experts,
            "max_experts": self.max_experts,
            "experts": list(self.experts),
            "top_k": list(self.top_k),
            "alphas": None if self.alphas is None else list(self.alphas),
            "warnings": self.warnings,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Allocation:
        """Rebuild an allocation from :meth:`to_dict` output, checking every field."""
        if not isinstance(d, Mapping):
            raise AlphaLoRAError(f"An allocation must be a JSON object; got {type(d).__name__}.")
        version = d.get("schema_version")
        if version is None:
            raise AlphaLoRAError(
                "This file has no schema_version: it is not an AlphaLoRA allocation file."
            )
        if not _is_int(version) or version != SCHEMA_VERSION:
            raise AlphaLoRAError(
                f"Unsupported allocation schema_version {version!r}; this version of AlphaLoRA "
                f"reads version {SCHEMA_VERSION}. Re-create the allocation with this version."
            )
        for key in ("experts", "top_k", "method"):
            if key not in d:
                raise AlphaLoRAError(f"The allocation is missing the field {key!r}.")
        experts, top_k = d["experts"], d["top_k"]
        for key, seq in (("experts", experts), ("top_k", top_k)):
            if not isinstance(seq, list | tuple):
                raise AlphaLoRAError(f"{key} must be a list of whole numbers; got {seq!r}.")
            bad = [i for i, v in enumerate(seq) if not _is_int(v)]
            if bad:
                raise AlphaLoRAError(
                    f"{key} must contain whole numbers; position(s) {bad} hold "
                    f"{[seq[i] for i in bad]}."
                )
        if not isinstance(d["method"], str):
            raise AlphaLoRAError(f"method must be a string; got {d['method']!r}.")
        alphas = d.get("alphas")
        if alphas is not None:
            if not isinstance(alphas, list | tuple) or not all(
                isinstance(a, numbers.Real) and not isinstance(a, bool) for a in alphas
            ):
                raise AlphaLoRAError("alphas must be a list of numbers or null.")
        for key in ("min_experts", "max_experts"):
            value = d.get(key)
            if value is not None and not _is_int(value):
                raise AlphaLoRAError(f"{key} must be a whole number or null; got {value!r}.")
        beta = d.get("beta")
        if beta is not None and (not isinstance(beta, numbers.Real) or isinstance(beta, bool)):
            raise AlphaLoRAError(f"beta must be a number or null; got {beta!r}.")
        budget = d.get("budget", sum(experts))
        return cls(
            experts=tuple(experts),
            top_k=tuple(top_k),
            method=d["method"],
            budget=budget,
            beta=beta,
            alphas=None if alphas is None else tuple(alphas),
            min_experts=d.get("min_experts"),
            max_experts=d.get("max_experts"),
            label=str(d.get("label", "")),
        )

    def to_json(self) -> str:
        """Serialise as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Allocation:
        """Parse JSON text written by :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AlphaLoRAError(f"The allocation file is not valid JSON: {exc}.") from exc
        return cls.from_dict(data)


# --------------------------------------------------------------------------- input checks


def _check_alphas(alphas: Sequence[float] | np.ndarray) -> np.ndarray:
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


def _check_beta(beta: float) -> float:
    try:
        b = float(beta)
    except (TypeError, ValueError) as exc:
        raise AlphaLoRAError(f"beta must be a number; got {beta!r}.") from exc
    if not math.isfinite(b) or b < 0:
        raise AlphaLoRAError(
            f"beta must be a finite number ≥ 0 (0 = uniform, 2.5 = paper); got {beta!r}."
        )
    return b


def _check_int(name: str, value: Any, minimum: int) -> int:
    if not _is_int(value):
        raise AlphaLoRAError(f"{name} must be a whole number; got {value!r}.")
    if value < minimum:
        raise AlphaLoRAError(f"{name} must be ≥ {minimum}; got {value}.")
    return int(value)


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
    b = _check_beta(beta)
    return math.inf if b == 0 else 1.0 / b


def default_top_k(experts: Sequence[int], k: int = 2) -> tuple[int, ...]:
    """Per-layer top-k: ``k``, but never more than the layer's experts (1 where n = 1, 0 at 0)."""
    k = _check_int("top_k", k, 1)
    return tuple(min(k, int(n)) for n in experts)


# --------------------------------------------------------------------------- allocation maths


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
    a = _check_alphas(alphas)
    b = _check_beta(beta)
    target = _check_int("budget", budget, 1)
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
    label = f"AlphaLoRA official (T={target}, β={b:g})"
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


def _apportion(
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


def _check_bounds(n_layers: int, budget: int, low: int, high: int | None) -> None:
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
    a = _check_alphas(alphas)
    b = _check_beta(beta)
    target = _check_int("budget", budget, 1)
    k = _check_int("top_k", top_k, 1)
    low = _check_int("min_experts", min_experts, 1)
    if min_at_least_top_k:
        low = max(low, k)
    high = None if max_experts is None else _check_int("max_experts", max_experts, 1)
    _check_bounds(a.size, target, low, high)
    # ties (β = 0 and T not divisible by L) go to the larger α, keeping n monotone in α
    experts = _apportion(_softmax_weights(b * np.log(a)), target, low, high, tiebreak=a)
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
        label=f"AlphaLoRA (T={target}, β={b:g}{bounds})",
    )


# --------------------------------------------------------------------------- fixed shapes


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
    n_layers = _check_int("n_layers", n_layers, 1)
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
        target = _check_int("budget", budget, 1)
        _check_bounds(n_layers, target, 1, None)
        experts = _apportion(np.asarray(per_layer, dtype=np.float64), target, 1, None)
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
    n_layers = _check_int("n_layers", n_layers, 1)
    target = _check_int("budget", budget, 1)
    _check_bounds(n_layers, target, 1, None)
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
    bad = [i for i, n in enumerate(experts) if not _is_int(n) or n < 1]
    if bad:
        raise AlphaLoRAError(
            f"Every layer needs a whole number ≥ 1 of experts; layer(s) {bad} have "
            f"{[experts[i] for i in bad]}."
        )
    if _is_int(top_k):
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


# --------------------------------------------------------------------------- parameter counts


def lora_parameters_per_expert(
    module_shapes: Mapping[str, tuple[int, int]], rank: int = 8, include_router: bool = True
) -> int:
    """Trainable parameters one expert adds to one layer: r·(d_in + d_out) per adapted module,
    plus the expert's router row (d_in) per module when routers are counted."""
    rank = _check_int("rank", rank, 1)
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


# --------------------------------------------------------------------------- analyze tables


def layer_alphas_from_table(df: Any) -> list[float]:
    """Mean alpha per layer from an ``analyze`` table (one row per matrix), layers in order.

    Rows without a layer (embeddings, lm_head) are skipped and non-finite alphas ignored; every
    layer between the first and the last must have at least one finite alpha.
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        df = pd.DataFrame(df)
    missing = [c for c in ("layer", "alpha") if c not in df.columns]
    if missing:
        raise AlphaLoRAError(
            f"The analysis table lacks column(s) {missing}; expected an `analyze` output with "
            "one row per matrix and columns name, layer, kind, alpha."
        )
    layer = pd.to_numeric(df["layer"], errors="coerce")
    alpha = pd.to_numeric(df["alpha"], errors="coerce").astype(float)
    rows = layer.notna()
    if not rows.any():
        raise AlphaLoRAError("The analysis table has no rows with a layer index.")
    layer = layer[rows]
    if not np.all(np.equal(np.mod(layer.to_numpy(dtype=float), 1), 0)):
        raise AlphaLoRAError("The analysis table's layer column must hold whole numbers.")
    layer = layer.astype(np.int64)
    alpha = alpha[rows].where(np.isfinite(alpha[rows]))
    means = alpha.groupby(layer).mean().sort_index()
    expected = range(int(means.index.min()), int(means.index.max()) + 1)
    gaps = sorted(set(expected) - set(int(i) for i in means.index))
    if gaps:
        raise AlphaLoRAError(f"The analysis table has no rows for layer(s) {gaps}.")
    empty = [int(i) for i, v in means.items() if not np.isfinite(v)]
    if empty:
        raise AlphaLoRAError(
            f"Layer(s) {empty} have no finite alpha in the analysis table; re-run the analysis "
            "for them (or check the fit warnings)."
        )
    return [float(v) for v in means.to_numpy()]
