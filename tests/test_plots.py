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
