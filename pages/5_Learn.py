"""Learn: an interactive explainer of heavy-tailed spectra, power-law fits and the allocation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from alphalora.allocation.presets import LLAMA2_7B_LAYER_ALPHAS
from alphalora.allocation.shapes import uniform
from alphalora.allocation.softmax_rules import alphalora_allocation
from alphalora.plots.allocation import allocation_figure
from alphalora.plots.spectra import esd_figure, ks_scan_figure, line_figure
from alphalora.spectral.fits import fit_power_law
from ui import common as ui
from ui.choices import BETA_MAX, BETA_MIN, BETA_STEP
from ui.state import (
    allocation_table,
    best_xmin,
    beta_sweep,
    esd,
    ks_scan,
    marchenko_pastur,
    mp_edges,
    random_matrix,
    trained_matrix,
)

ui.page_setup("Learn", ":material/school:")
st.title("Learn")
st.caption(
    "Small live experiments (matrices up to 512 × 512) behind AlphaLoRA. Eigenvalues are those "
    "of WᵀW with no 1/N factor, as everywhere in this app."
)


@st.cache_data(show_spinner=False, max_entries=64)
def _demo_spectrum(
    kind: str, rows: int, cols: int, tail: float, seed: int
) -> tuple[np.ndarray, float]:
    """Eigenvalues of a demo matrix and the variance of its entries."""
    w = random_matrix(kind, rows, cols, tail=tail, seed=seed)
    return esd(w), float(np.var(w))


@st.cache_data(show_spinner=False, max_entries=64)
def _scan(eigs: np.ndarray) -> pd.DataFrame:
    return ks_scan(eigs)


@st.cache_data(show_spinner=False)
def _alpha_vs_strength(strengths: tuple[float, ...], rows: int, cols: int) -> pd.DataFrame:
    """Clauset α (mean of 3 seeds) along the toy training path."""
    out = []
    for s in strengths:
        alphas = [fit_power_law(esd(trained_matrix(rows, cols, s, seed=k)), "clauset").alpha
                  for k in range(3)]  # fmt: skip
        out.append({"strength": s, "alpha": float(np.mean(alphas))})
    return pd.DataFrame(out)


@st.cache_data(show_spinner=False, max_entries=8)
def _beta_sweep(alphas: tuple[float, ...], budget: int, betas: tuple[float, ...]) -> pd.DataFrame:
    return beta_sweep(alphas, budget, betas)


def _mp_curve(
    eigs: np.ndarray, rows: int, cols: int, sigma2: float
) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = mp_edges(rows, cols, sigma2)
    lam = np.linspace(lo, hi, 400)[1:-1] if hi > lo else np.array([hi])
    share = np.count_nonzero(eigs > 0) / max(len(eigs), 1)
    return lam, marchenko_pastur(lam, rows, cols, sigma2) / max(share, 1e-12)


tab1, tab2, tab3, tab4 = st.tabs(
    [
        "Random vs heavy-tailed",
        "How α is fitted",
        "Why a high α = less trained",
        "How β shapes the allocation",
    ]
)

with tab1:
    st.markdown(
        "A matrix of **independent random** entries has eigenvalues that fill the "
        "**Marchenko–Pastur** bulk and stop at its edge λ₊. Trained layers carry **correlations**: "
        "their spectrum grows a **power-law tail** p(λ) ∝ λ^−α far beyond λ₊. Move the sliders."
    )
    c1, c2, c3 = st.columns(3)
    kind = c1.radio("Entries", ["gaussian", "student-t", "correlated"], key="learn_kind",
                    format_func={"gaussian": "Gaussian (random)", "student-t": "Student-t (heavy entries)",
                                 "correlated": "Correlated columns (trained-like)"}.get)  # fmt: skip
    rows = c2.select_slider("Rows N", [128, 192, 256, 384, 512], value=384, key="learn_rows")
    aspect = c2.select_slider(
        "Columns / rows", [0.25, 0.5, 0.75, 1.0], value=0.5, key="learn_aspect"
    )
    cols = max(2, int(rows * aspect))
    if kind == "student-t":
        tail = c3.slider("Degrees of freedom ν (smaller = heavier tail)", 1.5, 10.0, 3.0, 0.25,
                         key="learn_dof")  # fmt: skip
    elif kind == "correlated":
        tail = c3.slider("Correlation exponent (larger = heavier tail)", 0.0, 2.5, 1.0, 0.1,
                         key="learn_corr")  # fmt: skip
    else:
        tail = 0.0
        c3.caption("Gaussian entries have no tail parameter: this is the random baseline.")
    seed = c3.number_input("Seed", 0, 1000, 0, key="learn_seed")
    eigs, var = _demo_spectrum(kind, rows, cols, float(tail), int(seed))
    fit = fit_power_law(eigs, "clauset")
    hill = fit_power_law(eigs, "hill-peak")
    _, edge = mp_edges(rows, cols, var)
    ui.plot(esd_figure(eigs, alpha=fit.alpha, xmin=fit.xmin, n_tail=fit.n_tail,
                       mp_curve=_mp_curve(eigs, rows, cols, var),
                       title=f"ESD of a {rows}×{cols} {kind} matrix"), key="learn_esd")  # fmt: skip
    beyond = int(np.count_nonzero(eigs > edge))
    st.caption(f"Fitted α = **{fit.alpha:.2f}** (Clauset: the best of every candidate xmin; "
               f"AlphaLoRA's hill-peak search, which looks only near the histogram peak, gives "
               f"{hill.alpha:.2f}). Marchenko–Pastur edge λ₊ = {edge:.4g} (σ² = {var:.3g} from the "
               f"entries); {beyond} of {len(eigs)} eigenvalues lie beyond it.")  # fmt: skip
    ui.csv_download("Eigenvalues (CSV)", pd.DataFrame({"eigenvalue_of_WtW": eigs}),
                    "learn-eigenvalues.csv", "learn_eig_csv")  # fmt: skip

with tab2:
    st.markdown(
        "For every candidate **xmin** = λ_i, Hill's estimator gives α_i = 1 + n / Σ ln(λ_j/λ_i) "
        "over the n eigenvalues ≥ λ_i, and the **Kolmogorov–Smirnov distance D** compares the "
        "fitted and empirical tail distributions. The candidate with the **smallest D** wins "
        "(Clauset et al.). AlphaLoRA's `hill-peak` mode only searches near the histogram peak. "
        "The spectrum is the one of the first tab."
    )
    scan = _scan(eigs)
    if scan.empty:
        st.warning("Too few eigenvalues to scan.")
    else:
        best = best_xmin(scan)
        candidates = scan["xmin"].to_list()
        spectrum_id = (kind, rows, cols, float(tail), int(seed))
        if st.session_state.get("learn_xmin_for") != spectrum_id:  # new spectrum: start at the best
            st.session_state["learn_xmin_for"] = spectrum_id
            st.session_state["learn_xmin_idx"] = int(
                np.flatnonzero(scan["xmin"] == best["xmin"])[0]
            )
        idx = st.slider("Your xmin (candidate index, smallest eigenvalue = 0)", 0, len(candidates) - 1,
                        key="learn_xmin_idx")  # fmt: skip
        mine = scan.iloc[idx]
        k1, k2 = st.columns(2)
        with k1:
            ui.plot(ks_scan_figure(scan, chosen_xmin=float(best["xmin"]), selected_xmin=float(mine["xmin"])),
                    key="learn_ks")  # fmt: skip
        with k2:
            ui.plot(esd_figure(eigs, alpha=float(best["alpha"]), xmin=float(best["xmin"]),
                               n_tail=int(best["n_tail"]), compare_xmin=float(mine["xmin"]),
                               title="Best fit vs the fit from your xmin"), key="learn_ks_esd")  # fmt: skip
        st.caption(f"Best: xmin = {best['xmin']:.4g}, α = {best['alpha']:.3f}, D = {best['D']:.4f}, "
                   f"n_tail = {int(best['n_tail'])}. Yours: xmin = {mine['xmin']:.4g}, α = "
                   f"{mine['alpha']:.3f}, D = {mine['D']:.4f}, n_tail = {int(mine['n_tail'])}.")  # fmt: skip
        ui.csv_download("KS scan (CSV)", scan, "learn-ks-scan.csv", "learn_ks_csv")

with tab3:
    st.markdown(
        "Start from random noise (an untrained layer) and add the kind of **correlated structure "
        "training builds**. The spectrum grows a heavier tail and the fitted **α falls** "
        "(≈ 2–4 for well-trained layers). Pure noise has no power-law tail at all: the fit lands "
        "on the bulk edge and α comes out large. So a layer with a **high α is less trained** — "
        "AlphaLoRA gives it more LoRA experts."
    )
    strengths = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
    strength = st.select_slider("Training strength (structure added to the noise)", strengths,
                                value=1.0, key="learn_strength")  # fmt: skip
    curve = _alpha_vs_strength(strengths, 256, 128)
    t1, t2 = st.columns(2)
    with t1:
        ui.plot(line_figure(curve["strength"], {"α (Clauset fit, mean of 3 seeds)": curve["alpha"]},
                            x_title="training strength (dimensionless)", y_title="α (dimensionless)",
                            title="α falls as structure is learned", marker_x=float(strength)),
                key="learn_alpha_curve")  # fmt: skip
    with t2:
        e3 = esd(trained_matrix(256, 128, float(strength), seed=0))
        f3 = fit_power_law(e3, "clauset")
        ui.plot(esd_figure(e3, alpha=f3.alpha, xmin=f3.xmin, n_tail=f3.n_tail,
                           mp_curve=_mp_curve(e3, 256, 128, 1.0),
                           title=f"ESD at strength {strength:g}: α = {f3.alpha:.2f}"),
                key="learn_trained_esd")  # fmt: skip
    ui.csv_download("α vs strength (CSV)", curve, "learn-alpha-vs-strength.csv", "learn_curve_csv")

with tab4:
    hit = ui.cached_analysis(ui.current_model())
    if hit is not None and np.all(np.isfinite(hit.layer_alphas)):
        alphas, source = hit.layer_alphas, f"the layer alphas of {hit.model.get('name') or hit.ref}"
    else:
        alphas, source = list(LLAMA2_7B_LAYER_ALPHAS), "Llama-2-7B's published layer alphas"
    budget = 5 * len(alphas)
    st.markdown(
        f"n_i = T · α_i^β / Σ α_j^β with T = {budget} experts over {len(alphas)} layers, using "
        f"{source}. **β = 0** ignores α (uniform); larger β hands more experts to the layers "
        "with the largest α. The paper uses β = 2.5."
    )
    beta = st.slider("β", BETA_MIN, BETA_MAX, 2.5, BETA_STEP, key="learn_beta")  # as Allocation
    alloc = alphalora_allocation(alphas, budget, beta)
    b1, b2 = st.columns(2)
    with b1:
        ui.plot(allocation_figure(alloc.experts, label=f"AlphaLoRA β = {beta:g}",
                                  comparisons={"uniform": uniform(len(alphas), budget).experts},
                                  alphas=alphas, title=f"Experts per layer at β = {beta:g}"),
                key="learn_alloc")  # fmt: skip
    with b2:
        betas = np.round(np.linspace(BETA_MIN, BETA_MAX, 41), 2)
        sweep = _beta_sweep(tuple(alphas), budget, tuple(betas))
        ui.plot(line_figure(sweep["beta"], {
                    "experts of the highest-α layer": sweep["experts_highest_alpha_layer"],
                    "experts of the lowest-α layer": sweep["experts_lowest_alpha_layer"]},
                    x_title="β (inverse temperature)", y_title="experts in the layer (count)",
                    title="How β concentrates the budget", marker_x=float(beta)),
                key="learn_sweep")  # fmt: skip
    ui.csv_download("Allocation at this β (CSV)", allocation_table(alloc, alphas),
                    "learn-allocation.csv", "learn_alloc_csv")  # fmt: skip
