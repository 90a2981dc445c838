"""Comparison figures with their uncertainty: final accuracy per run with a 95 % interval, the
mean over seeds per allocation with its interval, and curves as mean ± band over seeds."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from alphalora.plots.style import COLOURS, STEP_AXIS_TITLE, apply_layout, empty_figure

ACCURACY_TITLE = "held-out accuracy (share correct, 0–1)"


def _hex_to_rgba(colour: str, alpha: float) -> str:
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def accuracy_interval_figure(
    table: pd.DataFrame, *, title: str = "Final held-out accuracy with 95% interval"
) -> go.Figure:
    """One point per run (``label``, ``accuracy_after``, ``accuracy_low``, ``accuracy_high``)
    with its Wilson 95 % interval as an error bar; overlapping bars mean "within noise"."""
    if table is None or table.empty or table["accuracy_after"].isna().all():
        return empty_figure("No finished evaluation to show.", "run", ACCURACY_TITLE, title)
    df = table[table["accuracy_after"].notna()]
    acc = df["accuracy_after"].astype(float)
    fig = go.Figure(
        go.Scatter(
            x=df["label"], y=acc, mode="markers", name="accuracy after (95% CI)",
            marker={"size": 11, "color": COLOURS[0]},
            error_y={"type": "data", "symmetric": False,
                     "array": (df["accuracy_high"].astype(float) - acc).tolist(),
                     "arrayminus": (acc - df["accuracy_low"].astype(float)).tolist(),
                     "thickness": 2, "width": 8},
            customdata=df[["accuracy_low", "accuracy_high", "n_eval", "allocation"]].to_numpy(),
            hovertemplate="%{x}<br>%{customdata[3]}<br>accuracy %{y:.3f}"
            "<br>95% CI [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
            "<br>n = %{customdata[2]}<extra></extra>",
        )
    )  # fmt: skip
    return apply_layout(fig, title, "run", ACCURACY_TITLE)


def seed_group_figure(
    groups: pd.DataFrame,
    *,
    title: str = "Accuracy per allocation: mean over seeds ± 95% interval",
) -> go.Figure:
    """Per allocation (seed group) the mean final accuracy with its interval, and each seed's
    own accuracy as a small dot beside it."""
    if groups is None or groups.empty:
        return empty_figure("No completed run to summarise.", "allocation", ACCURACY_TITLE, title)
    labels = [f"{a} (n={n})" for a, n in zip(groups["allocation"], groups["n_seeds"], strict=True)]
    mean = groups["accuracy_mean"].astype(float)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=labels, y=mean, mode="markers", name="mean over seeds (95% CI)",
            marker={"size": 13, "color": COLOURS[0], "symbol": "diamond"},
            error_y={"type": "data", "symmetric": False,
                     "array": (groups["accuracy_high"].astype(float) - mean).tolist(),
                     "arrayminus": (mean - groups["accuracy_low"].astype(float)).tolist(),
                     "thickness": 2, "width": 10},
            hovertemplate="%{x}<br>mean %{y:.3f}<extra></extra>",
        )
    )  # fmt: skip
    xs, ys = [], []
    for label, values in zip(labels, groups["accuracies"], strict=True):
        xs.extend([label] * len(values))
        ys.extend(values)
    fig.add_trace(
        go.Scatter(
            x=xs, y=ys, mode="markers", name="one seed",
            marker={"size": 6, "color": COLOURS[1], "opacity": 0.7},
            hovertemplate="%{x}<br>seed accuracy %{y:.3f}<extra></extra>",
        )
    )  # fmt: skip
    return apply_layout(fig, title, "allocation (seeds)", ACCURACY_TITLE)


def seed_curve_figure(
    curves: pd.DataFrame,
    *,
    title: str = "Held-out accuracy during training: mean ± 95% interval over seeds",
    y_title: str = ACCURACY_TITLE,
) -> go.Figure:
    """One line per allocation (mean over its seeds, per step) with a shaded interval band."""
    if curves is None or curves.empty:
        return empty_figure("No evaluations logged yet.", STEP_AXIS_TITLE, y_title, title)
    fig = go.Figure()
    for i, (group, part) in enumerate(curves.groupby("group", sort=False)):
        colour = COLOURS[i % len(COLOURS)]
        name = f"{part['allocation'].iloc[0]} (n={int(part['n'].max())})"
        fig.add_trace(
            go.Scatter(
                x=list(part["step"]) + list(part["step"])[::-1],
                y=list(part["high"]) + list(part["low"])[::-1],
                fill="toself", fillcolor=_hex_to_rgba(colour, 0.18), line={"width": 0},
                hoverinfo="skip", showlegend=False, legendgroup=str(group),
            )
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=part["step"], y=part["mean"], mode="lines+markers", name=name,
                line={"color": colour, "width": 2}, legendgroup=str(group),
                hovertemplate=f"{name}<br>step %{{x}}<br>mean %{{y:.3f}}<extra></extra>",
            )
        )  # fmt: skip
    return apply_layout(fig, title, STEP_AXIS_TITLE, y_title)
