"""Streamlit helpers shared by the app's pages: session state, cached analyses, downloads.

Kept outside ``alphalora/`` (the library never imports Streamlit) and outside ``pages/``
(every ``.py`` there becomes a page). Pages call :func:`page_setup` first.
"""

from __future__ import annotations

import io
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from alphalora.allocation.model import Allocation
from alphalora.allocation.presets import paper_preset
from alphalora.errors import AlphaLoRAError
from alphalora.paths import data_dir
from alphalora.spectral.analysis import analyze
from alphalora.spectral.analysis_types import AnalysisOptions, AnalysisResult
from ui.choices import allocation_for, allocation_key
from ui.state import KIND_EMBEDDED, ModelChoice, module_shapes_from_matrices

MODEL_KEY = "alphalora_model"  # the committed ModelChoice
ALLOCATION_KEY = "alphalora_allocation"  # Allocation.to_dict() chosen "for fine-tune"
ALLOCATION_FOR_KEY = "alphalora_allocation_for"  # allocation_key() of the model/fit it is for
RUNS_KEY = "alphalora_runs"  # run ids launched in this session (newest first)
SAVED_KEY = "alphalora_saved_widgets"  # widget key → last value, kept across page switches
_MAX_ANALYSES = 8
_PAGE = threading.local()  # this script run's sidebar placeholder


def page_setup(title: str, icon: str = ":material/monitoring:") -> None:
    """Page config, default session state and the sidebar summary of the current choices."""
    st.set_page_config(page_title=f"{title} · AlphaLoRA Studio", page_icon=icon, layout="wide")
    init_state()
    _save_widgets()
    _PAGE.sidebar = st.sidebar.empty()
    draw_sidebar()


def draw_sidebar() -> None:
    """(Re)draw the sidebar's summary of the current model and allocation; called again when
    either changes during a run, so the sidebar is never one step behind."""
    holder = getattr(_PAGE, "sidebar", None)
    if holder is None:
        return
    with holder.container():
        choice = current_model()
        st.caption("Current model")
        st.markdown(f"**{choice.label()}**  \nfit `{choice.fit}` · device `{choice.device}`")
        alloc = st.session_state.get(ALLOCATION_KEY)
        if alloc and chosen_allocation(choice) is not None:
            st.caption("Allocation for fine-tune")
            st.markdown(
                f"{alloc.get('label') or alloc.get('method')} ({alloc.get('total')} experts)"
            )
        elif alloc:
            st.caption("Allocation for fine-tune: none for this model/fit yet")


def remember(defaults: Mapping[str, Any]) -> None:
    """Call before a page draws its widgets: Streamlit forgets the values of widgets that are
    not on screen, so a page switch would reset them. Each key gets back its last value (or
    ``default`` on a first visit); :func:`page_setup` records the values at every run."""
    saved = st.session_state.setdefault(SAVED_KEY, {})
    for key, default in defaults.items():
        saved.setdefault(key, default)
        if key not in st.session_state:
            st.session_state[key] = saved[key]


def _save_widgets() -> None:
    """Record the current values of remembered widgets (at the start of a run the previous
    page's widgets still hold theirs, the user's last change included)."""
    saved = st.session_state.get(SAVED_KEY) or {}
    for key in saved:
        if key in st.session_state:
            saved[key] = st.session_state[key]


def selection(label: str, options: Sequence[str], key: str, *, format_func: Any = str) -> list[str]:
    """A multiselect whose value lives in session state under ``key`` rather than in the
    widget: set by the page (:func:`set_selection`) or by the user, it survives live-view
    refreshes and page switches (a widget's own state does not)."""
    state = st.session_state
    current = [r for r in state.setdefault(key, []) if r in options]
    widget = f"{key}__w{state.setdefault(key + '__v', 0)}"

    def changed() -> None:
        state[key] = list(state[widget])

    return st.multiselect(label, list(options), default=current, key=widget, on_change=changed,
                          format_func=format_func)  # fmt: skip


def set_selection(key: str, values: Sequence[str]) -> None:
    """Set a :func:`selection` from the page (the widget is drawn afresh with it)."""
    st.session_state[key] = list(values)
    st.session_state[key + "__v"] = st.session_state.get(key + "__v", 0) + 1


def init_state() -> None:
    """Defaults shared by every page: the embedded model with the hill-peak fit."""
    if MODEL_KEY not in st.session_state:
        st.session_state[MODEL_KEY] = ModelChoice()
    st.session_state.setdefault(RUNS_KEY, [])


def current_model() -> ModelChoice:
    """The model the user committed on the home page (embedded by default)."""
    init_state()
    return st.session_state[MODEL_KEY]


def set_model(choice: ModelChoice) -> None:
    """Commit a model choice for every page (and show it in the sidebar at once)."""
    st.session_state[MODEL_KEY] = choice
    draw_sidebar()


def set_allocation(allocation: Allocation, choice: ModelChoice, **provenance: Any) -> None:
    """Store ``allocation`` for the Fine-tune page, tied to the model and fit it was made for;
    ``provenance`` (layer_score, exclude_unreliable, shape) travels with it to the run row."""
    st.session_state[ALLOCATION_KEY] = {**allocation.to_dict(), **provenance}
    st.session_state[ALLOCATION_FOR_KEY] = allocation_key(choice.kind, choice.ref, choice.fit)
    draw_sidebar()


@st.cache_resource(show_spinner=False)
def _analysis_store() -> tuple[OrderedDict, threading.Lock]:
    """Process-wide store of computed analyses (shared by sessions, newest last)."""
    return OrderedDict(), threading.Lock()


