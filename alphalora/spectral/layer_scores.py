"""Layer scores from the per-matrix table: the mean α of a layer's matrices (AlphaLoRA, the
default), or a median or trimmed mean that one outlying fit cannot dominate, optionally over the
reliable fits only. Computed from the table, so the analysis and its cache never change.

"trimmed": when a layer has at least :data:`TRIM_MIN_MATRICES` matrices in use, its single
largest and single smallest α are dropped before the mean; smaller layers keep the plain mean.
With ``exclude_unreliable`` a layer whose fits are all flagged falls back to all its finite fits
and is marked ``fallback`` (never NaN into the allocator).
"""

from __future__ import annotations

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


def _block(matrices: Any) -> pd.DataFrame:
    """The rows of ``matrices`` that belong to a layer, with numeric layer/alpha columns."""
    df = matrices if isinstance(matrices, pd.DataFrame) else pd.DataFrame(matrices)
    missing = [c for c in ("layer", "alpha") if c not in df.columns]
    if missing:
        raise AlphaLoRAError(
            f"The analysis table lacks column(s) {missing}; expected an `analyze` output with "
            "one row per matrix (name, layer, kind, alpha, reliable)."
        )
    layer = pd.to_numeric(df["layer"], errors="coerce")
    block = df[layer.notna()].copy()
    if block.empty:
        raise AlphaLoRAError("The analysis table has no rows with a layer index.")
    values = layer[layer.notna()].to_numpy(dtype=float)
    if not np.all(np.equal(np.mod(values, 1), 0)):
        raise AlphaLoRAError("The analysis table's layer column must hold whole numbers.")
    block["layer"] = values.astype(np.int64)
    block["alpha"] = pd.to_numeric(block["alpha"], errors="coerce").astype(float)
    if "reliable" in block.columns:
        block["reliable"] = block["reliable"].map(_truthy)
    else:
        block["reliable"] = True
    if "kind" not in block.columns:
        block["kind"] = block["name"] if "name" in block.columns else block.index.astype(str)
    return block


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
    block = _block(matrices)
    finite = block[np.isfinite(block["alpha"])]
    rows = []
    for layer in sorted(block["layer"].unique()):
        all_rows = block[block["layer"] == layer]
        pool = finite[finite["layer"] == layer]
        fallback = False
        if exclude_unreliable:
            reliable = pool[pool["reliable"]]
            if reliable.empty and not pool.empty:
                fallback = True
            else:
                pool = reliable
        values = pool["alpha"].to_numpy(dtype=float)
        used = pool
        if method == "trimmed" and values.size >= TRIM_MIN_MATRICES:
            order = np.argsort(values, kind="stable")
            keep = np.sort(order[1:-1])
            used = pool.iloc[keep]
        if values.size == 0:
            score = float("nan")
        elif method == "mean":
            score = float(pool.groupby("layer")["alpha"].mean().iloc[0])  # as layer_table
        elif method == "median":
            score = float(np.median(values))
        else:
            score = _trimmed(values)
        left_out = all_rows.drop(index=used.index)
        driver = ""
        if len(used):
            far = int(np.argmax(np.abs(used["alpha"].to_numpy(dtype=float) - score)))
            driver = f"{used['kind'].iloc[far]} {used['alpha'].iloc[far]:.2f}"
        n_bad = int((~used["reliable"]).sum())
        rows.append(
            {
                "layer": int(layer),
                "score": score,
                "n_matrices": len(all_rows),
                "n_used": len(used),
                "n_unreliable_used": n_bad,
                "fallback": fallback,
                "flagged": bool(n_bad > 0 or values.size == 0),
                "driver": driver,
                "used": _listing(used),
                "left_out": _listing(left_out),
            }
        )
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def _listing(rows: pd.DataFrame) -> str:
    """``kind α`` per matrix, flagged fits marked with ``!``, for a table cell or a hover."""
    parts = []
    for kind, alpha, ok in zip(rows["kind"], rows["alpha"], rows["reliable"], strict=True):
        value = "nan" if not np.isfinite(alpha) else f"{alpha:.2f}"
        parts.append(f"{kind} {value}{'' if ok else '!'}")
    return ", ".join(parts)


def layer_scores(
    matrices: Any, method: str | None = "mean", exclude_unreliable: bool = False
) -> list[float]:
    """The score of every layer, in layer order: the input of the allocation rules.

    Refuses (with the layers named) a table with a missing layer or a layer with no finite α.
    """
    table = layer_score_table(matrices, method, exclude_unreliable)
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
