"""Fine-tune run figures: metric curves per run and split, router load per layer and expert,
and the before/after accuracy comparison of several runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from alphalora.plots.style import (
    LAYER_AXIS_TITLE,
    STEP_AXIS_TITLE,
    apply_layout,
    empty_figure,
    layer_dtick,
    run_colour,
)

SHARE_COLUMNS = ("accuracy",)
"""Metrics that are shares in [0, 1]: their axis is fixed to that range."""


def _run_label(run_id: str, labels: Mapping[str, str] | None) -> str:
    return (labels or {}).get(run_id) or run_id


def metric_curves_figure(
    metrics: pd.DataFrame,
    column: str,
    *,
    y_title: str,
    title: str,
    labels: Mapping[str, str] | None = None,
    split: str | None = None,
    log_y: bool = False,
) -> go.Figure:
    """One line per run (and per split, eval dashed) of ``column`` against the step; each run
    in its own colour (:func:`~alphalora.plots.style.run_colour`), shares on a [0, 1] axis."""
    if metrics is None or metrics.empty or column not in metrics.columns:
        return empty_figure("No values logged yet.", STEP_AXIS_TITLE, y_title, title)
    df = metrics if split is None else metrics[metrics["split"] == split]
    df = df[pd.to_numeric(df[column], errors="coerce").notna()]
    if df.empty:
        return empty_figure("No values logged yet.", STEP_AXIS_TITLE, y_title, title)
    fig = go.Figure()
    run_ids = list(dict.fromkeys(df["run_id"]))
    share = column in SHARE_COLUMNS
    for run_id in run_ids:
        for split_name, part in df[df["run_id"] == run_id].groupby("split", sort=True):
            name = _run_label(run_id, labels)
            if df["split"].nunique() > 1:
                name = f"{name} ({split_name})"
            fig.add_trace(
                go.Scatter(
                    x=part["step"], y=part[column].astype(float), mode="lines+markers",
                    name=name,
                    line={"color": run_colour(run_id), "width": 2,
                          "dash": "solid" if split_name == "train" else "dash"},
                    marker={"size": 4 if split_name == "train" else 7}, cliponaxis=not share,
                    hovertemplate=f"{name}<br>step %{{x}}<br>{column} = %{{y:.4g}}<extra></extra>",
                )
            )  # fmt: skip
    if log_y:
        fig.update_yaxes(type="log", exponentformat="power")
    elif share:
        fig.update_yaxes(range=[0.0, 1.0])
    return apply_layout(fig, title, STEP_AXIS_TITLE, y_title)


def router_matrix(load: Any) -> np.ndarray:
    """Router load as a (layer × expert) array, padding layers with fewer experts with NaN.

    Accepts a list of per-layer lists, a dict {layer: list} or a flat list (one layer).
    """
    if isinstance(load, Mapping):
        keys = sorted(load, key=lambda k: int(k) if str(k).lstrip("-").isdigit() else str(k))
        rows = [load[k] for k in keys]
    elif (
        isinstance(load, Sequence | np.ndarray)
        and len(load)
        and not isinstance(load[0], Sequence | np.ndarray | Mapping)
    ):
        rows = [load]
    else:
        rows = list(load or [])
    rows = [list(r.values()) if isinstance(r, Mapping) else list(r) for r in rows]
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = np.asarray(r, dtype=np.float64)
    return out


def router_load_figure(
    load: Any, *, title: str = "Router load per layer (latest evaluation)"
) -> go.Figure:
    """Heat map layer × expert of the share of top-k assignments each expert received."""
    z = router_matrix(load)
    if z.size == 0:
        return empty_figure("No router load logged yet.", "expert index", LAYER_AXIS_TITLE, title)
    fig = go.Figure(
        go.Heatmap(
            z=z, x=list(range(z.shape[1])), y=list(range(z.shape[0])), colorscale="Magma",
            reversescale=True, colorbar={"title": {"text": "share of<br>assignments"}},
            hovertemplate="layer %{y}<br>expert %{x}<br>share = %{z:.3f}<extra></extra>",
        )
    )  # fmt: skip
    fig.update_xaxes(dtick=1)
    fig.update_yaxes(dtick=layer_dtick(z.shape[0]))  # whole layers, never "0.5"
    return apply_layout(fig, title, "expert index (within the layer)", LAYER_AXIS_TITLE)


def _bar_text(values: pd.Series) -> list[str]:
    """Bar labels: three decimals, nothing for a value that was never measured (no "NaN")."""
    return ["" if not np.isfinite(v) else f"{v:.3f}" for v in values.astype(float)]


def run_comparison_figure(
    table: pd.DataFrame, *, title: str = "Held-out accuracy: before → after"
) -> go.Figure:
    """Grouped bars of accuracy before/after per run (``label``, ``accuracy_before``,
    ``accuracy_after`` and, for the run's colour, ``run_id`` columns); "before" is hatched;
    ``<column>_low``/``_high`` columns, when present, draw each bar's 95 % interval as an error bar."""
    if table is None or table.empty:
        return empty_figure(
            "Select runs to compare.", "run", "accuracy (share correct, 0–1)", title
        )
    ids = table["run_id"] if "run_id" in table else table["label"]
    colours = [run_colour(str(r)) for r in ids]
    fig = go.Figure()
    for col, name in (("accuracy_before", "before"), ("accuracy_after", "after")):
        if col not in table:
            continue
        values = pd.to_numeric(table[col], errors="coerce")
        before = name == "before"
        fig.add_trace(
            go.Bar(
                x=table["label"], y=values, name=name, text=_bar_text(values),
                textposition="outside", cliponaxis=False,
                marker={"color": colours, "opacity": 0.45 if before else 1.0,
                        "pattern": {"shape": "/" if before else ""}},
                hovertemplate="%{x}<br>" + name + ": %{y:.3f}<extra></extra>",
                error_y=_interval_bars(table, col, values),
            )
        )  # fmt: skip
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0.0, 1.0])
    return apply_layout(fig, title, "run", "accuracy (share correct, 0–1)")


def _interval_bars(table: pd.DataFrame, col: str, values: pd.Series) -> dict | None:
    """Asymmetric error bars from ``<col>_low``/``<col>_high`` columns, if the table has them."""
    low, high = f"{col}_low", f"{col}_high"
    if low not in table or high not in table:
        return None
    lo = (values - pd.to_numeric(table[low], errors="coerce")).fillna(0)
    hi = (pd.to_numeric(table[high], errors="coerce") - values).fillna(0)
    return {"type": "data", "symmetric": False, "array": hi.tolist(), "arrayminus": lo.tolist(),
            "thickness": 1.5, "width": 6, "color": "#333"}  # fmt: skip
