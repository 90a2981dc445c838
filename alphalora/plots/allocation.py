"""The allocation figure: experts per layer as bars, other allocations as step lines, layer α
on a second axis."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from alphalora.plots.style import (
    COLOURS,
    EXPERTS_AXIS_TITLE,
    LAYER_AXIS_TITLE,
    apply_layout,
    layer_dtick,
)


def allocation_figure(
    experts: Sequence[int],
    *,
    label: str = "AlphaLoRA",
    comparisons: Mapping[str, Sequence[int]] | None = None,
    alphas: Sequence[float] | None = None,
    title: str = "Experts per layer",
    alpha_title: str = "layer α (mean over the block)",
) -> go.Figure:
    """Bars of experts per layer, comparison allocations as step lines, layer α on a 2nd axis."""
    n = len(experts)
    layers = list(range(n))
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=layers, y=list(experts), name=label, marker_color=COLOURS[0], opacity=0.85,
            hovertemplate="layer %{x}<br>%{y} experts<extra>" + label[:40] + "</extra>",
        )
    )  # fmt: skip
    for i, (name, values) in enumerate((comparisons or {}).items()):
        if len(values) != n:
            continue
        fig.add_trace(
            go.Scatter(
                x=layers, y=list(values), mode="lines", name=name,
                line={"color": COLOURS[(i + 1) % len(COLOURS)], "width": 2.5, "shape": "hvh",
                      "dash": ("solid", "dash", "dot")[i % 3]},
                hovertemplate="layer %{x}<br>%{y} experts<extra>" + name[:40] + "</extra>",
            )
        )  # fmt: skip
    if alphas is not None and len(alphas) == n:
        fig.add_trace(
            go.Scatter(
                x=layers, y=list(alphas), mode="lines+markers", name="layer α (right axis)",
                yaxis="y2", line={"color": "#555", "width": 1.5, "dash": "dot"},
                marker={"size": 5}, hovertemplate="layer %{x}<br>α = %{y:.3f}<extra></extra>",
            )
        )  # fmt: skip
        fig.update_layout(
            yaxis2={"title": {"text": alpha_title}, "overlaying": "y",
                    "side": "right", "showgrid": False},
        )  # fmt: skip
    fig.update_layout(bargap=0.15)
    fig.update_xaxes(dtick=layer_dtick(n), range=[-0.6, n - 0.4])
    fig.update_yaxes(rangemode="tozero")
    return apply_layout(fig, title, LAYER_AXIS_TITLE, EXPERTS_AXIS_TITLE)
