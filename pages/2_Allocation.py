"""Allocation: layer alphas → LoRA experts per layer, compared with uniform and MoLA shapes."""

from __future__ import annotations

import dataclasses

import streamlit as st

from alphalora.allocation.checks import budget_range
from alphalora.allocation.labels import with_layer_score
from alphalora.allocation.model import Allocation
from alphalora.allocation.softmax_rules import beta_to_temperature, temperature_to_beta
from alphalora.errors import AlphaLoRAError
from alphalora.plots.allocation import allocation_figure
from alphalora.spectral.layer_scores import (
    LAYER_SCORES,
    describe_layer_score,
    fallback_layers,
    flagged_layers,
    layer_score_table,
    scores_from_table,
)
from ui import common as ui
from ui.choices import BETA_MAX, BETA_MIN, BETA_STEP, display_label
from ui.comparisons import LAYER_SCORE_LABELS
from ui.state import (
    ALLOCATION_MODES,
    MODE_DEFAULT,
    MODE_MOLA,
    MODE_OFFICIAL,
    MOLA_SHAPES,
    allocation_table,
    build_allocation,
    check_layers,
    comparison_allocations,
    paper_defaults,
    parameters_table,
)

ui.page_setup("Allocation", ":material/tune:")
st.title("Allocation")
st.caption(
    "n_i = T · α_i^β / Σ_j α_j^β  (= T · softmax(β · ln α)_i): layers with a larger α — less "
    "heavy-tailed, less well trained — get more experts. β = 0 is uniform; the temperature "
    "τ = 1/β is the same knob read the other way."
)

ctx = ui.model_context()
if ctx is None:
    st.stop()
alphas: list[float] = ctx["alphas"]
n_layers: int = ctx["n_layers"]
default_budget, default_beta = paper_defaults(n_layers)

# Widget values survive page switches: saved after each run, restored when missing.
WIDGETS = {
    "alloc_mode": MODE_DEFAULT,
    "alloc_use_tau": False,
    "alloc_beta": default_beta,
    "alloc_tau": round(1 / default_beta, 2),
    "alloc_budget": default_budget,
    "alloc_min": 1,
    "alloc_max": 0,
    "alloc_shape": "8642",
    "alloc_score": "mean",
    "alloc_reliable": False,
}
model_key = ctx["choice"].key()
if st.session_state.get("alloc_model_key") != model_key:  # new model: fresh defaults
    st.session_state["alloc_model_key"] = model_key
    st.session_state["alloc_saved"] = dict(WIDGETS)
    for key, value in WIDGETS.items():
        st.session_state[key] = value
saved = st.session_state.setdefault("alloc_saved", dict(WIDGETS))
for key, value in WIDGETS.items():
    if key not in st.session_state:
        st.session_state[key] = saved.get(key, value)


def _paper_defaults() -> None:
    st.session_state["alloc_budget"] = default_budget
    st.session_state["alloc_beta"] = default_beta
    st.session_state["alloc_tau"] = round(1 / default_beta, 2)
    st.session_state["alloc_min"] = 1
    st.session_state["alloc_max"] = 0


def _sync_tau_beta() -> None:
    """When the β/τ toggle flips, carry the value over (τ = 1/β)."""
    if st.session_state["alloc_use_tau"]:
        beta = st.session_state["alloc_beta"]
        st.session_state["alloc_tau"] = (
            min(10.0, round(beta_to_temperature(beta), 2)) if beta > 0 else 10.0
        )
    else:
        st.session_state["alloc_beta"] = min(
            BETA_MAX, round(temperature_to_beta(st.session_state["alloc_tau"]), 2)
        )


controls, chart = st.columns([1, 2.4], gap="large")
with controls:
    st.markdown(f"**{ctx['label']}** · {n_layers} layers")
    mode = st.radio("Mode", ALLOCATION_MODES, key="alloc_mode")
    use_tau = st.toggle("Use temperature τ = 1/β", key="alloc_use_tau", on_change=_sync_tau_beta,
                        help="Set the temperature τ = 1/β instead of β (the same knob read the "
                        "other way).")  # fmt: skip
    if use_tau:
        tau = st.slider("Temperature τ", 0.1, 10.0, step=0.05, key="alloc_tau",
                        help="Large τ flattens the allocation towards uniform.")  # fmt: skip
        beta = temperature_to_beta(tau)
        st.caption(f"β = 1/τ = {beta:.3f}")
    else:
        beta = st.slider("β (inverse temperature)", BETA_MIN, BETA_MAX, step=BETA_STEP,
                         key="alloc_beta",
                         help="0 = uniform; 2.5 = the paper; larger concentrates experts.")  # fmt: skip
    budget_low, budget_high = budget_range(n_layers)  # the library's bound on budgets
    budget = st.slider("Expert budget T (total over all layers)", budget_low,
                       min(16 * n_layers, budget_high), key="alloc_budget")  # fmt: skip
    b1, b2 = st.columns(2)
    min_experts = b1.number_input("Min per layer", 1, 16, key="alloc_min")
    max_experts = b2.number_input("Max per layer (0 = none)", 0, 64, key="alloc_max")
    shape = st.selectbox("MoLA shape (compared; used in MoLA mode)", MOLA_SHAPES, key="alloc_shape")
    score, reliable_only = "mean", False
    if ctx["analysis"] is not None:
        score = st.selectbox("Layer score", LAYER_SCORES, key="alloc_score",
                             format_func=LAYER_SCORE_LABELS.get,
                             help="How a layer's α is made from its matrices. Mean is AlphaLoRA's "
                             "(and the paper's); median and trimmed mean resist one outlying "
                             "fit.")  # fmt: skip
        reliable_only = st.checkbox("Reliable fits only", key="alloc_reliable",
                                    help="Leave flagged fits (short tail, α out of range, poor "
                                    "KS distance) out of the layer scores.")  # fmt: skip
    st.button("Paper defaults", on_click=_paper_defaults,
              help="T = 5 experts per layer (160 for Llama-2-7B's 32 layers) and β = 2.5.")  # fmt: skip
    uploaded = st.file_uploader("Import an allocation (JSON)", type=["json"], key="alloc_import")

