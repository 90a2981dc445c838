"""The app across pages (AppTest): choices kept on a page switch, the last good model stays
current, the sidebar is never a step behind, launches checked before they start, what a run is
doing (phase, n/total, time left, a cancel said plainly) and the stored allocation tied to its
model. Uses the seeded data directory of ``test_app_pages``."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from test_app_pages import (  # noqa: F401  (fixtures)
    _app,
    _charts,
    _clean,
    _commit,
    _isolated_home,
    _metrics,
    _multiselect,
    app_home,
)
from train_helpers import save_tiny_model, toy_reviews, write_jsonl

from alphalora.allocation.model import Allocation
from alphalora.store.run_store import RunStore

FT = "pages/3_Fine-tune.py"
RUNS = "pages/4_Runs.py"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("flow") / "tiny-model")


def _sidebar(at) -> str:
    return (
        " ".join(m.value for m in at.sidebar.markdown)
        + " "
        + " ".join(c.value for c in at.sidebar.caption)
    )


def _progress_texts(at) -> list[str]:
    return [p.proto.text for p in at.get("progress")]


def _fake_active_run(store: RunStore, steps: int = 40, name: str = "fake") -> str:
    """A run that reconcile sees as alive: running, its pid this test process."""
    run_id = store.create_run({"steps": steps, "model": "embedded", "method": "moe-lora"},
                              name=name, status="running")  # fmt: skip
    store.update_run(run_id, pid=os.getpid())
    return run_id


def _finish(store: RunStore, *run_ids: str) -> None:
    for run_id in run_ids:
        store.update_run(run_id, status="completed", pid=None)


# --------------------------------------------------------------------------- 1 · state


def test_fine_tune_and_runs_choices_survive_a_page_switch(tmp_path):
    store = RunStore()
    active = _fake_active_run(store)
    at = _app().switch_page(FT).run()
    _clean(at)
    watched = _multiselect(at, "Runs to watch").value
    assert watched == [active]  # an active run is watched by default
    task = write_jsonl(tmp_path / "reviews.jsonl", toy_reviews(40))
    at.radio(key="ft_task_mode").set_value("Upload a JSONL/CSV file").run()
    at.file_uploader(key="ft_upload").set_value(("r.jsonl", task.read_bytes(), "application/json"))
    at.run()
    at.number_input(key="ft_steps").set_value(7).run()
    at.select_slider(key="ft_lr").set_value(1e-3).run()
    at.selectbox(key="ft_device").set_value("cpu").run()
    at.multiselect(key="ft_allocs").set_value(["current", "lora"]).run()
    _clean(at)

    at.switch_page("pages/5_Learn.py").run()
    at.switch_page(FT).run()
    _clean(at)
    assert at.number_input(key="ft_steps").value == 7
    assert at.select_slider(key="ft_lr").value == 1e-3
    assert at.selectbox(key="ft_device").value == "cpu"
    assert at.multiselect(key="ft_allocs").value == ["current", "lora"]
    assert at.radio(key="ft_task_mode").value == "Upload a JSONL/CSV file"
    assert any("Using **r.jsonl**, uploaded earlier" in c.value for c in at.caption)
    assert _multiselect(at, "Runs to watch").value == [active]  # still watched
    assert any(b.label == "Cancel" for b in at.button)

    # Runs: the runs compared (and their Cancel button) survive a visit elsewhere too.
    other = _fake_active_run(store, name="other")
    _finish(store, other)
    at.switch_page(RUNS).run()
    _clean(at)
    _multiselect(at, "Runs to compare").set_value([active]).run()
    at.text_input(key="runs_search").set_value("fake").run()
    at.switch_page("app.py").run()
    at.switch_page(RUNS).run()
    _clean(at)
    assert at.text_input(key="runs_search").value == "fake"
    assert _multiselect(at, "Runs to compare").value == [active]
    assert any(b.label == "Cancel" for b in at.button)
    _finish(store, active)


def test_the_spectrum_picked_on_spectra_survives_a_page_switch():
    at = _app().switch_page("pages/1_Spectra.py").run()
    at.selectbox(key="spectra_layer").set_value(7).run()
    at.selectbox(key="spectra_kind").set_value("v_proj").run()
    at.switch_page("pages/2_Allocation.py").run()
    at.switch_page("pages/1_Spectra.py").run()
    _clean(at)
    assert at.selectbox(key="spectra_layer").value == 7
    assert at.selectbox(key="spectra_kind").value == "v_proj"


# --------------------------------------------------------------------------- 2 and 3 · model


def test_a_failed_model_leaves_the_last_good_one_current_and_the_sidebar_follows(tiny):
    at = _commit(_app(), "custom", str(tiny))
    _clean(at)
    assert str(tiny) in _sidebar(at)  # drawn after the analysis, in the same run
    at = _commit(at, "custom", "/nonexistent/model/path")
    assert not at.exception
    assert "does not exist" in at.error[0].value
    assert any(f"current model stays **{tiny}**" in i.value for i in at.info)
    assert str(tiny) in _sidebar(at) and "/nonexistent" not in _sidebar(at)
    for page in ("pages/1_Spectra.py", "pages/2_Allocation.py", FT):
        at.switch_page(page).run()
        _clean(at)  # no error and no new analysis attempt: the tiny model is current
        assert not at.get("status")
    at.switch_page("pages/2_Allocation.py").run()
    at.button(key="alloc_use").click().run()
    assert "Allocation for fine-tune" in _sidebar(at)  # the same run, not one click later


# --------------------------------------------------------------------------- 4 · launch checks


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("/nonexistent/model/path", "not found: no such folder"),
        ("this is not a model", "not found: no such folder or hub id"),
        ("someorg/never-downloaded", "not in the Hugging Face cache"),
    ],
)
def test_a_launch_with_a_bad_model_shows_an_error_and_writes_no_run(model, message):
    at = _app().switch_page(FT).run()
    at.text_input(key="ft_model").set_value(model).run()
    at.button(key="ft_launch").click().run()
    assert not at.exception
    assert any(message in e.value and e.value.startswith("Not launched") for e in at.error)
    assert RunStore().list_runs().empty  # nothing started, nothing to clean up


def test_an_absurd_or_mismatched_allocation_is_refused_before_launch(tiny):
    at = _app().switch_page("pages/2_Allocation.py").run()
    # 10⁹ experts per layer is over the library's bound: refused on import, no traceback.
    absurd = {
        **Allocation(experts=(1,) * 30, top_k=(1,) * 30, method="custom", budget=30).to_dict()
    }
    absurd.update(experts=[10**9] * 30, budget=30 * 10**9)
    at.file_uploader(key="alloc_import").set_value(
        ("absurd.json", json.dumps(absurd).encode(), "application/json")
    )
    at.run()
    assert not at.exception
    assert any("supported maximum" in e.value for e in at.error)
    # 30,000 per layer is within the bound (900,000 in all) but dwarfs the model: refused at launch.
    huge = Allocation(experts=(30_000,) * 30, top_k=(2,) * 30, method="custom", budget=900_000)
    at.file_uploader(key="alloc_import").set_value(
        ("huge.json", huge.to_json().encode(), "application/json")
    )
    at.run()
    at.button(key="alloc_use").click().run()
    assert not at.exception
    at.switch_page(FT).run()
    assert "(900000 experts)" in at.multiselect(key="ft_allocs").format_func("current")
    at.button(key="ft_launch").click().run()
    error = next(e.value for e in at.error if e.value.startswith("Not launched"))
    assert "900,000 experts" in error and "parameters of the model itself" in error
    # The embedded model's allocation (30 layers) on the 2-layer tiny model: refused too.
    at.text_input(key="ft_model").set_value(str(tiny)).run()
    at.button(key="ft_launch").click().run()
    assert any("30 layers but" in e.value and "has 2" in e.value for e in at.error)
    assert RunStore().list_runs().empty


# --------------------------------------------------------------------------- 6 · what a run does


def test_phase_count_time_left_and_a_plain_cancel_with_resume():
    store = RunStore()
    run_id = _fake_active_run(store)
    store.merge_summary(run_id, progress={"phase": "loading model", "done": None, "total": None,
                                          "step": 0, "steps": 40,
                                          "at": "2026-01-01T00:00:00+00:00"})  # fmt: skip
    at = _app().switch_page(FT).run()
    _clean(at)
    assert "loading model… · step 0/40" in _progress_texts(at)
    store.merge_summary(run_id, progress={"phase": "evaluating", "done": 40, "total": 200,
                                          "step": 0, "steps": 40,
                                          "at": "2026-01-01T00:00:10+00:00"})  # fmt: skip
    at.run()
    assert "evaluating 40/200 held-out examples (before training)" in _progress_texts(at)
    store.merge_summary(run_id, progress={"phase": "evaluating", "done": 120, "total": 200,
                                          "step": 0, "steps": 40,
                                          "at": "2026-01-01T00:00:30+00:00"})  # fmt: skip
    at.run()
    assert (
        "evaluating 120/200 held-out examples (before training) · about 20 s left"
        in _progress_texts(at)
    )
    for step in range(1, 14):
        store.log_metrics(run_id, step, {"train_loss": 1.0, "seconds_per_step": 2.0}, "train")
    store.merge_summary(run_id, progress={"phase": "training", "done": 13, "total": 40,
                                          "step": 13, "steps": 40,
                                          "at": "2026-01-01T00:01:00+00:00"})  # fmt: skip
    at.run()
    assert "training · step 13/40 · about 54 s left" in _progress_texts(at)
    # The trainer stops on a user's cancel: said plainly, in orange, with Resume at hand.
    store.update_run(run_id, status="cancelled",
                     error="stopped by SIGTERM at step 13/40; resume with --resume")  # fmt: skip
    at.run()
    assert not at.error  # not a red error with command-line wording
    assert any(":orange[cancelled at step 13/40]" == m.value for m in at.markdown)
    assert any(b.label == "Resume" for b in at.button)
    assert not any("--resume" in m.value for m in at.markdown)


FAKE_WORKER = """
import json, signal, sys, time
from pathlib import Path
from alphalora.store.records import now_iso
from alphalora.store.run_store import RunStore
args = sys.argv[1:]
run_id = args[args.index("--run-id") + 1]
store = RunStore()
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
store.update_run(run_id, status="running", started_at=now_iso(), heartbeat_at=now_iso())
frame = store.metrics(run_id)
step = int(frame["step"].max()) if len(frame) else 0
while not stop:
    step += 1
    store.log_metrics(run_id, step, {"train_loss": 1.0, "seconds_per_step": 0.1}, "train")
    time.sleep(0.1)
