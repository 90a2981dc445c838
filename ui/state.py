"""Pure helpers shared by the app's pages: model choices, allocation modes, comparison tables,
and the small random-matrix maths of the Learn page. No Streamlit, no I/O."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from alphalora.allocation.model import METHOD_OFFICIAL, Allocation
from alphalora.allocation.params import trainable_parameters
from alphalora.allocation.shapes import mola_shape, uniform
from alphalora.allocation.softmax_rules import alphalora_allocation, alphalora_official
from alphalora.errors import AlphaLoRAError
from alphalora.finetune.preflight import module_shapes_from_records

# --------------------------------------------------------------------------- model choices

KIND_EMBEDDED = "embedded"
KIND_PAPER = "paper"
KIND_CUSTOM = "custom"
PAPER_LABEL = "Paper: Llama-2-7B (published alphas)"
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ModelChoice:
    """What the user picked on the home page: the embedded model, the paper preset or a
    hub id / local folder, with the fit mode and device of its analysis."""

    kind: str = KIND_EMBEDDED
    ref: str = "embedded"
    fit: str = "hill-peak"
    device: str = "auto"

    @property
    def is_paper(self) -> bool:
        """True for the paper preset (published alphas, no weights to analyse)."""
        return self.kind == KIND_PAPER

    def key(self) -> tuple[str, str, str]:
        """What identifies an analysis: model reference, fit mode and device."""
        return (self.ref, self.fit, self.device)

    def label(self) -> str:
        """A short human-readable name."""
        if self.is_paper:
            return PAPER_LABEL
        if self.kind == KIND_EMBEDDED:
            return "Embedded: SmolLM2-135M-Instruct"
        return self.ref


def custom_choice(text: str, fit: str, device: str) -> ModelChoice:
    """A hub id or folder typed by the user, checked for emptiness only (the library
    resolves and validates it when it analyses)."""
    ref = (text or "").strip()
    if not ref:
        raise AlphaLoRAError(
            "Type a Hugging Face hub id (org/name) or the path of a local model folder first."
        )
    return ModelChoice(KIND_CUSTOM, ref, fit, device)


# --------------------------------------------------------------------------- allocation

MODE_DEFAULT = "AlphaLoRA (default)"
MODE_OFFICIAL = "AlphaLoRA official"
MODE_MOLA = "MoLA shape"
MODE_UNIFORM = "Uniform"
ALLOCATION_MODES = (MODE_DEFAULT, MODE_OFFICIAL, MODE_MOLA, MODE_UNIFORM)
MOLA_SHAPES = ("8642", "2468", "8228", "2882", "5555", "4444", "6532", "6226", "2356", "2662")
PAPER_BETA = 2.5
PAPER_EXPERTS_PER_LAYER = 5  # T = 160 over Llama-2-7B's 32 layers


def paper_defaults(n_layers: int) -> tuple[int, float]:
    """The paper's budget and β: T = 160 for 32 layers (5 per layer otherwise), β = 2.5."""
    if n_layers < 1:
        raise AlphaLoRAError(f"A model needs at least one layer; got {n_layers}.")
    budget = 160 if n_layers == 32 else PAPER_EXPERTS_PER_LAYER * n_layers
    return budget, PAPER_BETA


def build_allocation(
    mode: str,
    alphas: Sequence[float],
    budget: int,
    beta: float,
    *,
    min_experts: int = 1,
    max_experts: int | None = None,
    shape: str = "8642",
    top_k: int = 2,
) -> Allocation:
    """The allocation the Allocation page shows for its controls (one of
    :data:`ALLOCATION_MODES`); MoLA shapes are rescaled to the same budget."""
    n = len(alphas)
    if mode == MODE_DEFAULT:
        return alphalora_allocation(
            alphas, budget, beta, min_experts=min_experts, max_experts=max_experts, top_k=top_k
        )
    if mode == MODE_OFFICIAL:
        return alphalora_official(alphas, budget, beta)
    if mode == MODE_MOLA:
        return mola_shape(shape, n, budget=budget)
    if mode == MODE_UNIFORM:
        return uniform(n, budget, top_k=top_k)
    raise AlphaLoRAError(f"Unknown allocation mode {mode!r}; choose one of {ALLOCATION_MODES}.")


