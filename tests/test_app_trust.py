"""The app's trustworthy comparisons under ``AppTest`` on the embedded model: layer scores and
flagged layers on the Allocation page, provenance, seeds and equal-parameter LoRA baselines on
the Fine-tune page, intervals and paired tests on the Runs page."""

from __future__ import annotations

import pytest
from test_app_pages import (  # noqa: F401 - fixtures: the seeded data directory
    _app,
    _bars,
    _charts,
    _clean,
    _isolated_home,
    _values,
    app_home,
)

from alphalora.finetune.predictions import save_predictions
from alphalora.store.records import run_dir


def _frame(at, column: str):
    """The first dataframe on the page that has ``column``."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def test_allocation_page_layer_scores_and_flagged_layers():
    at = _app().switch_page("pages/2_Allocation.py").run()
    _clean(at)
    bars = _bars(at)
    # the numbers: with the mean, layer 10 (v_proj α ≈ 18) takes 19 of 150 experts and
    # layer 23 (a flagged o_proj fit) 9
    assert (bars[10], bars[23], sum(bars)) == (19, 9, 150)
    assert any("rests on flagged fits" in w.value and "[0, 23]" in w.value for w in at.warning)
    scores = _frame(at, "driver")
    assert scores.loc[scores["layer"] == 10, "driver"].item() == "v_proj 18.31"
    at.selectbox(key="alloc_score").set_value("median").run()
    _clean(at)
    median = _bars(at)
    assert median[10] == 8 and median[23] == 5 and sum(median) == 150
    fig = _charts(at)[0]
    assert "median α" in fig["layout"]["title"]["text"]
    assert fig["layout"]["yaxis2"]["title"]["text"] == "layer score: median α"
    at.checkbox(key="alloc_reliable").check().run()
    _clean(at)
    assert not any("rests on flagged fits" in w.value for w in at.warning)
    at.button(key="alloc_use").click().run()
    stored = at.session_state["alphalora_allocation"]
    assert stored["layer_score"] == "median" and stored["exclude_unreliable"] is True
    assert stored["label"].endswith("median α, reliable fits only")


def test_fine_tune_page_launches_named_seeded_and_equal_parameter_runs(monkeypatch):
    import alphalora.runs.jobs as jobs

    calls: list[tuple[dict, dict]] = []

    def fake_start_run(config, **kwargs):
        calls.append((config, kwargs))
        return f"run-{len(calls)}"

    monkeypatch.setattr(jobs, "start_run", fake_start_run)
    at = _app().switch_page("pages/2_Allocation.py").run()
    at.selectbox(key="alloc_score").set_value("trimmed").run()
    at.button(key="alloc_use").click().run()
    at.switch_page("pages/3_Fine-tune.py").run()
    _clean(at)
    label = at.multiselect(key="ft_allocs").format_func
    assert label("lora-ranks").startswith("LoRA with ranks by α")
    assert label("lora-uniform").startswith("LoRA with a uniform rank")
    assert at.multiselect(key="ft_allocs").value == ["current"]
    at.multiselect(key="ft_allocs").set_value(["current", "lora-ranks", "lora-uniform"]).run()
    _clean(at)
    assert any(c.value.startswith("Equal parameters: MoE-LoRA") for c in at.caption)
    at.number_input(key="ft_seeds").set_value(2)
    at.button(key="ft_launch").click().run()
    _clean(at)
    assert len(calls) == 6  # three runs × two seeds
    seeds = [(kw["name"], cfg["seed"]) for cfg, kw in calls]
    assert seeds[:2] == [("alphalora-s0", 0), ("alphalora-s1", 1)]
    groups = {cfg["extra"]["seed_group"] for cfg, _ in calls[:2]}
    assert len(groups) == 1
    alloc = calls[0][0]["allocation"]
    assert alloc["method"] == "alphalora" and alloc["layer_score"] == "trimmed"
    assert alloc["label"].endswith("· trimmed α") and alloc["beta"] == 2.5
    ranked = calls[2][0]
    assert ranked["method"] == "lora" and len(ranked["lora_config"]["rank_pattern"]) == 210
    assert "model.layers.29.mlp.down_proj" in ranked["lora_config"]["rank_pattern"]
    assert calls[4][0]["method"] == "lora" and calls[4][0]["rank"] > 8
    assert calls[4][1]["allocation"]["label"].startswith("LoRA r=")


def _run_with_predictions(store, name: str, correct: list[bool], group: str | None = None) -> str:
    config = {"name": name, "model": "embedded", "task": "rotten-tomatoes", "method": "moe-lora",
              "steps": 4, "extra": {"seed_group": group} if group else {}}  # fmt: skip
    run_id = store.create_run(config, name=name, allocation={"label": f"{name} allocation"})
    n = len(correct)
    save_predictions(run_dir(run_id), {
        "format": 1, "step": 4, "fingerprint": "same-examples", "n": n, "index": list(range(n)),
        "key": [f"k{i}" for i in range(n)], "predicted": ["x"] * n, "correct": correct,
    })  # fmt: skip
    acc = sum(correct) / n
    store.log_metrics(run_id, 4, {"accuracy": acc}, "eval")
    store.merge_summary(run_id, accuracy_before=0.5, accuracy_after=acc, n_eval=n)
    store.update_run(run_id, status="completed", params_trainable=1000)
    return run_id


def test_runs_page_shows_intervals_paired_tests_and_seed_means():
    from alphalora.store.run_store import RunStore

    store = RunStore()
    base = [True] * 160 + [False] * 40
    better = [True] * 190 + [False] * 10  # 30 more right answers of 200
    near = [True] * 161 + [False] * 39
    a = _run_with_predictions(store, "base", base, group="g")
    b = _run_with_predictions(store, "better", better)
    c = _run_with_predictions(store, "near", near, group="g")
    at = _app().switch_page("pages/4_Runs.py").run()
    picker = next(m for m in at.multiselect if m.label == "Runs to compare")
    picker.set_value([a, b, c]).run()
    _clean(at)
    assert "better allocation" in at.dataframe[0].value["allocation"].tolist()
    acc = _charts(at)[0]
    after = acc["data"][1]
    assert after["error_y"]["type"] == "data" and len(_values(after["error_y"], "array")) == 3
    texts = [s.value for s in at.success] + [i.value for i in at.info]
    assert any(t.startswith("better") and "is better than base" in t for t in texts)
    assert any(t.startswith("Within noise") and "near" in t and "base" in t for t in texts)
    pairs = _frame(at, "p_value")
    row = pairs[(pairs["run_a"].str.startswith("base")) & (pairs["run_b"].str.startswith("bet"))]
    assert row["p_value"].item() < 0.001 and row["only_b"].item() == 30
    # base and near were launched as two seeds of one allocation: mean ± interval is drawn
    titles = [c["layout"]["title"]["text"].replace("<br>", " ") for c in _charts(at)]
    assert any(t.startswith("Accuracy per allocation: mean over seeds") for t in titles)
    group_fig = next(
        c for c in _charts(at) if c["layout"]["title"]["text"].startswith("Accuracy per")
    )
    means = _values(group_fig["data"][0])
    assert means[0] == pytest.approx((160 + 161) / 400)
