"""Pure helpers for the app's trustworthy comparisons: the provenance a launched allocation
carries, equal-parameter plain-LoRA baselines of a MoE-LoRA allocation, and plain sentences for
paired tests. No Streamlit, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from alphalora.allocation.model import Allocation
from alphalora.allocation.params import LLAMA_TARGETS, trainable_parameters
from alphalora.allocation.ranks import (
    RankAllocation,
    llama_module_names,
    matching_rank_budget,
    matching_uniform_rank,
    peft_lora_config,
)
from alphalora.runs.compare import wilson_interval
from ui.state import allocation_spec

LAYER_SCORE_LABELS = {
    "mean": "mean α (AlphaLoRA)",
    "median": "median α",
    "trimmed": "trimmed mean α (drop largest and smallest)",
}


def training_spec(allocation: Allocation, stored: Mapping[str, Any] | None = None) -> dict:
    """The explicit ``allocation`` of a training config for ``allocation``, carrying how it was
    made (method, label, β, layer score, MoLA shape) so the run row is not labelled "Custom"."""
    spec = allocation_spec(allocation)
    if allocation.beta is not None:
        spec["beta"] = allocation.beta
    if allocation.alphas is not None:
        spec["alphas"] = list(allocation.alphas)
    stored = stored or {}
    for key in ("layer_score", "exclude_unreliable", "shape"):
        if stored.get(key) is not None:
            spec[key] = stored[key]
    return spec


def module_names_from_matrices(
    matrices: pd.DataFrame | None, n_layers: int, targets: Sequence[str] = LLAMA_TARGETS
) -> list[str]:
    """Adapted module names (layer-major, ``targets`` order) from an analysis table, else the
    Llama layout's names."""
    if matrices is not None and {"name", "layer", "kind"} <= set(matrices.columns):
        block = matrices[matrices["layer"].notna()]
        names = {
            (int(layer), str(kind)): str(name).removesuffix(".weight")
            for name, layer, kind in zip(block["name"], block["layer"], block["kind"], strict=True)
        }
        wanted = [(i, t) for i in range(n_layers) for t in targets]
        if all(k in names for k in wanted):
            return [names[k] for k in wanted]
    return llama_module_names(n_layers, targets)


@dataclass(frozen=True)
class EqualParameterPlan:
    """Plain-LoRA baselines sized to a MoE-LoRA allocation's trainable parameters."""

    moe_parameters: int
    ranks: RankAllocation
    ranks_parameters: int
    lora_config: dict[str, Any]
    uniform_rank: int
    uniform_parameters: int

    def note(self) -> str:
        """How close each baseline comes to the MoE-LoRA's parameter count."""

        def gap(p: int) -> str:
            return f"{(p - self.moe_parameters) / self.moe_parameters:+.2%}"

        return (
            f"Equal parameters: MoE-LoRA {self.moe_parameters / 1e6:,.3f} M; LoRA ranks by α "
            f"(total rank {self.ranks.budget}) {self.ranks_parameters / 1e6:,.3f} M "
            f"({gap(self.ranks_parameters)}); uniform LoRA r = {self.uniform_rank} "
            f"{self.uniform_parameters / 1e6:,.3f} M ({gap(self.uniform_parameters)})."
        )


def equal_parameter_plan(
    allocation: Allocation,
    alphas: Sequence[float],
    module_shapes: Mapping[str, tuple[int, int]],
    module_names: Sequence[str],
    *,
    rank: int = 8,
    beta: float | None = None,
    lora_alpha: float = 16.0,
    dropout: float = 0.05,
) -> EqualParameterPlan:
    """Rank-allocated and uniform plain-LoRA baselines whose parameter counts come closest to
    ``allocation`` as a MoE-LoRA of rank ``rank`` (routers included)."""
    targets = [t for t in LLAMA_TARGETS if t in module_shapes]
    shapes = {t: module_shapes[t] for t in targets}
    moe = trainable_parameters(allocation, shapes, rank=rank)
    b = allocation.beta if beta is None else beta
    ranks = matching_rank_budget(moe, alphas, shapes, 2.5 if b is None else b, targets=targets)
    uniform_rank, uniform_params = matching_uniform_rank(moe, len(alphas), shapes, targets)
    config = peft_lora_config(ranks, module_names, lora_alpha=lora_alpha, dropout=dropout)
    return EqualParameterPlan(
        moe_parameters=moe,
        ranks=ranks,
        ranks_parameters=ranks.parameters(shapes),
        lora_config=config,
        uniform_rank=uniform_rank,
        uniform_parameters=uniform_params,
    )


def pair_messages(pairs: pd.DataFrame) -> list[tuple[str, str]]:
    """(kind, sentence) per compared pair: "info" when the difference is within noise or the
    runs cannot be paired, "success" when the paired test separates them."""
    out = []
    for row in pairs.itertuples():
        noise = getattr(row, "within_noise", None)
        kind = "success" if noise is False else "info"
        out.append((kind, str(row.verdict)))
    return out


def _wilson(accuracy: Any, n: Any) -> tuple[float | None, float | None]:
    if not isinstance(accuracy, int | float) or pd.isna(accuracy) or not n or pd.isna(n):
        return None, None
    return wilson_interval(round(float(accuracy) * int(n)), int(n))


def add_intervals(table: pd.DataFrame, intervals: pd.DataFrame) -> pd.DataFrame:
    """The Runs page's side-by-side table with each run's 95 % interval and parameters relative
    to the first run (for equal-parameter comparisons)."""
    if table.empty:
        return table
    extra = intervals.set_index("run_id")
    out = table.copy()
    out["allocation"] = [extra.at[r, "allocation"] for r in out["run_id"]]
    out["accuracy_after_low"] = [extra.at[r, "accuracy_low"] for r in out["run_id"]]
    out["accuracy_after_high"] = [extra.at[r, "accuracy_high"] for r in out["run_id"]]
    out["n_eval"] = [extra.at[r, "n_eval"] for r in out["run_id"]]
    before = [_wilson(a, n) for a, n in zip(out["accuracy_before"], out["n_eval"], strict=True)]
    out["accuracy_before_low"] = [b[0] for b in before]
    out["accuracy_before_high"] = [b[1] for b in before]
    params = pd.to_numeric(out["params_trainable"], errors="coerce")
    first = params.dropna().iloc[0] if params.notna().any() else None
    out["params_vs_first"] = params / first - 1 if first else None
    return out