def comparison_allocations(n_layers: int, budget: int, shape: str) -> dict[str, Allocation]:
    """Uniform and one MoLA shape at the same total, to draw against the current allocation."""
    return {
        f"Uniform ({budget})": uniform(n_layers, budget),
        f"MoLA {shape} (rescaled to {budget})": mola_shape(shape, n_layers, budget=budget),
    }


def module_shapes_from_matrices(matrices: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) per module kind from an analysis' per-matrix table (rows = out,
    cols = in), taken from the first layer that has each kind; Llama kinds first."""
    block = matrices[matrices["layer"].notna()]
    if block.empty:
        raise AlphaLoRAError("The analysis has no transformer-block matrices to size adapters on.")
    records = zip(block["layer"], block["kind"], block["rows"], block["cols"], strict=True)
    return module_shapes_from_records(records)


def parameters_table(
    allocations: Mapping[str, Allocation],
    module_shapes: Mapping[str, tuple[int, int]],
    rank: int = 8,
) -> pd.DataFrame:
    """One row per allocation: total experts, min/max per layer and trainable parameters
    (LoRA A/B of rank ``rank`` on every module plus the router rows)."""
    rows = []
    for label, alloc in allocations.items():
        rows.append(
            {
                "allocation": label,
                "total_experts": alloc.total,
                "min_per_layer": min(alloc.experts),
                "max_per_layer": max(alloc.experts),
                "trainable_parameters": trainable_parameters(alloc, module_shapes, rank=rank),
            }
        )
    return pd.DataFrame(rows)


def allocation_table(allocation: Allocation, alphas: Sequence[float] | None = None) -> pd.DataFrame:
    """Per-layer table of an allocation (layer, alpha, experts, top_k) for display/CSV."""
    df = pd.DataFrame(
        {
            "layer": range(allocation.n_layers),
            "experts": allocation.experts,
            "top_k": allocation.top_k,
        }
    )
    if alphas is not None and len(alphas) == allocation.n_layers:
        df.insert(1, "alpha", [float(a) for a in alphas])
    return df


def check_layers(allocation: Allocation, n_layers: int, what: str = "the model") -> None:
    """Raise when an allocation was made for a different number of layers."""
    if allocation.n_layers != n_layers:
        raise AlphaLoRAError(
            f"This allocation has {allocation.n_layers} layers but {what} has {n_layers}. "
            "Make or import an allocation for this model on the Allocation page."
        )


def allocation_spec(allocation: Allocation) -> dict[str, Any]:
    """The ``{"experts", "top_k"}`` dict a training config takes (plus provenance)."""
    spec: dict[str, Any] = {
        "experts": list(allocation.experts),
        "top_k": list(allocation.top_k),
        "method": allocation.method,
        "label": allocation.label,
    }
    if allocation.method == METHOD_OFFICIAL and 0 in allocation.experts:
        raise AlphaLoRAError(
            "This official-mode allocation gives some layers 0 experts, which cannot be "
            "trained. Use the default AlphaLoRA mode (≥ 1 expert per layer) for fine-tuning."
        )
    return spec


# --------------------------------------------------------------------------- runs


def runs_comparison_table(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Side-by-side figures of several runs (from ``RunStore.get_run``): status, accuracies,
    trainable parameters, time per step and experts."""
    rows = []
    for run in runs:
        summary = run.get("summary") or {}
        config = run.get("config") or {}
        alloc = run.get("allocation") or {}
        experts = alloc.get("experts") if isinstance(alloc, Mapping) else None
        label = run.get("name") or run.get("run_id")
        rows.append(
            {
                "run_id": run.get("run_id"),
                "label": str(label),
                "status": run.get("status"),
                "method": config.get("method") if isinstance(config, Mapping) else None,
                "allocation": (alloc.get("label") or alloc.get("method"))
                if isinstance(alloc, Mapping)
                else None,
                "total_experts": sum(experts) if isinstance(experts, list) else None,
                "accuracy_before": summary.get("accuracy_before"),
                "accuracy_after": summary.get("accuracy_after"),
                "params_trainable": run.get("params_trainable"),
                "seconds_per_step": run.get("seconds_per_step"),
                "steps": config.get("steps") if isinstance(config, Mapping) else None,
            }
        )
    df = pd.DataFrame(rows)
    if not df.empty:
        df["accuracy_gain"] = pd.to_numeric(df["accuracy_after"], errors="coerce") - pd.to_numeric(
            df["accuracy_before"], errors="coerce"
        )
    return df


