"""Figure builders: the right traces, titled axes, log axes where promised, empty-data notes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from alphalora.plots.allocation import allocation_figure
from alphalora.plots.runs import (
    metric_curves_figure,
    router_load_figure,
    router_matrix,
    run_comparison_figure,
)
from alphalora.plots.spectra import (
    alpha_heatmap,
    esd_density,
    esd_figure,
    kind_columns,
    ks_scan_figure,
    layer_alpha_figure,
    line_figure,
)
from alphalora.plots.style import EXPERTS_AXIS_TITLE, LAYER_AXIS_TITLE, STEP_AXIS_TITLE
from alphalora.spectral.fits import fit_power_law
from ui.state import esd, random_matrix


def _layers(n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {"layer": range(n), "alpha_mean": 2 + rng.random(n), "alpha_std": rng.random(n) / 5}
    )
    for kind in ("v_proj", "q_proj", "down_proj"):  # deliberately out of block order
        df[f"alpha_{kind}"] = 2 + rng.random(n)
    df["alpha_weighted_mean"] = 5.0
    return df


def _axis_titles(fig: go.Figure) -> tuple[str, str]:
    return fig.layout.xaxis.title.text, fig.layout.yaxis.title.text


def test_layer_alpha_figure_has_mean_line_and_one_marker_series_per_kind():
    fig = layer_alpha_figure(_layers(), highlight_layer=2)
    names = [t.name for t in fig.data]
    assert names == ["mean α", "q_proj", "v_proj", "down_proj"]  # block order, not column order
    assert fig.data[0].error_y.array is not None
    x_title, y_title = _axis_titles(fig)
    assert "layer" in x_title and "α" in y_title
    assert all(t.hovertemplate for t in fig.data)
    assert len(fig.layout.shapes) == 1  # the highlighted layer


def test_kind_columns_excludes_summary_columns():
    assert kind_columns(_layers()) == ["alpha_q_proj", "alpha_v_proj", "alpha_down_proj"]


def test_alpha_heatmap_is_layer_by_kind():
    fig = alpha_heatmap(_layers(5))
    heat = fig.data[0]
    assert isinstance(heat, go.Heatmap)
    assert np.asarray(heat.z).shape == (3, 5)
    assert list(heat.y) == ["q_proj", "v_proj", "down_proj"]
    assert _axis_titles(fig) == (LAYER_AXIS_TITLE, "module kind")
    cells = fig.data[1]  # clickable overlay: one marker per (layer, kind) cell, carrying α
    assert len(cells.x) == 15 and cells.y[5] == "v_proj" and cells.x[5] == 0
    assert cells.customdata[5] == pytest.approx(np.asarray(heat.z)[1, 0])
    assert "α = %{customdata" in cells.hovertemplate
    assert fig.layout.clickmode == "event+select"
    empty = alpha_heatmap(pd.DataFrame({"layer": [0], "alpha_mean": [2.0]}))
    assert len(empty.data) == 0 and empty.layout.annotations


def test_esd_density_integrates_to_one():
    eigs = esd(random_matrix("student-t", 200, 100, tail=3.0, seed=1))
    centres, density, edges = esd_density(eigs, 40)
    assert len(centres) == 40 and np.all(np.diff(edges) > 0)
    assert np.sum(density * np.diff(edges)) == pytest.approx(1.0)


def test_esd_figure_is_log_log_with_fit_xmin_peak_and_convention():
    eigs = esd(random_matrix("correlated", 256, 128, tail=1.0, seed=0))
    fit = fit_power_law(eigs, "hill-peak")
    fig = esd_figure(eigs, alpha=fit.alpha, xmin=fit.xmin, n_tail=fit.n_tail, peak=fit.peak)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    x_title, y_title = _axis_titles(fig)
    assert "WᵀW" in x_title and "no 1/N" in x_title and "density" in y_title
    names = [t.name for t in fig.data]
    assert names[0] == "ESD (histogram)"
    assert any(n.startswith("power law α = ") for n in names)
    assert any(n.startswith("xmin = ") for n in names)
    assert any(n.startswith("hill-peak peak = ") for n in names)
    # The fitted line starts at xmin and follows (α−1)/xmin·share at xmin.
    line = next(t for t in fig.data if t.name.startswith("power law"))
    assert line.x[0] == pytest.approx(fit.xmin)
    share = fit.n_tail / np.count_nonzero(eigs > 0)
    assert line.y[0] == pytest.approx(share * (fit.alpha - 1) / fit.xmin)


def test_esd_figure_overlays_mp_curve_and_a_second_xmin():
    eigs = esd(random_matrix("gaussian", 128, 64, seed=0))
    lam = np.linspace(eigs.min(), eigs.max(), 50)
    fig = esd_figure(eigs, mp_curve=(lam, np.ones_like(lam)), compare_xmin=float(eigs[32]))
    names = [t.name for t in fig.data]
    assert "Marchenko–Pastur (random)" in names and "your xmin" in names
    assert any(n.startswith("from your xmin: α = ") for n in names)


def test_esd_figure_with_too_few_eigenvalues_is_an_annotated_empty_chart():
    fig = esd_figure(np.array([0.0, 1.0]))
    assert len(fig.data) == 0 and "Fewer than two" in fig.layout.annotations[0].text
    assert "WᵀW" in fig.layout.xaxis.title.text


def test_ks_scan_figure_marks_chosen_and_selected_xmin():
    scan = pd.DataFrame(
        {
            "xmin": [1.0, 2.0, 4.0],
            "alpha": [3.0, 2.5, 2.2],
            "D": [0.3, 0.1, 0.2],
            "n_tail": [3, 2, 1],
        }
    )
    fig = ks_scan_figure(scan, chosen_xmin=2.0, selected_xmin=4.0)
    names = [t.name for t in fig.data]
    assert names == ["KS distance D", "α at this xmin", "chosen (smallest D)", "your xmin"]
    assert fig.data[2].x[0] == 2.0 and fig.data[3].x[0] == 4.0
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis2.title.text.startswith("α")


def test_allocation_figure_bars_comparisons_and_alpha_axis():
    fig = allocation_figure(
        [1, 2, 3],
        label="mine",
        comparisons={"uniform": [2, 2, 2], "wrong length": [1]},
        alphas=[2.0, 3.0, 4.0],
    )
    assert isinstance(fig.data[0], go.Bar) and list(fig.data[0].y) == [1, 2, 3]
    assert [t.name for t in fig.data] == ["mine", "uniform", "layer α (right axis)"]
    assert fig.data[2].yaxis == "y2"
    assert _axis_titles(fig) == (LAYER_AXIS_TITLE, EXPERTS_AXIS_TITLE)


def test_metric_curves_one_line_per_run_and_split():
    metrics = pd.DataFrame(
        {
            "run_id": ["a", "a", "a", "b", "b"],
            "split": ["train", "train", "eval", "train", "train"],
            "step": [1, 2, 2, 1, 2],
            "train_loss": [2.0, 1.5, None, 2.2, 1.9],
            "accuracy": [None, None, 0.7, None, None],
        }
    )
    fig = metric_curves_figure(
        metrics, "train_loss", y_title="loss", title="t", labels={"a": "run A"}
    )
    assert [t.name for t in fig.data] == ["run A", "b"]
    assert list(fig.data[0].y) == [2.0, 1.5]
    assert fig.layout.xaxis.title.text == STEP_AXIS_TITLE
    acc = metric_curves_figure(metrics, "accuracy", y_title="acc", title="t", split="eval")
    assert len(acc.data) == 1 and list(acc.data[0].y) == [0.7]
    none = metric_curves_figure(metrics, "aux_loss", y_title="aux", title="t")
    assert len(none.data) == 0 and none.layout.annotations[0].text == "No values logged yet."
    log = metric_curves_figure(metrics, "train_loss", y_title="loss", title="t", log_y=True)
    assert log.layout.yaxis.type == "log"


def test_router_matrix_pads_ragged_layers_and_accepts_dicts():
    z = router_matrix([[0.5, 0.5], [0.2, 0.3, 0.5]])
    assert z.shape == (2, 3) and np.isnan(z[0, 2]) and z[1, 2] == 0.5
    assert router_matrix({"1": [1.0], "0": [0.25, 0.75]})[0].tolist() == [0.25, 0.75]
    assert router_matrix([0.1, 0.9]).shape == (1, 2)
    fig = router_load_figure([[0.5, 0.5], [1.0]])
    assert isinstance(fig.data[0], go.Heatmap)
    assert _axis_titles(fig) == ("expert index (within the layer)", LAYER_AXIS_TITLE)
    assert len(router_load_figure(None).data) == 0


def test_run_comparison_and_line_figures():
    table = pd.DataFrame(
        {"label": ["x", "y"], "accuracy_before": [0.5, 0.5], "accuracy_after": [0.7, 0.8]}
    )
    fig = run_comparison_figure(table)
    assert [t.name for t in fig.data] == ["before", "after"] and fig.layout.barmode == "group"
    assert len(run_comparison_figure(pd.DataFrame()).data) == 0
    line = line_figure(
        [1, 2, 3], {"a": [3, 2, 1]}, x_title="x", y_title="y", marker_x=2, log_x=True
    )
    assert line.layout.xaxis.type == "log"
    assert [t.name for t in line.data] == ["a", "current = 2"]


# --------------------------------------------------------------------------- issue 10: colours, layout


def _trace_colours(fig: go.Figure) -> dict[str, str]:
    """Run label → colour of its line or bar (bars carry one colour per run)."""
    out: dict[str, str] = {}
    for t in fig.data:
        if isinstance(t, go.Bar):
            out.update(zip(t.x, t.marker.color, strict=True))
        else:
            out[t.name] = t.line.color
    return out


def test_a_run_keeps_its_colour_in_every_chart_whatever_else_is_shown():
    from alphalora.plots.style import RUN_COLOURS, run_colour

    ids = [f"20260101-0000{i:02d}-ab{i:02d}" for i in range(12)]
    assert run_colour(ids[3]) == run_colour(ids[3]) and run_colour(ids[3]) in RUN_COLOURS
    assert len({run_colour(r) for r in ids}) > 5  # spread over the palette, not one colour
    rows = []
    for r in ids[:4]:
        rows += [{"run_id": r, "split": "train", "step": s, "train_loss": 1.0 / s} for s in (1, 2)]
        rows += [{"run_id": r, "split": "eval", "step": 2, "accuracy": 0.6}]
    metrics = pd.DataFrame(rows)
    labels = {r: f"run {r[-4:]}" for r in ids}
    expected = {labels[r]: run_colour(r) for r in ids[:4]}
    loss = metric_curves_figure(metrics, "train_loss", y_title="l", title="t", labels=labels)
    assert _trace_colours(loss) == expected
    # Another page shows the runs in another order, and only some of them: same colours.
    subset = metrics[metrics["run_id"].isin(ids[2:4])].iloc[::-1]
    acc = metric_curves_figure(subset, "accuracy", y_title="a", title="t", labels=labels)
    assert _trace_colours(acc) == {labels[r]: expected[labels[r]] for r in ids[2:4]}
    table = pd.DataFrame(
        {
            "run_id": ids[3:0:-1],
            "label": [labels[r] for r in ids[3:0:-1]],
            "accuracy_before": [0.5, 0.5, 0.5],
            "accuracy_after": [0.7, 0.8, 0.6],
        }
    )
    bars = run_comparison_figure(table)
    for trace in bars.data:
        assert dict(zip(trace.x, trace.marker.color, strict=True)) == {
            labels[r]: expected[labels[r]] for r in ids[1:4]
        }


def test_accuracy_axes_stay_within_zero_and_one_and_missing_bars_have_no_nan_label():
    metrics = pd.DataFrame(
        {"run_id": ["a"], "split": ["eval"], "step": [0], "accuracy": [0.5]}
    )  # one flat value: plotly would autoscale to [-0.5, 1.5]
    fig = metric_curves_figure(metrics, "accuracy", y_title="acc", title="t", split="eval")
    assert tuple(fig.layout.yaxis.range) == (0.0, 1.0)
    loss = metric_curves_figure(
        metrics.rename(columns={"accuracy": "eval_loss"}), "eval_loss", y_title="l", title="t"
    )
    assert loss.layout.yaxis.range is None  # losses keep their own scale
    table = pd.DataFrame(
        {
            "run_id": ["r1", "r2"],
            "label": ["done", "cancelled"],
            "accuracy_before": [0.5, 0.52],
            "accuracy_after": [0.75, None],  # the cancelled run never reached its last eval
        }
    )
    bars = run_comparison_figure(table)
    assert tuple(bars.layout.yaxis.range) == (0.0, 1.0)
    texts = [t for trace in bars.data for t in trace.text]
    assert "NaN" not in " ".join(texts) and "nan" not in " ".join(texts)
    assert list(bars.data[1].text) == ["0.750", ""] and list(bars.data[0].text) == [
        "0.500",
        "0.520",
    ]


def test_fitted_power_law_stays_inside_the_plotted_data_range():
    eigs = esd(random_matrix("gaussian", 256, 128, seed=1))
    fit = fit_power_law(eigs, "clauset")
    fig = esd_figure(eigs, alpha=16.0, xmin=float(fit.xmin), n_tail=20)
    lo, hi = (10**v for v in fig.layout.yaxis.range)
    line = next(t for t in fig.data if t.name.startswith("power law"))
    assert min(line.y) >= lo * (1 - 1e-9) and max(line.y) <= hi * (1 + 1e-9)
    assert min(line.x) >= fit.xmin * (1 - 1e-9) and max(line.x) <= float(np.max(eigs)) * 1.0001
    # The line ends where it meets the bottom of the chart (before it, α = 16 left the plot).
    assert min(line.y) == pytest.approx(lo, rel=1e-6) and max(line.x) < float(np.max(eigs))
    # A fit that stays above the bottom runs up to the largest eigenvalue.
    ok = esd_figure(eigs, alpha=1.5, xmin=float(fit.xmin), n_tail=115)
    ok_line = next(t for t in ok.data if t.name.startswith("power law"))
    assert max(ok_line.x) == pytest.approx(float(np.max(eigs)), rel=1e-6)


def test_titles_sit_below_the_toolbar_wrap_and_keep_the_legend_below_them():
    from alphalora.plots.style import FIGURE_HEIGHT, MODEBAR_PX, TITLE_WRAP_CHARS, wrap_title

    title = "Experts per layer — AlphaLoRA official (T=160, β=2.5) — 16 layers got 0 experts"
    fig = allocation_figure([5, 5, 5], comparisons={"u": [5, 5, 5]}, title=title)
    text = fig.layout.title.text
    assert text.replace("<br>", " ") == title
    assert all(len(line) <= TITLE_WRAP_CHARS for line in text.split("<br>"))
    assert fig.layout.title.yref == "container" and fig.layout.title.pad.t >= MODEBAR_PX
    lines = text.count("<br>") + 1
    legend_top_px = (1 - fig.layout.legend.y) * FIGURE_HEIGHT
    assert fig.layout.legend.yref == "container" and fig.layout.legend.yanchor == "top"
    assert legend_top_px >= MODEBAR_PX + 20 * lines  # below the toolbar and every title line
    assert fig.layout.margin.t > legend_top_px  # and the plot below the legend
    assert wrap_title("short") == "short" and wrap_title("") == ""
    assert wrap_title("a " * 30, width=10).count("<br>") == 5
