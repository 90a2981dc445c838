"""Every page of the Streamlit app under ``streamlit.testing.v1.AppTest`` on the embedded model.

The embedded model's analysis is computed once per test session into a shared data directory
(``seeded_app_home``), which every test of this module uses as its ALPHALORA_HOME; tests that
need an empty run store point ALPHALORA_RUNS_DB at their own file.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # pages import ui.common from the app folder
    sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from alphalora.allocation.params import trainable_parameters  # noqa: E402
from alphalora.allocation.presets import LLAMA2_7B_LAYER_ALPHAS, LLAMA2_7B_MODULE_SHAPES  # noqa: E402
from alphalora.allocation.softmax_rules import alphalora_allocation, alphalora_official  # noqa: E402

APP = ROOT / "app.py"
TIMEOUT = 240  # the first analysis in a process may have to open the GGUF (seconds)


def seeded_app_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding the embedded model's analysis (hill-peak), computed once per
    test session and shared by the app tests and the browser test."""
    home = tmp_path_factory.getbasetemp() / "alphalora-app-home"
    marker = home / ".seeded"
    if marker.exists():
        return home
    home.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("ALPHALORA_HOME")
    os.environ["ALPHALORA_HOME"] = str(home)
    try:
        from alphalora.spectral.analysis import analyze
        from alphalora.spectral.analysis_types import AnalysisOptions

        analyze("embedded", AnalysisOptions(fit="hill-peak", device="auto"))
    finally:
        if old is None:
            os.environ.pop("ALPHALORA_HOME", None)
        else:
            os.environ["ALPHALORA_HOME"] = old
    marker.write_text("ok\n")
    return home


@pytest.fixture(scope="session")
def app_home(tmp_path_factory) -> Path:
    return seeded_app_home(tmp_path_factory)


