"""Layer scores from the per-matrix table: the mean α of a layer's matrices (AlphaLoRA, the
default), or a median or trimmed mean that one outlying fit cannot dominate, optionally over the
reliable fits only. Computed from the table, so the analysis and its cache never change.

"trimmed": when a layer has at least :data:`TRIM_MIN_MATRICES` matrices in use, its single
largest and single smallest α are dropped before the mean; smaller layers keep the plain mean.
With ``exclude_unreliable`` a layer whose fits are all flagged falls back to all its finite fits
and is marked ``fallback`` (never NaN into the allocator).
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
import pandas as pd

from alphalora.errors import AlphaLoRAError

LAYER_SCORES = ("mean", "median", "trimmed")
DEFAULT_LAYER_SCORE = "mean"
TRIM_MIN_MATRICES = 5
SCORE_COLUMNS = [
    "layer", "score", "n_matrices", "n_used", "n_unreliable_used", "fallback", "flagged",
    "driver", "used", "left_out",
]  # fmt: skip


def check_layer_score(method: str | None) -> str:
    """``method`` checked against :data:`LAYER_SCORES` (None means the default, mean)."""
    if method is None:
        return DEFAULT_LAYER_SCORE
    if method not in LAYER_SCORES:
        raise AlphaLoRAError(
            f"Unknown layer score {method!r}; use one of {', '.join(LAYER_SCORES)} "
            "(mean = AlphaLoRA's definition)."
        )
    return method


def describe_layer_score(method: str | None, exclude_unreliable: bool = False) -> str:
    """A short human label, e.g. "mean α" or "median α, reliable fits only"."""
    text = f"{check_layer_score(method)} α"
    return text + (", reliable fits only" if exclude_unreliable else "")


def _trimmed(values: np.ndarray) -> float:
    if values.size >= TRIM_MIN_MATRICES:
        values = np.sort(values)[1:-1]
    return float(values.mean())


def _block(matrices: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(layer, alpha, reliable, kind) arrays of the rows of ``matrices`` that belong to a layer."""
    df = matrices if isinstance(matrices, pd.DataFrame) else pd.DataFrame(matrices)
    missing = [c for c in ("layer", "alpha") if c not in df.columns]
    if missing:
        raise AlphaLoRAError(
            f"The analysis table lacks column(s) {missing}; expected an `analyze` output with "
            "one row per matrix (name, layer, kind, alpha, reliable)."
        )
    layer = pd.to_numeric(df["layer"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    rows = np.isfinite(layer)
    if not rows.any():
        raise AlphaLoRAError("The analysis table has no rows with a layer index.")
    layer = layer[rows]
    if not np.all(np.equal(np.mod(layer, 1), 0)):
        raise AlphaLoRAError("The analysis table's layer column must hold whole numbers.")
    alpha = pd.to_numeric(df["alpha"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    if "reliable" in df.columns:
        reliable = np.fromiter((_truthy(v) for v in df["reliable"]), bool, len(df))
    else:
        reliable = np.ones(len(df), dtype=bool)
    names = next((c for c in ("kind", "name") if c in df.columns), None)
    kinds = df[names].astype(str).to_numpy() if names else np.arange(len(df)).astype(str)
    return layer.astype(np.int64), alpha[rows], reliable[rows], kinds[rows]


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) if value == value else False  # NaN → not reliable


def layer_score_table(
    matrices: Any, method: str | None = "mean", exclude_unreliable: bool = False
) -> pd.DataFrame:
    """One row per layer (columns :data:`SCORE_COLUMNS`): the score, which matrices it uses,
    which it leaves out (trimmed or flagged), the one farthest from the score (``driver``) and
    whether it rests on flagged fits (``flagged``) or had to fall back to them (``fallback``).

    A layer without any finite α gets a NaN score (and ``flagged``); :func:`layer_scores` refuses
    it with a message. ``mean`` over every matrix equals the analysis' ``alpha_mean`` exactly.
    """
    method = check_layer_score(method)
    layer, alpha, reliable, kinds = _block(matrices)
    finite = np.isfinite(alpha)
    pool = finite & reliable if exclude_unreliable else finite.copy()
    rows_of = {int(k): np.flatnonzero(layer == k) for k in np.unique(layer)}
    fallback = {k for k, idx in rows_of.items() if not pool[idx].any() and finite[idx].any()}
    for k in fallback:
        pool[rows_of[k]] = finite[rows_of[k]]
    # the mean exactly as the analysis' layer table computes it (pandas' grouped mean)
    means = pd.Series(alpha[pool]).groupby(layer[pool]).mean()
    rows = []
    for k, idx in rows_of.items():
        used = idx[pool[idx]]
        values = alpha[used]
        if method == "trimmed" and values.size >= TRIM_MIN_MATRICES:
            order = np.argsort(values, kind="stable")
            used = np.sort(used[order[1:-1]])
        if values.size == 0:
            score = float("nan")
        elif method == "mean":
            score = float(means.loc[k])
        elif method == "median":
            score = float(statistics.median(values.tolist()))
        else:
            score = _trimmed(values)
        kept = set(used.tolist())
        driver = ""
        if used.size:
            far = used[int(np.argmax(np.abs(alpha[used] - score)))]
            driver = f"{kinds[far]} {alpha[far]:.2f}"
        n_bad = int((~reliable[used]).sum())
        rows.append(
            {
                "layer": k,
                "score": score,
                "n_matrices": int(idx.size),
                "n_used": int(used.size),
                "n_unreliable_used": n_bad,
                "fallback": k in fallback,
                "flagged": bool(n_bad > 0 or values.size == 0),
                "driver": driver,
                "used": _listing(kinds, alpha, reliable, used),
                "left_out": _listing(kinds, alpha, reliable, [i for i in idx if i not in kept]),
            }
        )
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def _listing(kinds: np.ndarray, alpha: np.ndarray, reliable: np.ndarray, idx: Any) -> str:
    """``kind α`` per matrix, flagged fits marked with ``!``, for a table cell or a hover."""
    parts = []
    for i in idx:
        value = "nan" if not np.isfinite(alpha[i]) else f"{alpha[i]:.2f}"
        parts.append(f"{kinds[i]} {value}{'' if reliable[i] else '!'}")
    return ", ".join(parts)


def layer_scores(
    matrices: Any, method: str | None = "mean", exclude_unreliable: bool = False
) -> list[float]:
    """The score of every layer, in layer order: the input of the allocation rules.

    Refuses (with the layers named) a table with a missing layer or a layer with no finite α.
    """
    return scores_from_table(layer_score_table(matrices, method, exclude_unreliable))


def scores_from_table(table: pd.DataFrame) -> list[float]:
    """The scores of a :func:`layer_score_table`, checked: no missing layer, all finite."""
    layers = table["layer"].tolist()
    gaps = sorted(set(range(layers[0], layers[-1] + 1)) - set(layers))
    if gaps:
        raise AlphaLoRAError(f"The analysis table has no rows for layer(s) {gaps}.")
    empty = [int(r.layer) for r in table.itertuples() if not np.isfinite(r.score)]
    if empty:
        raise AlphaLoRAError(
            f"Layer(s) {empty} have no finite alpha in the analysis table; re-run the analysis "
            "for them (or check the fit warnings)."
        )
    return [float(v) for v in table["score"]]


def fallback_layers(table: pd.DataFrame) -> list[int]:
    """Layers of a :func:`layer_score_table` whose score had to use flagged fits after all."""
    return [int(layer) for layer in table.loc[table["fallback"], "layer"]]


def flagged_layers(table: pd.DataFrame) -> list[int]:
    """Layers of a :func:`layer_score_table` whose score rests on at least one flagged fit."""
    return [int(layer) for layer in table.loc[table["flagged"], "layer"]]


def layers_with_score(
    layers: pd.DataFrame,
    matrices: Any,
    method: str | None = "mean",
    exclude_unreliable: bool = False,
) -> pd.DataFrame:
    """The per-layer table of an analysis with the chosen score added as ``layer_score``
    (``layer_score_method`` names it; ``score_used``, ``score_flagged`` and ``score_fallback``
    say what it rests on). ``alpha_mean`` and the other columns are kept as they are."""
    table = layer_score_table(matrices, method, exclude_unreliable)
    extra = table.rename(
        columns={
            "score": "layer_score",
            "used": "score_used",
            "flagged": "score_flagged",
            "fallback": "score_fallback",
        }
    )[["layer", "layer_score", "score_used", "score_flagged", "score_fallback"]]
    extra.insert(2, "layer_score_method", describe_layer_score(method, exclude_unreliable))
    out = layers.drop(columns=[c for c in extra.columns if c != "layer"], errors="ignore")
    return out.merge(extra, on="layer", how="left")
