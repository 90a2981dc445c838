"""Spectral figures: α per layer (line and heat map), the ESD on log-log axes with its fitted
power law, the KS scan over candidate xmin, and a generic line figure for the Learn page."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from alphalora.plots.style import (
    ALPHA_AXIS_TITLE,
    COLOURS,
    DENSITY_AXIS_TITLE,
    EIGEN_AXIS_TITLE,
    LAYER_AXIS_TITLE,
    apply_layout,
    empty_figure,
    layer_dtick,
)

#: The usual order of a transformer block's projections (others follow alphabetically).
KIND_ORDER = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv", "gate_up",
)  # fmt: skip
_NOT_KIND = {"alpha_mean", "alpha_std", "alpha_weighted_mean"}
_SYMBOLS = ("circle", "square", "diamond", "cross", "x", "triangle-up", "triangle-down", "star")


def kind_columns(layers: pd.DataFrame) -> list[str]:
    """The per-kind ``alpha_<kind>`` columns of a layer table, in block order."""
    cols = [c for c in layers.columns if c.startswith("alpha_") and c not in _NOT_KIND]
    order = {f"alpha_{k}": i for i, k in enumerate(KIND_ORDER)}
    return sorted(cols, key=lambda c: (order.get(c, len(order)), c))


def _finite(values: Any) -> np.ndarray:
    return np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=np.float64)


def layer_alpha_figure(
    layers: pd.DataFrame,
    *,
    title: str = "Power-law α per layer (mean over the block's matrices)",
    highlight_layer: int | None = None,
    show_kinds: bool = True,
) -> go.Figure:
    """Mean α per layer (line, ±1 std error bars) with one marker series per module kind."""
    x = _finite(layers["layer"]).astype(int)
    fig = go.Figure()
    std = _finite(layers["alpha_std"]) if "alpha_std" in layers else None
    fig.add_trace(
        go.Scatter(
            x=x, y=_finite(layers["alpha_mean"]), mode="lines+markers", name="mean α",
            line={"color": COLOURS[0], "width": 3}, marker={"size": 8},
            error_y=None if std is None else {"type": "data", "array": std, "visible": True,
                                              "thickness": 1, "color": "#B8A6E6"},
            hovertemplate="layer %{x}<br>mean α = %{y:.3f}<extra></extra>",
        )
    )  # fmt: skip
    if show_kinds:
        for i, col in enumerate(kind_columns(layers)):
            fig.add_trace(
                go.Scatter(
                    x=x, y=_finite(layers[col]), mode="markers", name=col[len("alpha_"):],
                    marker={"size": 7, "symbol": _SYMBOLS[i % len(_SYMBOLS)],
                            "color": COLOURS[(i + 1) % len(COLOURS)], "opacity": 0.75},
                    hovertemplate=f"layer %{{x}}<br>{col[6:]}: α = %{{y:.3f}}<extra></extra>",
                )
            )  # fmt: skip
    if highlight_layer is not None:
        fig.add_vrect(
            x0=highlight_layer - 0.5, x1=highlight_layer + 0.5, fillcolor="#FFC914", opacity=0.25,
            line_width=0, layer="below",
        )  # fmt: skip
    fig.update_xaxes(dtick=layer_dtick(len(x)), range=[-0.6, len(x) - 0.4] if len(x) else None)
    return apply_layout(fig, title, LAYER_AXIS_TITLE, ALPHA_AXIS_TITLE, clickmode="event+select")


def alpha_heatmap(layers: pd.DataFrame, *, title: str = "α per layer and module kind") -> go.Figure:
    """Heat map of α with layers on x and module kinds on y (hover shows each value).

    A transparent marker sits on every cell: plotly heat maps emit no click selection, markers
    do, so a click on a cell selects its (layer, kind) in apps that listen for selections.
    """
    cols = kind_columns(layers)
    if not cols:
        return empty_figure("No per-kind α in this table.", LAYER_AXIS_TITLE, "module kind", title)
    z = np.vstack([_finite(layers[c]) for c in cols])
    x = _finite(layers["layer"]).astype(int)
    kinds = [c[len("alpha_") :] for c in cols]
    fig = go.Figure(
        go.Heatmap(
            z=z, x=x, y=kinds, colorscale="Viridis", colorbar={"title": {"text": "α"}},
            hoverinfo="skip", name="α",
        )
    )  # fmt: skip
    gx, gy = np.meshgrid(x, np.arange(len(kinds)))
    fig.add_trace(
        go.Scatter(
            x=gx.ravel(), y=[kinds[i] for i in gy.ravel()], customdata=z.ravel(), mode="markers",
            name="cells", showlegend=False,
            marker={"symbol": "square", "size": 14, "color": "rgba(0,0,0,0.01)"},
            selected={"marker": {"color": "rgba(255,255,255,0.6)"}},
            unselected={"marker": {"opacity": 0.01}},
            hovertemplate="layer %{x}<br>%{y}<br>α = %{customdata:.3f}<extra></extra>",
        )
    )  # fmt: skip
    return apply_layout(fig, title, LAYER_AXIS_TITLE, "module kind", clickmode="event+select")


def log_bins(values: np.ndarray, n_bins: int = 60) -> np.ndarray:
    """``n_bins + 1`` log-spaced bin edges spanning the positive ``values``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return np.array([1.0, 10.0])
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        lo, hi = lo / 1.5, hi * 1.5
    edges = np.logspace(math.log10(lo), math.log10(hi), int(n_bins) + 1)
    edges[0], edges[-1] = min(lo, edges[0]), max(hi, edges[-1])  # 10**log10(v) may miss v by an ulp
    return edges