st.session_state["alloc_saved"] = {k: st.session_state[k] for k in WIDGETS}

score_table = None
if ctx["analysis"] is not None:
    score_table = layer_score_table(ctx["analysis"].matrices, score, reliable_only)
    if score != "mean" or reliable_only:
        try:
            alphas = scores_from_table(score_table)
        except AlphaLoRAError as exc:
            with chart:
                st.error(str(exc))
            st.stop()

current: Allocation | None = None
imported = False
if uploaded is not None:
    try:
        current = Allocation.from_json(uploaded.getvalue().decode("utf-8", errors="replace"))
        check_layers(current, n_layers, ctx["label"])
        imported = True
    except AlphaLoRAError as exc:
        current = None
        with controls:
            st.error(f"Could not import {uploaded.name}: {exc}")
if current is None:
    try:
        current = build_allocation(
            mode, alphas, int(budget), float(beta), min_experts=int(min_experts),
            max_experts=int(max_experts) or None, shape=shape,
        )  # fmt: skip
        if current.alphas is not None:
            current = with_layer_score(current, score, reliable_only)
    except AlphaLoRAError as exc:
        with chart:
            st.error(str(exc))
        st.stop()

try:
    comparisons = comparison_allocations(n_layers, current.total, shape)
except AlphaLoRAError as exc:
    comparisons = {}
    with chart:
        st.warning(f"No comparison drawn: {exc}")
if mode == MODE_MOLA and not imported:
    comparisons = {k: v for k, v in comparisons.items() if not k.startswith("MoLA")}

with chart:
    name = display_label(current)
    if imported:
        st.info(f"Showing the imported allocation ({name}); remove the file to go back to the "
                "controls.")  # fmt: skip
    if ctx["analysis"] is None and mode == MODE_OFFICIAL and not imported:
        st.caption("The allocation implied by the paper's published Llama-2-7B alphas "
                   "(AlphaLoRA's own code, repair loop included).")  # fmt: skip
    fig = allocation_figure(
        current.experts,
        label=name,
        comparisons={k: v.experts for k, v in comparisons.items()},
        alphas=alphas,
        title=f"Experts per layer — {name}",
        alpha_title=f"layer score: {describe_layer_score(score, reliable_only)}",
    )
    ui.plot(fig, key="alloc_chart")
    for warning in current.warnings:
        st.warning(warning)
    if score_table is not None:
        flagged, fallback = flagged_layers(score_table), fallback_layers(score_table)
        if fallback:
            st.warning(f"Layer(s) {fallback} have no reliable fit: their score falls back to "
                       "their flagged fits.")  # fmt: skip
        elif flagged:
            st.warning(f"The score of layer(s) {flagged} rests on flagged fits (see the table "
                       "below); tick 'Reliable fits only' to leave them out.")  # fmt: skip
        with st.expander("Which matrices drive each layer's score"):
            st.caption("`driver`: the matrix farthest from the layer's score; `left out`: "
                       "trimmed or flagged fits not used; `!` marks a flagged fit.")  # fmt: skip
            st.dataframe(score_table.drop(columns=["n_matrices"]), hide_index=True,
                         width="stretch", key="alloc_scores")  # fmt: skip
    everything = {f"Current: {name}": current, **comparisons}
    if ctx["module_shapes"]:
        params = parameters_table(everything, ctx["module_shapes"])
        cols = st.columns(len(params))
        for col, (_, prow) in zip(cols, params.iterrows(), strict=True):
            full = prow["allocation"]  # short names on the tiles, the full one in the help
            short = "Current" if full.startswith("Current:") else full.split(" (")[0]
            col.metric(short, f"{prow['trainable_parameters'] / 1e6:,.2f} M",
                       help=f"{full}: {prow['total_experts']} experts, {prow['min_per_layer']}–"
                       f"{prow['max_per_layer']} per layer")  # fmt: skip
        st.caption(f"Trainable parameters (rank 8 on every projection + routers), sized from "
                   f"{ctx['shapes_from']}.")  # fmt: skip
    table = allocation_table(current, alphas)
    with st.expander("Experts per layer (table)"):
        st.dataframe(table, hide_index=True, width="stretch")
    e1, e2, e3 = st.columns(3)
    with e1:
        st.download_button("Export allocation (JSON)", current.to_json().encode("utf-8"),
                           file_name="allocation.json", mime="application/json",
                           key="alloc_export", on_click="ignore")  # fmt: skip
    with e2:
        ui.csv_download("Experts per layer (CSV)", table, "allocation.csv", "alloc_csv")
    with e3:
        if st.button("Use for fine-tune", type="primary", key="alloc_use"):
            # Tied to this model and fit: another model is never offered it as "Current".
            ui.set_allocation(
                dataclasses.replace(current, label=name),
                ctx["choice"],
                layer_score=score if current.alphas is not None else None,
                exclude_unreliable=bool(reliable_only and current.alphas is not None),
                shape=shape if mode == MODE_MOLA and not imported else None,
            )
            st.success(f"Stored for the Fine-tune page: {name} ({current.total} experts).")