def _store_key(choice: ModelChoice) -> tuple[str, ...]:
    return (*choice.key(), str(data_dir()))


def cached_analysis(choice: ModelChoice) -> AnalysisResult | None:
    """The analysis of ``choice`` if this process already holds it (no work, no UI)."""
    store, lock = _analysis_store()
    with lock:
        return store.get(_store_key(choice))


def get_analysis(choice: ModelChoice) -> AnalysisResult | None:
    """The analysis of ``choice``: from memory, else the library's disk cache or a fresh
    computation shown with a progress bar inside ``st.status``. Errors become ``st.error``."""
    if choice.is_paper:
        return None
    hit = cached_analysis(choice)
    if hit is not None:
        return hit
    error: str | None = None
    result: AnalysisResult | None = None
    with st.status(f"Analysing {choice.label()} …", expanded=True) as status:
        bar = st.progress(0.0, text="opening the model (reading headers)")

        def progress(done: int, total: int, name: str) -> None:
            frac = done / total if total else 1.0
            bar.progress(min(max(frac, 0.0), 1.0), text=f"{done}/{total} matrices · {name}")

        try:
            result = analyze(choice.ref, AnalysisOptions(fit=choice.fit, device=choice.device),
                             progress=progress)  # fmt: skip
        except AlphaLoRAError as exc:
            error = str(exc)
        except (OSError, ValueError, RuntimeError) as exc:  # unreadable files, bad configs
            error = f"Could not analyse {choice.ref!r}: {type(exc).__name__}: {exc}"
        if result is not None:
            how = "loaded from cache" if result.from_cache else f"{result.elapsed_s:.1f} s"
            status.update(label=f"Analysis ready ({how})", state="complete", expanded=False)
        else:
            status.update(label="Analysis failed", state="error", expanded=False)
    if error is not None:
        st.error(error)
        return None
    store, lock = _analysis_store()
    with lock:
        store[_store_key(choice)] = result
        while len(store) > _MAX_ANALYSES:
            store.popitem(last=False)
    return result


def model_context() -> dict[str, Any] | None:
    """What the allocation and fine-tune pages need about the current model: label, layer
    alphas, layer count, adapter module shapes and the analysis (None for the paper preset).
    Returns None (with a message shown) when the analysis failed."""
    choice = current_model()
    if choice.is_paper:
        preset = paper_preset()
        return {
            "choice": choice,
            "label": choice.label(),
            "alphas": list(preset["alphas"]),
            "n_layers": preset["n_layers"],
            "module_shapes": dict(preset["module_shapes"]),
            "shapes_from": "Llama-2-7B (hidden 4096, intermediate 11008, 32 heads)",
            "analysis": None,
            "model_ref": preset["model_id"],
        }
    result = get_analysis(choice)
    if result is None:
        return None
    alphas = result.layer_alphas
    bad = [i for i, a in enumerate(alphas) if not pd.notna(a)]
    if bad:
        st.error(
            f"Layers {bad} of {choice.label()} have no valid α (every fit failed), so no "
            "allocation can be computed. See the flagged fits on the Spectra page."
        )
        return None
    try:
        shapes = module_shapes_from_matrices(result.matrices)
    except AlphaLoRAError:
        shapes = {}
    return {
        "choice": choice,
        "label": result.model.get("name") or choice.label(),
        "alphas": alphas,
        "n_layers": len(alphas),
        "module_shapes": shapes,
        "shapes_from": "the analysed model's matrices",
        "analysis": result,
        "model_ref": choice.ref if choice.kind != KIND_EMBEDDED else "embedded",
    }


def chosen_allocation(choice: ModelChoice | None = None) -> Allocation | None:
    """The allocation stored by "use for fine-tune" for ``choice`` (the current model by
    default) and its fit; None when there is none, or it was made for another model or fit."""
    choice = choice or current_model()
    data = allocation_for(
        st.session_state.get(ALLOCATION_KEY),
        st.session_state.get(ALLOCATION_FOR_KEY),
        allocation_key(choice.kind, choice.ref, choice.fit),
    )
    if not data:
        return None
    try:
        return Allocation.from_dict(data)
    except AlphaLoRAError:
        return None


def csv_download(label: str, df: pd.DataFrame, file_name: str, key: str) -> None:
    """A download button with ``df`` as CSV."""
    st.download_button(label, df.to_csv(index=False).encode("utf-8"), file_name=file_name,
                       mime="text/csv", key=key, on_click="ignore")  # fmt: skip


def json_download(label: str, df: pd.DataFrame, file_name: str, key: str) -> None:
    """A download button with ``df`` as JSON records."""
    st.download_button(label, df.to_json(orient="records", indent=1).encode("utf-8"),
                       file_name=file_name, mime="application/json", key=key,
                       on_click="ignore")  # fmt: skip


def zip_folder(folder: str | Path) -> bytes:
    """The files of ``folder`` (recursively) as an in-memory zip archive."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AlphaLoRAError(f"The adapter folder {folder} does not exist (was the run deleted?).")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, arcname=str(Path(folder.name) / path.relative_to(folder)))
    return buf.getvalue()


def plot(fig: Any, key: str, **kwargs: Any) -> Any:
    """``st.plotly_chart`` with the modebar's PNG download kept and a stable key."""
    config = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}
    return st.plotly_chart(fig, key=key, config=config, **kwargs)


@st.cache_resource
def cuda_device_count() -> int:
    """GPUs visible to torch (0 without CUDA): more than one offers DDP launches."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
