"""How an allocation was made, kept with every run: mode, β and τ, budget, MoLA shape and layer
score as fields, and one readable label built from them, so that an allocation chosen on the
Allocation page is never shown as "Custom" once it has been trained."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from alphalora.allocation.model import METHOD_DEFAULT, METHOD_OFFICIAL, Allocation
from alphalora.allocation.shapes import SHAPE_SYMBOLS
from alphalora.spectral.layer_scores import check_layer_score, describe_layer_score

#: Keys an explicit ``{"experts", "top_k"}`` training spec may carry to say where it came from.
PROVENANCE_KEYS = (
    "method", "label", "beta", "alphas", "min_experts", "max_experts", "shape", "layer_score",
    "exclude_unreliable",
)  # fmt: skip


def allocation_mode(method: str | None) -> str:
    """The mode of an allocation method: default, official, mola, uniform, custom, lora, …"""
    if method == METHOD_DEFAULT:
        return "default"
    if method == METHOD_OFFICIAL:
        return "official"
    if method and method.startswith("mola"):
        return "mola"
    return method or "custom"


def _shape(method: str | None, given: Any = None) -> str | None:
    if isinstance(given, str) and given:
        return given
    if method and method.startswith("mola-"):
        return method.split("-", 1)[1]
    return None


def with_layer_score(
    allocation: Allocation, layer_score: str | None, exclude_unreliable: bool = False
) -> Allocation:
    """``allocation`` with its label saying which layer score it used, when not the default."""
    method = check_layer_score(layer_score)
    if method == "mean" and not exclude_unreliable:
        return allocation
    note = describe_layer_score(method, exclude_unreliable)
    return dataclasses.replace(allocation, label=f"{allocation.label} · {note}".strip(" ·"))


def allocation_record(
    allocation: Allocation,
    *,
    shape: str | None = None,
    layer_score: str | None = None,
    exclude_unreliable: bool = False,
    label: str | None = None,
) -> dict[str, Any]:
    """What the run row stores: the allocation's JSON plus ``mode``, ``temperature``, ``shape``
    and the layer score, with the best label available."""
    record = allocation.to_dict()
    beta = allocation.beta
    record.update(
        mode=allocation_mode(allocation.method),
        temperature=None if beta is None or beta == 0 else 1.0 / beta,
        shape=_shape(allocation.method, shape),
        layer_score=(
            check_layer_score(layer_score)
            if layer_score is not None or allocation.alphas is not None
            else None
        ),
        exclude_unreliable=bool(exclude_unreliable),
    )
    record["label"] = label or allocation.label or allocation_label(record)
    return record


def allocation_label(record: Mapping[str, Any] | None, method: str | None = None) -> str:
    """A readable name for a stored allocation (a run row's ``allocation``): its own label
    unless that is missing or the uninformative "Custom", else one built from its fields."""
    if not isinstance(record, Mapping):
        return "Plain LoRA" if method == "lora" else "—"
    label = record.get("label")
    if isinstance(label, str) and label and label != "Custom":
        return label
    kind = record.get("method")
    mode = record.get("mode") or allocation_mode(kind if isinstance(kind, str) else None)
    total = record.get("total") or record.get("budget")
    if not total and isinstance(record.get("experts"), list):
        total = sum(int(n) for n in record["experts"])
    beta = record.get("beta")
    if mode in ("default", "official"):
        name = "AlphaLoRA" + (" official" if mode == "official" else "")
        parts = [f"T={total}"] if total else []
        if isinstance(beta, int | float):
            parts.append(f"β={beta:.3g}" if beta else "β=0 (τ=∞)")
        return f"{name} ({', '.join(parts)})" if parts else name
    if mode == "mola":
        shape = _shape(kind if isinstance(kind, str) else None, record.get("shape")) or "?"
        symbol = SHAPE_SYMBOLS.get(shape, "")
        return f"MoLA {symbol} {shape}".replace("  ", " ") + (f" (T={total})" if total else "")
    if mode == "uniform":
        return f"Uniform (T={total})" if total else "Uniform"
    if mode == "lora" or kind == "lora":
        return "Plain LoRA"
    return f"Custom ({total} experts)" if total else "Custom"
