"""AlphaLoRA Studio — home page: pick a model, run its spectral analysis, see what each page does.

Run with ``python -m alphalora app`` (or ``streamlit run app.py``).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from alphalora.allocation.presets import paper_preset
from alphalora.errors import AlphaLoRAError
from alphalora.plots.spectra import layer_alpha_figure
from alphalora.spectral.analysis_types import FIT_MODES
from alphalora.spectral.embedded import EMBEDDED_MODEL
from ui import common as ui
from ui.state import (
    DEVICES,
    KIND_CUSTOM,
    KIND_EMBEDDED,
    KIND_PAPER,
    PAPER_LABEL,
    ModelChoice,
    custom_choice,
)

OPTIONS = {
    KIND_EMBEDDED: f"Embedded: {EMBEDDED_MODEL.name} (offline, {EMBEDDED_MODEL.n_layers} layers)",
    KIND_PAPER: PAPER_LABEL,
    KIND_CUSTOM: "Hugging Face hub id or local folder",
}

PAGE_TEXT = (
    "α per layer and module, heat map, the ESD of any matrix on log-log axes with its power-law "
    "fit, flagged fits, CSV/JSON downloads.",
    "Turn layer alphas into experts per layer (β or temperature, budget, bounds, "
    "official/MoLA/uniform), compare, export/import JSON.",
    "Launch MoE-LoRA fine-tunes as background jobs and watch loss, aux loss, accuracy and "
    "router load live.",
    "Every stored run: filter, overlay curves, compare accuracy, parameters and speed, download "
    "adapters.",
    "Interactive explainer: random vs heavy-tailed spectra, how α is fitted, why a high α means "
    "less training, how β reshapes the allocation.",
)


def home() -> None:
    """The home page: model picker, analysis summary, a guide to the other pages."""
    ui.page_setup("Home", ":material/home:")

    st.title("AlphaLoRA Studio")
    st.markdown(
        "Layer-wise LoRA expert allocation from **heavy-tailed self-regularisation**: the "
        "eigenvalue spectrum of each weight matrix follows a power law with exponent **α**; "
        "layers with a larger α are less well trained and receive **more LoRA experts** "
        "(AlphaLoRA, Qing et al. 2024, building on MoLA)."
    )

    committed = ui.current_model()

    st.subheader("1 · Choose a model")
    with st.form("model_form", border=True):
        kind = st.radio(
            "Model",
            list(OPTIONS),
            index=list(OPTIONS).index(committed.kind),
            format_func=OPTIONS.get,
            horizontal=True,
            key="home_kind",
        )
        ref_text = st.text_input(
            "Hub id (org/name) or local folder — used when the third option is selected",
            value=committed.ref if committed.kind == KIND_CUSTOM else "",
            placeholder="HuggingFaceTB/SmolLM2-135M-Instruct or /path/to/model",
            key="home_ref",
        )
        c1, c2 = st.columns(2)
        fit = c1.selectbox(
            "Fit mode",
            FIT_MODES,
            index=list(FIT_MODES).index(committed.fit),
            help="hill-peak: AlphaLoRA's xmin search near the histogram peak (default). "
            "clauset: every candidate xmin, as the `powerlaw` package.",
            key="home_fit",
        )
        device = c2.selectbox(
            "Device", DEVICES, index=list(DEVICES).index(committed.device), key="home_device"
        )
        submitted = st.form_submit_button("Analyse", type="primary")

    if submitted:
        try:
            if kind == KIND_CUSTOM:
                choice = custom_choice(ref_text, fit, device)
            elif kind == KIND_PAPER:
                choice = ModelChoice(KIND_PAPER, "paper", fit, device)
            else:
                choice = ModelChoice(KIND_EMBEDDED, "embedded", fit, device)
        except AlphaLoRAError as exc:
            st.error(str(exc))
        else:
            # A model becomes current only once its analysis succeeded: a typo must not leave
            # every other page showing an error (and retrying it on each visit).
            if choice.is_paper or ui.get_analysis(choice) is not None:
                ui.set_model(choice)
                committed = choice
            else:
                st.info(f"The current model stays **{committed.label()}**.")

    st.subheader("2 · Summary")
    if committed.is_paper:
        preset = paper_preset()
        st.info(
            "The paper preset uses the **published** per-layer alphas of Llama-2-7B (no weights "
            "are downloaded): the Allocation page shows the expert allocation they imply "
            f"(budget {preset['budget']}, β = {preset['beta']})."
        )
        m1, m2, m3 = st.columns(3)
        m1.metric("Layers", preset["n_layers"])
        m2.metric("Matrices per layer", len(preset["module_shapes"]))
        m3.metric("Parameters", "6.7 B")
        layers = pd.DataFrame({"layer": range(preset["n_layers"]), "alpha_mean": preset["alphas"]})
        ui.plot(
            layer_alpha_figure(layers, title="Published layer α of Llama-2-7B"), key="home_alpha"
        )
        ui.csv_download("Layer alphas (CSV)", layers, "llama2-7b-layer-alphas.csv", "home_csv")
    else:
        result = ui.get_analysis(committed)
        if result is not None:
            s = result.summary()
            st.markdown(f"**{s['model']}** · {s.get('family')} · `{committed.ref}`")
            cols = st.columns(5)
            cols[0].metric("Layers", s["layers"])
            cols[1].metric("Matrices", s["matrices"])
            params = s.get("parameters")
            cols[2].metric("Parameters", f"{params / 1e6:,.1f} M" if params else "—")
            cols[3].metric("Mean α", f"{s['alpha_mean']:.2f}")
            cols[4].metric("Flagged fits", s["flagged"])
            how = (
                "loaded from the cache" if s["from_cache"] else f"computed in {s['seconds']:.1f} s"
            )
            st.caption(
                f"Fit `{s['fit']}` on `{s['device']}`, {how}. Eigenvalues are those of WᵀW "
                "(no 1/N). Details per matrix on the Spectra page."
            )
            ui.plot(layer_alpha_figure(result.layers, show_kinds=False), key="home_alpha")
            ui.csv_download("Layer table (CSV)", result.layers, "layers.csv", "home_csv")

    st.subheader("3 · What each page is for")
    for page, text in zip(PAGES[1:], PAGE_TEXT, strict=True):
        c1, c2 = st.columns([1, 5])
        c1.page_link(page)
        c2.markdown(text)


# URL paths are left to Streamlit, which infers the same names (Spectra, Allocation, …) as its
# pages/-folder mode: a deep link opened as the server's very first request resolves either way.
PAGES = [
    st.Page(home, title="Home", icon=":material/home:", default=True),
    st.Page("pages/1_Spectra.py", title="Spectra", icon=":material/ssid_chart:"),
    st.Page("pages/2_Allocation.py", title="Allocation", icon=":material/tune:"),
    st.Page("pages/3_Fine-tune.py", title="Fine-tune", icon=":material/rocket_launch:"),
    st.Page("pages/4_Runs.py", title="Runs", icon=":material/history:"),
    st.Page("pages/5_Learn.py", title="Learn", icon=":material/school:"),
]

st.navigation(PAGES).run()