store.update_run(run_id, status="cancelled", finished_at=now_iso(),
                 error=f"stopped by SIGTERM at step {step}/40; resume with --resume")
"""


def test_cancel_and_resume_update_the_row_without_another_click(tmp_path):
    from alphalora.runs import jobs

    worker = tmp_path / "worker.py"
    worker.write_text(FAKE_WORKER)
    store = RunStore()
    run_id = jobs.start_run({"steps": 40}, name="w", store=store,
                            command=[sys.executable, str(worker)])  # fmt: skip
    deadline = time.monotonic() + 60
    while store.metric_count(run_id) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    at = _app().switch_page(RUNS).run()
    _clean(at)
    cancel = next(b for b in at.button if b.label == "Cancel")
    cancel.click().run()
    assert store.get_run(run_id)["status"] == "cancelled"
    assert any(m.value.startswith(":orange[cancelled at step ") for m in at.markdown)
    resume = next(b for b in at.button if b.label == "Resume")
    resume.click().run()
    assert store.get_run(run_id)["status"] in ("queued", "running")
    assert any(b.label == "Cancel" for b in at.button)  # the same run shows the new state
    assert not any(m.value.startswith(":orange[cancelled") for m in at.markdown)
    assert "cancel" in jobs.cancel_run(run_id, store=store, timeout=15)


# --------------------------------------------------------------------------- 9 · allocation


def test_the_stored_allocation_is_offered_only_for_its_model_and_fit(tiny):
    at = _commit(_app(), "custom", str(tiny))
    at.switch_page("pages/2_Allocation.py").run()
    at.slider(key="alloc_budget").set_value(7).run()
    at.button(key="alloc_use").click().run()
    at.switch_page(FT).run()
    _clean(at)
    current = at.multiselect(key="ft_allocs").format_func("current")
    assert "(7 experts)" in current
    # Another fit of the same model: the allocation (made from other alphas) is not offered.
    at.switch_page("app.py").run()
    at.selectbox(key="home_fit").set_value("clauset")
    at = _commit(at, "custom", str(tiny))
    _clean(at)
    at.switch_page(FT).run()
    assert "(7 experts)" not in at.multiselect(key="ft_allocs").format_func("current")
    assert any("made for another model or fit" in c.value for c in at.caption)
    assert "none for this model/fit" in _sidebar(at)
    # Another model: not offered either; back to the first model and fit: offered again.
    at.switch_page("app.py").run()
    at = _commit(at, "embedded")
    at.switch_page(FT).run()
    assert "(7 experts)" not in at.multiselect(key="ft_allocs").format_func("current")
    at.switch_page("app.py").run()
    at.selectbox(key="home_fit").set_value("hill-peak")
    at = _commit(at, "custom", str(tiny))
    at.switch_page(FT).run()
    assert "(7 experts)" in at.multiselect(key="ft_allocs").format_func("current")


# --------------------------------------------------------------------------- 8 · layout


def test_allocation_titles_and_labels_fit_and_beta_has_one_range():
    from alphalora.plots.style import TITLE_WRAP_CHARS

    at = _commit(_app(), "paper").switch_page("pages/2_Allocation.py").run()
    at.radio(key="alloc_mode").set_value("AlphaLoRA official").run()
    at.slider(key="alloc_beta").set_value(10.0).run()
    at.slider(key="alloc_budget").set_value(32).run()
    _clean(at)
    title = _charts(at)[0]["layout"]["title"]["text"]
    assert title.replace("<br>", " ") == (
        "Experts per layer — AlphaLoRA official (T=32, β=10) — 17 layers got 0 experts"
    )
    assert all(len(line) <= TITLE_WRAP_CHARS for line in title.split("<br>"))
    assert list(_metrics(at)) == ["Current", "Uniform", "MoLA 8642"]  # short tile labels
    assert len(at.toggle(key="alloc_use_tau").label) <= 25  # not cut at 1400 px
    at.toggle(key="alloc_use_tau").set_value(True).run()
    at.slider(key="alloc_tau").set_value(1.65).run()
    at.radio(key="alloc_mode").set_value("AlphaLoRA (default)").run()
    _clean(at)
    title = _charts(at)[0]["layout"]["title"]["text"].replace("<br>", " ")
    assert "β=0.606" in title and "0.60606" not in title
    at.toggle(key="alloc_use_tau").set_value(False).run()
    alloc_beta = at.slider(key="alloc_beta")
    at.switch_page("pages/5_Learn.py").run()
    learn_beta = at.slider(key="learn_beta")
    assert (learn_beta.min, learn_beta.max, learn_beta.step) == (
        alloc_beta.min,
        alloc_beta.max,
        alloc_beta.step,
    )
