"""The shared look of every figure: axis titles (with units or conventions), the colour cycle,
the common layout (title, legend, grid, hover) and the empty-figure note.

Every builder takes tables/arrays and returns a ``plotly.graph_objects.Figure`` with axis titles,
hover values and a legend, so the same charts work in the app, a notebook or an exported HTML
file. Eigenvalues are those of WᵀW without a 1/N factor (AlphaLoRA's convention, docs/method.md §2).
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

EIGEN_AXIS_TITLE = "eigenvalue λ of WᵀW (squared singular value, no 1/N)"
DENSITY_AXIS_TITLE = "density p(λ) (share of eigenvalues per unit λ)"
LAYER_AXIS_TITLE = "layer (transformer block index)"
ALPHA_AXIS_TITLE = "α (power-law exponent of the ESD tail, dimensionless)"
EXPERTS_AXIS_TITLE = "LoRA experts in the layer (count)"
STEP_AXIS_TITLE = "training step (optimizer updates)"

COLOURS = (
    "#6C3FC5", "#E4572E", "#17BEBB", "#FFC914", "#2E86AB", "#76B041", "#B5179E", "#8D6A9F",
    "#F18F01", "#3A3A3A",
)  # fmt: skip
_GRID = "#E6E6EC"


def apply_layout(fig: go.Figure, title: str, x_title: str, y_title: str, **extra: Any) -> go.Figure:
    """Common look: white template, titled axes, closest-point hover, legend on top."""
    fig.update_layout(
        # Title on top of the figure, legend in rows between it and the plot: never overlapping.
        title={
            "text": title,
            "x": 0.0,
            "xanchor": "left",
            "y": 0.98,
            "yref": "container",
            "yanchor": "top",
        },
        # plotly_white's look without its template (assigning a named template deep-copies it:
        # ~15 ms per figure, most of a slider redraw). The app's theme restyles it anyway.
        paper_bgcolor="white",
        plot_bgcolor="white",
        hovermode="closest",
        margin={"l": 70, "r": 30, "t": 110, "b": 60},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0.0},
        **extra,
    )
    fig.layout.xaxis.title.text = x_title  # the primary axes only (a y2 keeps its own title)
    fig.layout.yaxis.title.text = y_title
    fig.update_xaxes(showgrid=True, gridcolor=_GRID, zeroline=False, linecolor=_GRID)
    fig.update_yaxes(showgrid=True, gridcolor=_GRID, zeroline=False, linecolor=_GRID)
    return fig


def layer_dtick(n: int) -> int | None:
    """Layer tick spacing that keeps the labels readable in a half-width chart."""
    if n <= 16:
        return 1
    return 2 if n <= 40 else None


def empty_figure(message: str, x_title: str = "", y_title: str = "", title: str = "") -> go.Figure:
    """A figure with titled axes and a centred note, for charts with no data yet."""
    fig = go.Figure()
    fig.add_annotation(
        text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
        font={"size": 14, "color": "#666"},
    )  # fmt: skip
    return apply_layout(fig, title, x_title, y_title)
