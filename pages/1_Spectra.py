"""Spectra: α per layer and module kind, the ESD of one matrix with its power-law fit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from alphalora.allocation.presets import paper_preset
from alphalora.plots.spectra import alpha_heatmap, esd_figure, kind_columns, layer_alpha_figure
from alphalora.spectral.fits import fit_power_law
from ui import common as ui

ui.page_setup("Spectra", ":material/ssid_chart:")
st.title("Spectra")
st.caption(
    "Eigenvalues λ of WᵀW for every block matrix (squared singular values, no 1/N factor — "
    "AlphaLoRA's convention; α does not depend on it). A power law p(λ) ∝ λ^−α is fitted to "
    "the tail above xmin."
)

choice = ui.current_model()
if choice.is_paper:
    preset = paper_preset()
    st.info(
        "The paper preset carries Llama-2-7B's published layer alphas only — no weights, so no "
        "spectra. Pick the embedded model or your own on the Home page to see spectra."
    )
    layers = pd.DataFrame({"layer": range(preset["n_layers"]), "alpha_mean": preset["alphas"]})
    ui.plot(layer_alpha_figure(layers, title="Published layer α of Llama-2-7B"), key="sp_paper")
    ui.csv_download("Download layer alphas (CSV)", layers, "llama2-7b-layer-alphas.csv", "sp_pcsv")
    st.stop()

result = ui.get_analysis(choice)
if result is None:
    st.stop()

layers_df = result.layers
matrices = result.matrices
block = matrices[matrices["layer"].notna()].copy()
block["layer"] = block["layer"].astype(int)
layer_ids = sorted(block["layer"].unique().tolist())
if not layer_ids:
    st.warning("This model has no transformer-block matrices to show.")
    st.stop()

ui.remember({"spectra_layer": layer_ids[0], "spectra_kind": ""})  # kept across pages
if st.session_state["spectra_layer"] not in layer_ids:
    st.session_state["spectra_layer"] = layer_ids[0]
kind_names = [c[len("alpha_") :] for c in kind_columns(layers_df)]


def _take_point(chart_key: str, with_kind: bool) -> None:
    """Move the layer (and kind) selectboxes to the point clicked in a chart."""
    state = st.session_state.get(chart_key)
    points = (state or {}).get("selection", {}).get("points", []) if state else []
    if not points:
        return
    point = points[0]
    try:
        layer = int(round(float(point.get("x"))))
    except (TypeError, ValueError):
        return
    if layer in layer_ids:
        st.session_state["spectra_layer"] = layer
    kind = point.get("y") if with_kind else None
    if with_kind and isinstance(kind, str):
        st.session_state["spectra_kind"] = kind


left, right = st.columns(2)
with left:
    ui.plot(
        layer_alpha_figure(
            layers_df,
            highlight_layer=st.session_state["spectra_layer"],
            title="α per layer (mean over the block)",
        ),  # fmt: skip
        key="spectra_layer_chart",
        on_select=lambda: _take_point("spectra_layer_chart", False),
        selection_mode="points",
    )
with right:
    ui.plot(
        alpha_heatmap(layers_df),
        key="spectra_heatmap",
        on_select=lambda: _take_point("spectra_heatmap", True),
        selection_mode="points",
    )
st.caption("Click a point of either chart (or use the boxes below) to open that matrix's ESD.")

st.subheader("Spectrum of one matrix")
c1, c2 = st.columns(2)
layer = c1.selectbox("Layer", layer_ids, key="spectra_layer")
kinds_here = [k for k in kind_names if k in set(block.loc[block["layer"] == layer, "kind"])]
kinds_here += sorted(set(block.loc[block["layer"] == layer, "kind"]) - set(kinds_here))
if st.session_state.get("spectra_kind") not in kinds_here:
    st.session_state["spectra_kind"] = kinds_here[0]
kind = c2.selectbox("Matrix (module kind)", kinds_here, key="spectra_kind")

row = block[(block["layer"] == layer) & (block["kind"] == kind)].iloc[0]
eigs = result.eigenvalues.get(row["name"])
if eigs is None or len(eigs) == 0:
    st.warning(f"`{row['name']}` has no spectrum: {row['warning'] or 'not computed'}.")
else:
    opts = result.options
    if opts.fit == "hill-peak":
        fit = fit_power_law(eigs, "hill-peak", log10_quirk=opts.log10_quirk)
    else:
        fit = fit_power_law(eigs, opts.fit)
    fig = esd_figure(
        eigs,
        alpha=fit.alpha,
        xmin=fit.xmin,
        n_tail=fit.n_tail,
        peak=fit.peak,
        title=f"ESD of {row['name']} ({int(row['rows'])}×{int(row['cols'])})",
    )
    ui.plot(fig, key="spectra_esd")
    st.caption(
        f"**α = {fit.alpha:.3f}** · xmin = {fit.xmin:.4g} · KS distance D = {fit.D:.4f} · "
        f"n_tail = {fit.n_tail} of {fit.n} positive eigenvalues · λ_max = {row['lambda_max']:.4g}"
        f" · stable rank = {row['stable_rank']:.1f} · fit `{fit.mode}`"
        + (f" · hill-peak histogram peak = {fit.peak:.4g}" if fit.peak else "")
    )
    if not bool(row["reliable"]):
        st.warning(f"This fit is flagged: {row['warning']}")
    esd_df = pd.DataFrame({"eigenvalue_of_WtW": np.asarray(eigs, dtype=float)})
    ui.csv_download("Download these eigenvalues (CSV)", esd_df,
                    f"eigenvalues-{row['name']}.csv", "spectra_eig_csv")  # fmt: skip

st.subheader("Flagged fits")
flagged = matrices[~matrices["reliable"].astype(bool)]
if flagged.empty:
    st.success("No fit is flagged: every tail has ≥ 10 eigenvalues, α in [1.5, 20], D ≤ 0.2.")
else:
    st.dataframe(
        flagged[["name", "layer", "kind", "alpha", "n_tail", "D", "warning"]],
        hide_index=True,
        width="stretch",
    )

st.subheader("Tables")
with st.expander("Per-layer table", expanded=False):
    st.dataframe(layers_df, hide_index=True, width="stretch")
with st.expander("Per-matrix table", expanded=False):
    st.dataframe(matrices, hide_index=True, width="stretch")
d1, d2, d3, d4 = st.columns(4)
with d1:
    ui.csv_download("Layers (CSV)", layers_df, "layers.csv", "spectra_layers_csv")
with d2:
    ui.json_download("Layers (JSON)", layers_df, "layers.json", "spectra_layers_json")
with d3:
    ui.csv_download("Matrices (CSV)", matrices, "matrices.csv", "spectra_matrices_csv")
with d4:
    ui.json_download("Matrices (JSON)", matrices, "matrices.json", "spectra_matrices_json")