@pytest.fixture(autouse=True)
def _isolated_home(app_home, monkeypatch, tmp_path):
    """Overrides conftest's per-test home: the shared, seeded one; a private run store."""
    monkeypatch.setenv("ALPHALORA_HOME", str(app_home))
    monkeypatch.setenv("ALPHALORA_RUNS_DB", str(tmp_path / "runs.sqlite"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return app_home


# --------------------------------------------------------------------------- helpers


def _app() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    return at.run()


def _clean(at: AppTest) -> None:
    """No exception element, no error box."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _values(trace: dict, axis: str = "y") -> list:
    """A trace's values, decoding plotly's typed-array form if used."""
    v = trace[axis]
    if isinstance(v, dict) and "bdata" in v:
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


def _bars(at: AppTest) -> list[int]:
    fig = _charts(at)[0]
    bar = next(t for t in fig["data"] if t["type"] == "bar")
    return [int(v) for v in _values(bar)]


def _multiselect(at: AppTest, label: str):
    """A multiselect by its label (the run lists' widgets get a fresh key when the page
    changes their selection, see ui.common.selection)."""
    return next(m for m in at.multiselect if m.label == label)


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _commit(at: AppTest, kind: str, ref: str = "") -> AppTest:
    """Pick a model on the home page and press Analyse."""
    at.radio(key="home_kind").set_value(kind)
    at.text_input(key="home_ref").set_value(ref)
    at.button[0].click()  # the form's submit button
    return at.run()


# --------------------------------------------------------------------------- home


def test_home_summarises_the_embedded_model_from_the_cache():
    at = _app()
    _clean(at)
    m = _metrics(at)
    assert m["Layers"] == "30" and m["Matrices"] == "210"
    assert m["Parameters"].endswith(" M")
    assert any(md.value.startswith("**SmolLM2-135M-Instruct**") for md in at.markdown)
    assert "Layer table (CSV)" in [b.proto.label for b in at.get("download_button")]
    assert any("loaded from the cache" in c.value for c in at.caption)
    assert len(at.get("page_link")) == 5  # what each page is for
    assert len(_charts(at)) == 1


def test_home_bad_hub_id_shows_an_error_not_an_exception():
    at = _commit(_app(), "custom", "no-such-org/no-such-model-xyz")
    assert not at.exception
    assert at.error and "no-such-org/no-such-model-xyz" in at.error[0].value
    # Issue 10: a failed model does not become current; the summary is still the embedded one.
    assert any("current model stays" in i.value for i in at.info)
    assert _metrics(at)["Layers"] == "30"


def test_home_missing_folder_and_empty_reference_show_errors(tmp_path):
    at = _commit(_app(), "custom", "")
    assert not at.exception and "hub id" in at.error[0].value
    at = _commit(at, "custom", str(tmp_path / "missing-model"))
    assert not at.exception and "does not exist" in at.error[0].value


def test_home_paper_preset_needs_no_weights():
    at = _commit(_app(), "paper")
    _clean(at)
    assert _metrics(at)["Layers"] == "32"
    fig = _charts(at)[0]
    assert _values(fig["data"][0]) == pytest.approx(list(LLAMA2_7B_LAYER_ALPHAS))


# --------------------------------------------------------------------------- spectra


def test_spectra_page_charts_selection_and_downloads():
    at = _app().switch_page("pages/1_Spectra.py").run()
    _clean(at)
    charts = _charts(at)
    assert len(charts) == 3  # layer α, heat map, ESD
    layer_fig, heat, esd = charts
    assert "layer" in layer_fig["layout"]["xaxis"]["title"]["text"]
    assert heat["data"][0]["type"] == "heatmap"
    assert esd["layout"]["xaxis"]["type"] == "log" and esd["layout"]["yaxis"]["type"] == "log"
    assert "WᵀW" in esd["layout"]["xaxis"]["title"]["text"]
    assert "model.layers.0." in esd["layout"]["title"]["text"]
    names = [t.get("name", "") for t in esd["data"]]
    assert any(n.startswith("power law α") for n in names) and any(
        n.startswith("xmin") for n in names
    )
    assert any(n.startswith("hill-peak peak") for n in names)
    assert any("α =" in c.value and "n_tail" in c.value for c in at.caption)
    # Another layer and matrix: the ESD follows.
    at.selectbox(key="spectra_layer").set_value(7).run()
    at.selectbox(key="spectra_kind").set_value("v_proj").run()
    _clean(at)
    assert "model.layers.7.self_attn.v_proj" in _charts(at)[2]["layout"]["title"]["text"]
    # The three flagged fits are listed; both tables can be downloaded.
    assert len(at.dataframe[0].value) == 3
    labels = [b.proto.label for b in at.get("download_button")]
    for needed in ("Layers (CSV)", "Layers (JSON)", "Matrices (CSV)", "Matrices (JSON)"):
        assert needed in labels


def test_spectra_page_with_the_paper_preset_explains_there_are_no_spectra():
    at = _commit(_app(), "paper").switch_page("pages/1_Spectra.py").run()
    _clean(at)
    assert at.info and "no spectra" in at.info[0].value
    assert len(_charts(at)) == 1


# --------------------------------------------------------------------------- allocation


def test_allocation_sliders_redraw_the_bars():
    at = _app().switch_page("pages/2_Allocation.py").run()
    _clean(at)
    bars = _bars(at)
    assert len(bars) == 30 and sum(bars) == 150 and len(set(bars)) > 1
    trace_names = [t["name"] for t in _charts(at)[0]["data"]]
    assert any(n.startswith("Uniform") for n in trace_names) and any(
        n.startswith("MoLA 8642") for n in trace_names
    )
    at.slider(key="alloc_beta").set_value(0.0).run()
    assert _bars(at) == [5] * 30  # β = 0 is uniform
    at.slider(key="alloc_budget").set_value(60).run()
    assert _bars(at) == [2] * 30
    at.slider(key="alloc_beta").set_value(6.0).run()
    at.number_input(key="alloc_max").set_value(3).run()
    _clean(at)
    assert max(_bars(at)) == 3 and sum(_bars(at)) == 60
    # Paper defaults restore T = 5 per layer and β = 2.5.
    next(b for b in at.button if b.label.startswith("Paper defaults")).click().run()
    assert at.slider(key="alloc_budget").value == 150 and at.slider(key="alloc_beta").value == 2.5


def test_allocation_temperature_toggle_and_modes():
    at = _app().switch_page("pages/2_Allocation.py").run()
    base = _bars(at)
    at.toggle(key="alloc_use_tau").set_value(True).run()
    _clean(at)
    assert at.slider(key="alloc_tau").value == pytest.approx(0.4)
    assert _bars(at) == base  # τ = 1/β draws the same allocation
    at.slider(key="alloc_tau").set_value(10.0).run()
    assert max(_bars(at)) - min(_bars(at)) <= 1  # hot: nearly uniform
    at.radio(key="alloc_mode").set_value("MoLA shape").run()
    at.selectbox(key="alloc_shape").set_value("2468").run()
    _clean(at)
    bars = _bars(at)
    assert bars[0] < bars[-1] and sum(bars) == 150  # ▽: more experts in the top layers


def test_allocation_impossible_bounds_show_an_error():
    at = _app().switch_page("pages/2_Allocation.py").run()
    at.number_input(key="alloc_min").set_value(6).run()
    assert not at.exception
    assert at.error and "cannot give 30 layers at least 6" in at.error[0].value


def test_allocation_paper_preset_official_mode_shows_the_paper_allocation():
    at = _commit(_app(), "paper").switch_page("pages/2_Allocation.py").run()
    at.radio(key="alloc_mode").set_value("AlphaLoRA official").run()
    _clean(at)
    expected = alphalora_official(LLAMA2_7B_LAYER_ALPHAS, 160, 2.5)
    assert _bars(at) == list(expected.experts)
    params = trainable_parameters(expected, LLAMA2_7B_MODULE_SHAPES)
    assert list(_metrics(at).values())[0] == f"{params / 1e6:,.2f} M"
    assert any("paper's published Llama-2-7B alphas" in c.value for c in at.caption)


def test_allocation_export_import_and_use_for_fine_tune():
    at = _app().switch_page("pages/2_Allocation.py").run()
    export = next(
        b for b in at.get("download_button") if b.proto.label == "Export allocation (JSON)"
    )
    assert export is not None
    custom = alphalora_allocation([1.0 + i / 10 for i in range(30)], 90, 1.0)
    at.file_uploader(key="alloc_import").set_value(
        ("mine.json", custom.to_json().encode(), "application/json")
    )
    at.run()
    _clean(at)
    assert _bars(at) == list(custom.experts)
    assert any("imported allocation" in i.value for i in at.info)
    at.button(key="alloc_use").click().run()
    stored = at.session_state["alphalora_allocation"]
    assert stored["experts"] == list(custom.experts)
    # A broken file and a file for another layer count are refused with a message.
    at.file_uploader(key="alloc_import").set_value(("bad.json", b"{not json", "application/json"))
    at.run()
    assert not at.exception and "not valid JSON" in at.error[0].value
    other = alphalora_allocation([2.0, 3.0], 4, 1.0)
    at.file_uploader(key="alloc_import").set_value(
        ("two.json", other.to_json().encode(), "application/json")
    )
    at.run()
    assert not at.exception and "2 layers but" in at.error[0].value
    assert len(_bars(at)) == 30  # back to the computed allocation


# --------------------------------------------------------------------------- runs


def _fake_run(store, tmp_path, name: str, status: str, acc: tuple[float, float] | None) -> str:
    """A run recorded the way the trainer records one (metrics, summary, adapter folder)."""
    from alphalora.store.records import run_dir

    run_id = store.create_run(
        {
            "name": name,
            "model": "embedded",
            "task": "rotten-tomatoes",
            "method": "moe-lora",
            "steps": 4,
        },
        name=name,
        allocation={"experts": [2, 3], "top_k": [2, 2], "label": f"{name} allocation"},
    )
    for step, loss in enumerate([2.0, 1.6, 1.3, 1.1], start=1):
        store.log_metrics(run_id, step, {"train_loss": loss, "aux_loss": 0.01}, split="train")
    if acc:
        store.log_metrics(
            run_id, 0, {"accuracy": acc[0], "eval_loss": 1.9, "router_load": [[0.5, 0.5]]}, "eval"
        )
        store.log_metrics(
            run_id, 4, {"accuracy": acc[1], "eval_loss": 1.0, "router_load": [[0.7, 0.3]]}, "eval"
        )
        adapter = run_dir(run_id) / "adapter"
        adapter.mkdir(parents=True, exist_ok=True)
        (adapter / "adapter_config.json").write_text('{"r": 8}')
        store.merge_summary(run_id, accuracy_before=acc[0], accuracy_after=acc[1])
        store.update_run(
            run_id, adapter_path=str(adapter), params_trainable=1000, seconds_per_step=0.5
        )
    store.update_run(
        run_id,
        status=status,
        error="CUDA out of memory: lower the batch" if status == "failed" else None,
    )
    return run_id


def test_runs_page_lists_filters_compares_and_offers_adapters(tmp_path):
    import ui.common
    from alphalora.store.run_store import RunStore

    at = _app().switch_page("pages/4_Runs.py").run()
    _clean(at)
    assert "No runs match" in at.info[0].value
    store = RunStore()
    good = _fake_run(store, tmp_path, "alphalora", "completed", (0.5, 0.75))
    also = _fake_run(store, tmp_path, "uniform", "completed", (0.5, 0.7))
    bad = _fake_run(store, tmp_path, "broken", "failed", None)
    at.run()
    assert not at.exception
    assert len(at.dataframe[0].value) == 3
    assert set(_multiselect(at, "Runs to compare").value) == {good, also}  # completed first
    charts = _charts(at)
    acc = charts[0]
    assert [t["name"] for t in acc["data"]] == ["before", "after"]
    assert sorted(_values(acc["data"][1])) == [0.7, 0.75]
    assert len(charts) == 4
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels.count("Download adapter (zip)") == 2
    # The adapter zip holds the adapter folder.
    folder = Path(store.get_run(good)["adapter_path"])
    with zipfile.ZipFile(io.BytesIO(ui.common.zip_folder(folder))) as zf:
        assert zf.namelist() == ["adapter/adapter_config.json"]
    # Filters.
    at.selectbox(key="runs_status").set_value("failed").run()
    assert at.dataframe[0].value["run_id"].tolist() == [bad]
    assert any("CUDA out of memory" in e.value for e in at.error)  # the run's error, as a message
    assert not at.exception
    at.selectbox(key="runs_status").set_value("all").run()
    at.text_input(key="runs_search").set_value("uniform").run()
    assert at.dataframe[0].value["run_id"].tolist() == [also]


# --------------------------------------------------------------------------- learn


def test_learn_page_sliders_drive_every_chart():
    at = _app().switch_page("pages/5_Learn.py").run()
    _clean(at)
    charts = _charts(at)
    assert len(charts) == 7
    assert any(t.get("name") == "Marchenko–Pastur (random)" for t in charts[0]["data"])

    def fitted_alpha() -> float:
        cap = next(c.value for c in at.caption if c.value.startswith("Fitted α"))
        return float(cap.split("**")[1])

    random_alpha = fitted_alpha()  # Gaussian entries first
    at.radio(key="learn_kind").set_value("correlated").run()
    heavy = fitted_alpha()
    at.slider(key="learn_corr").set_value(2.5).run()
    _clean(at)
    assert fitted_alpha() < heavy < random_alpha  # stronger correlations, smaller α
    # xmin slider: the second line on the ESD follows the chosen candidate.
    before = next(c.value for c in at.caption if c.value.startswith("Best:"))
    at.slider(key="learn_xmin_idx").set_value(0).run()
    after = next(c.value for c in at.caption if c.value.startswith("Best:"))
    assert before.split("Yours:")[0] == after.split("Yours:")[0] and before != after
    # β = 0 flattens the allocation of the last tab.
    at.slider(key="learn_beta").set_value(0.0).run()
    alloc_fig = next(
        c for c in _charts(at) if c["layout"]["title"]["text"].startswith("Experts per layer")
    )
    bars = next(t for t in alloc_fig["data"] if t["type"] == "bar")
    assert len(set(_values(bars))) == 1
    at.select_slider(key="learn_strength").set_value(5.0).run()
    _clean(at)


# --------------------------------------------------------------------------- fine-tune


def test_fine_tune_bad_upload_shows_an_error():
    at = _app().switch_page("pages/3_Fine-tune.py").run()
    _clean(at)
    assert any(
        "Rotten Tomatoes sentences: 8030 for training, 500 held out" in c.value for c in at.caption
    )
    at.radio(key="ft_task_mode").set_value("Upload a JSONL/CSV file").run()
    at.file_uploader(key="ft_upload").set_value(
        ("bad.csv", b"text,label_is_missing\nhello,\n", "text/csv")
    )
    at.run()
    assert not at.exception
    assert at.error and at.error[0].value.startswith("bad.csv:")
    at.button(key="ft_launch").click().run()
    assert any("Upload a valid task file first" in e.value for e in at.error)


@pytest.mark.slow
def test_fine_tune_launches_a_tiny_run_and_watches_it(tmp_path):
    from train_helpers import save_tiny_model, toy_reviews, write_jsonl

    from alphalora.store.run_store import RunStore

    model = save_tiny_model(tmp_path / "tiny-model")
    task = write_jsonl(tmp_path / "reviews.jsonl", toy_reviews(60))
    at = _commit(_app(), "custom", str(model))
    _clean(at)
    assert _metrics(at)["Layers"] == "2"
    at.switch_page("pages/3_Fine-tune.py").run()
    _clean(at)
    at.radio(key="ft_task_mode").set_value("Upload a JSONL/CSV file").run()
    at.file_uploader(key="ft_upload").set_value(
        ("reviews.jsonl", task.read_bytes(), "application/json")
    )
    at.run()
    assert any("reviews.jsonl: 48 training and 12 held-out" in s.value for s in at.success)
    assert len(at.multiselect(key="ft_allocs").value) == 1  # the current allocation only
    at.number_input(key="ft_steps").set_value(4)
    at.number_input(key="ft_batch").set_value(4)
    at.number_input(key="ft_len").set_value(32)
    at.number_input(key="ft_eval_every").set_value(2)
    at.number_input(key="ft_eval_n").set_value(8)
    at.selectbox(key="ft_device").set_value("cpu")
    at.button(key="ft_launch").click().run()
    _clean(at)
    assert any(b.label == "Cancel" for b in at.button)  # the live (fragment) view is on
    launched = at.session_state["alphalora_runs"]
    assert len(launched) == 1
    run_id = launched[0]
    store = RunStore()
    config = store.get_run(run_id)["config"]
    assert config["model"] == str(model) and config["task"].endswith("reviews.jsonl")
    assert len(config["allocation"]["experts"]) == 2 and sum(config["allocation"]["experts"]) == 10
    deadline = time.monotonic() + 240
    while store.get_run(run_id)["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(1.0)
    run = store.get_run(run_id)
    assert run["status"] == "completed", run.get("error")
    at.run()
    _clean(at)
    charts = {c["layout"]["title"]["text"]: c for c in _charts(at)}
    assert len(charts["Training loss"]["data"]) == 1
    assert len(_values(charts["Training loss"]["data"][0])) == 4
    assert charts["Held-out accuracy"]["data"]
    router = next(c for t, c in charts.items() if t.startswith("Router load"))
    assert router["data"][0]["type"] == "heatmap"
    at.switch_page("pages/4_Runs.py").run()
    _clean(at)
    assert run_id in at.dataframe[0].value["run_id"].tolist()
    assert "Download adapter (zip)" in [b.proto.label for b in at.get("download_button")]


def test_fine_tune_offers_ddp_launch_only_with_several_gpus(monkeypatch):
    """With one GPU or none there is no process count; with several, the chosen count reaches
    the job launcher (accelerate launch, one process per GPU)."""
    import alphalora.runs.jobs as jobs
    import ui.common

    at = _app().switch_page("pages/3_Fine-tune.py").run()
    _clean(at)
    assert not [n for n in at.number_input if n.key == "ft_processes"]

    calls: list[dict] = []

    def fake_start_run(config, **kwargs):
        calls.append(kwargs)
        return f"run-{len(calls)}"

    monkeypatch.setattr(ui.common, "cuda_device_count", lambda: 4)
    monkeypatch.setattr(jobs, "start_run", fake_start_run)
    at.run()
    _clean(at)
    at.number_input(key="ft_processes").set_value(2)
    at.button(key="ft_launch").click().run()
    _clean(at)
    assert calls and all(c["num_processes"] == 2 for c in calls)