def esd_density(eigs: np.ndarray, n_bins: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Histogram density of the positive eigenvalues on log-spaced bins.

    Returns (bin centres (geometric), density, edges); the density integrates to 1 over the
    positive eigenvalues, so a power-law fit of the tail is drawn on the same scale.
    """
    v = np.asarray(eigs, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    edges = log_bins(v, n_bins)
    counts, _ = np.histogram(v, bins=edges)
    widths = np.diff(edges)
    density = counts / (max(v.size, 1) * widths)
    centres = np.sqrt(edges[:-1] * edges[1:])
    return centres, density, edges


def power_law_density(lam: np.ndarray, alpha: float, xmin: float, tail_share: float) -> np.ndarray:
    """Fitted tail density p(λ) = share·(α−1)/xmin·(λ/xmin)^(−α) for λ ≥ xmin."""
    lam = np.asarray(lam, dtype=np.float64)
    return tail_share * (alpha - 1.0) / xmin * np.power(lam / xmin, -alpha)


def clipped_power_law(
    alpha: float, xmin: float, share: float, lam_max: float, y_lo: float, y_hi: float, n: int = 80
) -> tuple[np.ndarray, np.ndarray] | None:
    """Points (λ, p(λ)) of the fitted tail density restricted to the plotted box: λ from xmin
    to the largest eigenvalue and p within [y_lo, y_hi] (a steep fit, α ≈ 16, would otherwise
    run off the bottom of the chart). ``None`` when no part of the line is inside the box."""
    if not (alpha > 1 and xmin > 0 and share > 0 and lam_max > 0 and 0 < y_lo < y_hi):
        return None
    top = share * (alpha - 1.0) / xmin  # p(xmin); p falls as λ^(−α) from there
    lo = xmin * max(1.0, (top / y_hi) ** (1.0 / alpha))  # where p comes down to y_hi
    hi = min(max(lam_max, xmin * 1.01), xmin * (top / y_lo) ** (1.0 / alpha))  # p reaches y_lo
    if not hi > lo:
        return None
    lam = np.logspace(math.log10(lo), math.log10(hi), n)
    return lam, np.clip(power_law_density(lam, alpha, xmin, share), y_lo, y_hi)


def _vertical(x: float, y_lo: float, y_hi: float, name: str, colour: str, dash: str) -> go.Scatter:
    return go.Scatter(
        x=[x, x], y=[y_lo, y_hi], mode="lines", name=name,
        line={"color": colour, "dash": dash, "width": 2},
        hovertemplate=f"{name}<br>λ = {x:.4g}<extra></extra>",
    )  # fmt: skip


def esd_figure(
    eigs: np.ndarray,
    *,
    alpha: float | None = None,
    xmin: float | None = None,
    n_tail: int | None = None,
    peak: float | None = None,
    title: str = "Empirical spectral density (log-log)",
    n_bins: int = 60,
    mp_curve: tuple[np.ndarray, np.ndarray] | None = None,
    compare_xmin: float | None = None,
) -> go.Figure:
    """The ESD on log-log axes with the fitted power-law tail, xmin and the hill-peak peak.

    ``mp_curve`` (λ, density) overlays a Marchenko–Pastur density; ``compare_xmin`` draws a
    second power law from another xmin (its α recomputed by Hill's estimator).
    """
    v = np.sort(np.asarray(eigs, dtype=np.float64))
    pos = v[np.isfinite(v) & (v > 0)]
    if pos.size < 2:
        return empty_figure("Fewer than two positive eigenvalues: nothing to plot.",
                            EIGEN_AXIS_TITLE, DENSITY_AXIS_TITLE, title)  # fmt: skip
    centres, density, _ = esd_density(pos, n_bins)
    keep = density > 0
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=centres[keep], y=density[keep], mode="lines+markers", name="ESD (histogram)",
            line={"color": COLOURS[0], "shape": "hvh", "width": 1.5}, marker={"size": 5},
            hovertemplate="λ ≈ %{x:.4g}<br>density = %{y:.3g}<extra></extra>",
        )
    )  # fmt: skip
    y_lo, y_hi = float(density[keep].min()) / 3, float(density[keep].max()) * 3
    lam_max = float(pos[-1])
    if (
        alpha is not None
        and xmin is not None
        and np.isfinite(alpha)
        and np.isfinite(xmin)
        and xmin > 0
    ):
        tail = n_tail if n_tail is not None else int(np.count_nonzero(pos >= xmin))
        line = clipped_power_law(alpha, xmin, tail / pos.size, lam_max, y_lo, y_hi)
        if line is not None:
            fig.add_trace(
                go.Scatter(
                    x=line[0], y=line[1], mode="lines",
                    name=f"power law α = {alpha:.2f}", line={"color": COLOURS[1], "width": 3},
                    hovertemplate="λ = %{x:.4g}<br>fit density = %{y:.3g}<extra></extra>",
                )
            )  # fmt: skip
        fig.add_trace(_vertical(xmin, y_lo, y_hi, f"xmin = {xmin:.4g}", COLOURS[1], "dash"))
    if compare_xmin is not None and compare_xmin > 0:
        tail_vals = pos[pos >= compare_xmin]
        if tail_vals.size >= 2:
            s = float(np.sum(np.log(tail_vals / compare_xmin)))
            a2 = 1.0 + tail_vals.size / s if s > 0 else math.nan
            line = clipped_power_law(
                a2, compare_xmin, tail_vals.size / pos.size, lam_max, y_lo, y_hi, n=60
            )
            if line is not None:
                fig.add_trace(
                    go.Scatter(
                        x=line[0], y=line[1],
                        mode="lines", name=f"from your xmin: α = {a2:.2f}",
                        line={"color": COLOURS[4], "width": 2, "dash": "dot"},
                        hovertemplate="λ = %{x:.4g}<br>density = %{y:.3g}<extra></extra>",
                    )
                )  # fmt: skip
                fig.add_trace(_vertical(compare_xmin, y_lo, y_hi, "your xmin", COLOURS[4], "dot"))
    if peak is not None and np.isfinite(peak) and peak > 0:
        fig.add_trace(
            _vertical(peak, y_lo, y_hi, f"hill-peak peak = {peak:.4g}", COLOURS[5], "dashdot")
        )
    if mp_curve is not None:
        mx, my = (np.asarray(a, dtype=np.float64) for a in mp_curve)
        ok = (mx > 0) & (my > 0) & np.isfinite(my)
        fig.add_trace(
            go.Scatter(
                x=mx[ok], y=my[ok], mode="lines", name="Marchenko–Pastur (random)",
                line={"color": COLOURS[2], "width": 3},
                hovertemplate="λ = %{x:.4g}<br>MP density = %{y:.3g}<extra></extra>",
            )
        )  # fmt: skip
    fig.update_xaxes(type="log", exponentformat="power")
    fig.update_yaxes(type="log", exponentformat="power", dtick=1,
                     range=[math.log10(y_lo), math.log10(y_hi)])  # fmt: skip
    return apply_layout(fig, title, EIGEN_AXIS_TITLE, DENSITY_AXIS_TITLE)


def ks_scan_figure(
    scan: pd.DataFrame,
    *,
    chosen_xmin: float | None = None,
    selected_xmin: float | None = None,
    title: str = "KS distance D and α for each candidate xmin",
) -> go.Figure:
    """D (left axis) and α (right axis) against the candidate xmin; the minimum D wins."""
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=scan["xmin"], y=scan["D"], mode="lines", name="KS distance D",
            line={"color": COLOURS[0], "width": 2},
            hovertemplate="xmin = %{x:.4g}<br>D = %{y:.4f}<extra></extra>",
        )
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=scan["xmin"], y=scan["alpha"], mode="lines", name="α at this xmin", yaxis="y2",
            line={"color": COLOURS[1], "width": 2, "dash": "dot"},
            hovertemplate="xmin = %{x:.4g}<br>α = %{y:.3f}<extra></extra>",
        )
    )  # fmt: skip
    for xv, name, colour, symbol in (
        (chosen_xmin, "chosen (smallest D)", COLOURS[1], "star"),
        (selected_xmin, "your xmin", COLOURS[4], "diamond"),
    ):
        if xv is None or scan.empty:
            continue
        i = int(np.argmin(np.abs(np.log(scan["xmin"].to_numpy()) - math.log(xv))))
        row = scan.iloc[i]
        fig.add_trace(
            go.Scatter(
                x=[row["xmin"]], y=[row["D"]], mode="markers", name=name,
                marker={"size": 14, "symbol": symbol, "color": colour,
                        "line": {"width": 1, "color": "#222"}},
                hovertemplate=(f"{name}<br>xmin = %{{x:.4g}}<br>D = %{{y:.4f}}"
                               f"<br>α = {row['alpha']:.3f}<extra></extra>"),
            )
        )  # fmt: skip
    fig.update_xaxes(type="log", exponentformat="power")
    fig.update_layout(
        yaxis2={"title": {"text": "α (dimensionless)"}, "overlaying": "y", "side": "right",
                "showgrid": False},
    )  # fmt: skip
    return apply_layout(fig, title, f"candidate xmin ({EIGEN_AXIS_TITLE})", "KS distance D (0–1)")


def line_figure(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    x_title: str,
    y_title: str,
    title: str = "",
    marker_x: float | None = None,
    log_x: bool = False,
) -> go.Figure:
    """Several named lines over the same x, with an optional vertical marker at ``marker_x``."""
    fig = go.Figure()
    for i, (name, ys) in enumerate(series.items()):
        fig.add_trace(
            go.Scatter(
                x=list(x), y=list(ys), mode="lines+markers", name=name,
                line={"color": COLOURS[i % len(COLOURS)], "width": 2},
                hovertemplate=f"{name}<br>x = %{{x:.3g}}<br>y = %{{y:.3g}}<extra></extra>",
            )
        )  # fmt: skip
    if marker_x is not None:
        values = [
            float(v) for ys in series.values() for v in ys if v is not None and np.isfinite(v)
        ]
        if values:
            lo, hi = min(values), max(values)
            fig.add_trace(
                _vertical(float(marker_x), lo, hi, f"current = {marker_x:.3g}", "#888", "dash")
            )
    if log_x:
        fig.update_xaxes(type="log", exponentformat="power")
    return apply_layout(fig, title, x_title, y_title)
