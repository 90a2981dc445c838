"""The :class:`Allocation` result type: experts and top-k per layer with how they were obtained,
immutable and serialised to a small, versioned JSON document."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from alphalora.allocation.checks import MAX_TOTAL_EXPERTS, check_int, is_int
from alphalora.errors import AlphaLoRAError

SCHEMA_VERSION = 1

METHOD_OFFICIAL = "alphalora-official"
METHOD_DEFAULT = "alphalora"


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
        bad = [i for i, n in enumerate(experts) if not is_int(n)]
        if bad:
            raise AlphaLoRAError(
                f"Expert counts must be whole numbers; layer(s) {bad} are not "
                f"({[experts[i] for i in bad]})."
            )
        experts = tuple(int(n) for n in experts)
        if sum(experts) > MAX_TOTAL_EXPERTS:
            raise AlphaLoRAError(
                f"This allocation holds {sum(experts):,} experts, above the supported maximum "
                f"of {MAX_TOTAL_EXPERTS:,} in total. Give fewer experts per layer."
            )
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
        if any(not is_int(k) for k in top_k):
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
        if not is_int(self.budget) or int(self.budget) != sum(experts):
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
        if not is_int(version) or version != SCHEMA_VERSION:
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
            bad = [i for i, v in enumerate(seq) if not is_int(v)]
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
            if value is not None and not is_int(value):
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


def default_top_k(experts: Sequence[int], k: int = 2) -> tuple[int, ...]:
    """Per-layer top-k: ``k``, but never more than the layer's experts (1 where n = 1, 0 at 0)."""
    k = check_int("top_k", k, 1)
    return tuple(min(k, int(n)) for n in experts)
