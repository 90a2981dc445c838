"""The shared look of every figure: axis titles (with units or conventions), the colour cycle,
the common layout (title, legend, grid, hover) and the empty-figure note.

Every builder takes tables/arrays and returns a ``plotly.graph_objects.Figure`` with axis titles,
hover values and a legend, so the same charts work in the app, a notebook or an exported HTML
file. Eigenvalues are those of WᵀW without a 1/N factor (AlphaLoRA's convention, docs/method.md §2).
"""

from __future__ import annotations

import hashlib
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
RUN_COLOURS = (
    "#6C3FC5", "#E4572E", "#17BEBB", "#D4A20B", "#2E86AB", "#76B041", "#B5179E", "#8D6A9F",
    "#F18F01", "#3A3A3A", "#C0392B", "#1E8449", "#5DADE2", "#AF7AC5", "#A04000", "#138D75",
    "#E75480", "#7F8C8D", "#283593", "#9A7D0A",
)  # fmt: skip
"""Colours of runs: each run's colour is picked from its id (:func:`run_colour`)."""
_GRID = "#E6E6EC"

FIGURE_HEIGHT = 450
"""Pixel height of every figure: the title and legend are placed in pixels from the top."""
MODEBAR_PX = 40
"""Room left above the title for plotly's toolbar (the modebar), which sits top-right."""
TITLE_FONT_PX = 15
TITLE_LINE_PX = 21
TITLE_WRAP_CHARS = 36
"""Titles are wrapped at spaces to lines of at most this many characters (a half-width chart
in an 800-px window holds about 36 bold characters at 15 px)."""


def run_colour(run_id: str) -> str:
    """The colour of a run in every chart on every page: chosen from its id by a stable hash
    (not by its position in a list), so a run never changes colour between charts."""
    digest = hashlib.sha256(str(run_id).encode("utf-8")).digest()
    return RUN_COLOURS[int.from_bytes(digest[:4], "big") % len(RUN_COLOURS)]


def wrap_title(text: str, width: int = TITLE_WRAP_CHARS) -> str:
    """``text`` with ``<br>`` between lines of at most ``width`` characters (broken at spaces;
    a single longer word keeps its own line). Existing ``<br>`` breaks are kept."""
    lines: list[str] = []
    for part in str(text or "").split("<br>"):
        line = ""
        for word in part.split(" "):
            if line and len(line) + 1 + len(word) > width:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    return "<br>".join(lines)


def apply_layout(fig: go.Figure, title: str, x_title: str, y_title: str, **extra: Any) -> go.Figure:
    """Common look: white template, titled axes, closest-point hover, legend on top.

    From the top: room for the toolbar, the title (wrapped), the legend in rows, the plot; the
    legend is placed in pixels below the title and pushes the plot down when it needs more rows,
    so nothing overlaps at any width."""
    text = wrap_title(title)
    lines = text.count("<br>") + 1 if text else 0
    legend_top = MODEBAR_PX + TITLE_LINE_PX * lines + 8
    fig.update_layout(
        title={
            "text": text,
            "x": 0.0,
            "xanchor": "left",
            "y": 1.0,
            "yref": "container",
            "yanchor": "top",
            "pad": {"t": MODEBAR_PX},
            "font": {"size": TITLE_FONT_PX},
        },
        # plotly_white's look without its template (assigning a named template deep-copies it:
        # ~15 ms per figure, most of a slider redraw). The app's theme restyles it anyway.
        paper_bgcolor="white",
        plot_bgcolor="white",
        hovermode="closest",
        height=FIGURE_HEIGHT,
        margin={"l": 70, "r": 30, "t": legend_top + 30, "b": 60},
        legend={
            "orientation": "h",
            "yref": "container",
            "yanchor": "top",
            "y": 1.0 - legend_top / FIGURE_HEIGHT,
            "xanchor": "left",
            "x": 0.0,
        },
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