def latest_router_load(metrics: pd.DataFrame) -> tuple[int | None, Any]:
    """(step, router_load) of the latest row that logged a router load (eval first)."""
    if metrics is None or metrics.empty or "router_load" not in metrics.columns:
        return None, None
    df = metrics[metrics["router_load"].map(lambda v: isinstance(v, list | dict) and len(v) > 0)]
    if df.empty:
        return None, None
    evals = df[df["split"] == "eval"]
    pick = (evals if not evals.empty else df).sort_values("step").iloc[-1]
    return int(pick["step"]), pick["router_load"]


# --------------------------------------------------------------------------- Learn page maths

MATRIX_KINDS = ("gaussian", "student-t", "correlated")


def random_matrix(
    kind: str, n_rows: int, n_cols: int, *, tail: float = 3.0, seed: int = 0
) -> np.ndarray:
    """A demo weight matrix: i.i.d. Gaussian (random, untrained), i.i.d. Student-t with
    ``tail`` degrees of freedom (heavy-tailed entries), or Gaussian with power-law column
    correlations of exponent ``tail`` (structured, like a trained layer)."""
    if kind not in MATRIX_KINDS:
        raise AlphaLoRAError(f"Unknown matrix kind {kind!r}; choose one of {MATRIX_KINDS}.")
    if n_rows < 2 or n_cols < 2:
        raise AlphaLoRAError("A demo matrix needs at least 2 rows and 2 columns.")
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return rng.standard_normal((n_rows, n_cols))
    if kind == "student-t":
        if tail <= 0:
            raise AlphaLoRAError(f"Degrees of freedom must be > 0; got {tail}.")
        return rng.standard_t(tail, size=(n_rows, n_cols))
    # Column variances falling off as k^(−tail): the ESD of G·diag(√c) has a power-law tail
    # (rotating the columns would not change the spectrum, so none is applied).
    return rng.standard_normal((n_rows, n_cols)) * np.sqrt(_power_law_variances(n_cols, tail))


def _power_law_variances(n: int, exponent: float) -> np.ndarray:
    """n variances ∝ k^(−exponent), k = 1..n, normalised to mean 1."""
    c = np.arange(1, n + 1, dtype=np.float64) ** (-float(exponent))
    return c * (n / float(np.sum(c)))


def esd(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of WᵀW (squared singular values, ascending, no 1/N), from the Gram matrix
    of the smaller side in float64 (docs/method.md §2's fast path; an SVD gives the same α and is
    far slower when BLAS threads compete for a busy CPU)."""
    w = np.asarray(w, dtype=np.float64)
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    return np.clip(np.linalg.eigvalsh(gram), 0.0, None)


def marchenko_pastur(lam: np.ndarray, n_rows: int, n_cols: int, sigma2: float) -> np.ndarray:
    """Marchenko–Pastur density of the eigenvalues of WᵀW (no 1/N) for an n_rows × n_cols
    matrix of i.i.d. entries of variance ``sigma2``; zero outside the bulk [λ−, λ+]."""
    big, small = max(n_rows, n_cols), min(n_rows, n_cols)
    q = small / big
    lo, hi = mp_edges(n_rows, n_cols, sigma2)
    lam = np.asarray(lam, dtype=np.float64)
    inside = (lam > lo) & (lam < hi)
    out = np.zeros_like(lam)
    x = lam[inside]
    out[inside] = np.sqrt((hi - x) * (x - lo)) / (2.0 * math.pi * q * sigma2 * big * x)
    return out


def mp_edges(n_rows: int, n_cols: int, sigma2: float) -> tuple[float, float]:
    """Edges λ± = σ²·N·(1 ± √q)² of the Marchenko–Pastur bulk (N = the larger side)."""
    big, small = max(n_rows, n_cols), min(n_rows, n_cols)
    q = small / big
    return sigma2 * big * (1 - math.sqrt(q)) ** 2, sigma2 * big * (1 + math.sqrt(q)) ** 2


def ks_scan(eigs: np.ndarray) -> pd.DataFrame:
    """α and the KS distance D for every candidate xmin (Clauset's search, docs/method.md §3).

    Candidates are the unique positive eigenvalues except the largest; α is Hill's estimate
    with xmin counted in the tail; D compares the fitted CDF with the tail's empirical CDF at
    the left of each step. O(N²): meant for the explainer's small matrices (N ≤ ~2000).
    """
    x = np.sort(np.asarray(eigs, dtype=np.float64))
    x = x[np.isfinite(x) & (x > 0)]
    cols = ["xmin", "alpha", "D", "n_tail"]
    if x.size < 3:
        return pd.DataFrame(columns=cols)
    first = np.flatnonzero(np.r_[True, np.diff(x) > 0])  # first index of each unique value
    cand = first[:-1]
    size = x.size
    lx = np.log(x)
    suffix = np.cumsum(lx[::-1])[::-1]  # Σ_{j≥i} ln λ_j
    n_tail = size - cand
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = 1.0 + n_tail / (suffix[cand] - n_tail * lx[cand])
    d = np.empty(cand.size)
    for start in range(0, cand.size, 256):
        block = cand[start : start + 256]
        a = alpha[start : start + 256][:, None]
        k = first[None, :]
        i = block[:, None]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            theo = 1.0 - np.power(x[k] / x[i], 1.0 - a)
            emp = (k - i) / (size - i)
            diff = np.where(k >= i, np.abs(theo - emp), 0.0)
        d[start : start + 256] = diff.max(axis=1)
    return pd.DataFrame({"xmin": x[cand], "alpha": alpha, "D": d, "n_tail": n_tail})


def best_xmin(scan: pd.DataFrame) -> pd.Series:
    """The row of the scan with the smallest D (the first one on ties)."""
    if scan.empty:
        raise AlphaLoRAError("No candidate xmin: the spectrum has fewer than 3 positive values.")
    return scan.iloc[int(np.nanargmin(scan["D"].to_numpy()))]


def trained_matrix(
    n_rows: int, n_cols: int, strength: float, *, exponent: float = 1.2, seed: int = 0
) -> np.ndarray:
    """A toy "training" path: Gaussian noise whose column variances gain a power-law
    structure 1 + strength²·c_k (c_k ∝ k^(−exponent)), the kind of correlation training builds.
    strength 0 is an untrained random layer (Marchenko–Pastur); larger strength, heavier tail,
    smaller α."""
    if strength < 0:
        raise AlphaLoRAError(f"strength must be ≥ 0; got {strength}.")
    if n_rows < 2 or n_cols < 2:
        raise AlphaLoRAError("A demo matrix needs at least 2 rows and 2 columns.")
    rng = np.random.default_rng(seed)
    scale = np.sqrt(1.0 + strength**2 * _power_law_variances(n_cols, exponent))
    return rng.standard_normal((n_rows, n_cols)) * scale


def beta_sweep(alphas: Sequence[float], budget: int, betas: Sequence[float]) -> pd.DataFrame:
    """Experts of the highest- and lowest-α layer and the spread (max − min) for each β
    (default AlphaLoRA mode), to show how β concentrates the budget."""
    a = np.asarray(alphas, dtype=np.float64)
    hi, lo = int(np.argmax(a)), int(np.argmin(a))
    rows = []
    for b in betas:
        alloc = alphalora_allocation(a, budget, float(b))
        rows.append(
            {
                "beta": float(b),
                "experts_highest_alpha_layer": alloc.experts[hi],
                "experts_lowest_alpha_layer": alloc.experts[lo],
                "spread": max(alloc.experts) - min(alloc.experts),
            }
        )
    return pd.DataFrame(rows)
