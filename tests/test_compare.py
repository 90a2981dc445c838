"""Uncertainty on comparisons: Wilson intervals, the exact McNemar test, the paired bootstrap,
Student-t intervals over seeds, per-example predictions (scoring, storage) and seed groups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from train_helpers import RuleLM, make_tokenizer

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.predictions import (
    eval_fingerprint,
    example_key,
    load_predictions,
    prediction_record,
    prediction_steps,
    save_predictions,
)
from alphalora.finetune.scoring import evaluate_counts
from alphalora.finetune.tasks.examples import Example
from alphalora.plots.compare import (
    accuracy_interval_figure,
    seed_curve_figure,
    seed_group_figure,
)
from alphalora.plots.runs import run_comparison_figure
from alphalora.runs.compare import (
    compare_correct,
    mcnemar_exact,
    mean_interval,
    paired_bootstrap,
    t_quantile,
    wilson_interval,
)
from alphalora.runs.seeds import (
    expand_seeds,
    seed_curves,
    seed_group_key,
    seed_groups,
    seed_values,
    start_seeded_runs,
)

# --------------------------------------------------------------------------- statistics


def test_wilson_interval_known_values():
    assert wilson_interval(50, 100) == pytest.approx((0.40383, 0.59617), abs=1e-5)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.27753, abs=1e-5))
    assert wilson_interval(10, 10) == (pytest.approx(0.72247, abs=1e-5), 1.0)
    low, high = wilson_interval(165, 200)  # the README's 0.825 at n = 200
    assert (low, high) == pytest.approx((0.76636, 0.87139), abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(AlphaLoRAError, match="0 ≤ correct ≤ n"):
        wilson_interval(11, 10)


def test_mcnemar_exact_known_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 10) == 1.0
    assert mcnemar_exact(3, 0) == pytest.approx(0.25)  # 2 · (1/2)^3
    assert mcnemar_exact(12, 6) == pytest.approx(0.237885, abs=1e-6)
    assert mcnemar_exact(25, 5) == pytest.approx(0.000324914, rel=1e-5)
    assert mcnemar_exact(5, 25) == mcnemar_exact(25, 5)


def test_paired_test_detects_a_planted_difference_and_not_identical_predictions():
    rng = np.random.default_rng(0)
    a = rng.random(200) < 0.8
    same = compare_correct(a, a.copy())
    assert same.p_value == 1.0 and same.within_noise and same.difference == 0
    assert (same.diff_low, same.diff_high) == (0.0, 0.0)
    assert same.verdict("x", "y").startswith("Within noise: x − y = +0.000")
    # Plant 30 discordant pairs of 200, all in favour of A.
    b = a.copy()
    flip = np.flatnonzero(a)[:30]
    b[flip] = False
    planted = compare_correct(a, b)
    assert (planted.only_a, planted.only_b, planted.n) == (30, 0, 200)
    assert planted.p_value < 0.001 and not planted.within_noise
    assert planted.diff_low > 0  # the bootstrap interval excludes 0 as well
    assert planted.verdict("A", "B").startswith("A is better than B")
    # 25 vs 5 discordant: still clearly different; 12 vs 6 is not.
    c = a.copy()
    c[np.flatnonzero(a)[:25]] = False
    c[np.flatnonzero(~a)[:5]] = True
    assert compare_correct(a, c).p_value == pytest.approx(0.000324914, rel=1e-5)
    with pytest.raises(AlphaLoRAError, match="same examples"):
        compare_correct(a, a[:-1])


def test_bootstrap_and_t_intervals():
    diff, low, high = paired_bootstrap([1, 1, 0, 1] * 25, [1, 0, 0, 1] * 25, seed=3)
    assert diff == 0.25 and low < 0.25 < high and low > 0
    assert t_quantile(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(10) == pytest.approx(2.228, abs=1e-3)
    assert t_quantile(31) == pytest.approx(2.0395, abs=2e-4)
    assert t_quantile(120) == pytest.approx(1.9799, abs=2e-4)
    mean, low, high = mean_interval([0.80, 0.82, 0.84])
    assert mean == pytest.approx(0.82)
    assert high - mean == pytest.approx(4.3027 * 0.02 / 3**0.5, rel=1e-4)
    assert mean_interval([0.7]) == (0.7, 0.7, 0.7)
    with pytest.raises(AlphaLoRAError, match="No finite values"):
        mean_interval([])


# --------------------------------------------------------------------------- predictions


def _rule_model():
    tok = make_tokenizer(add_bos=False)
    ids = tok.convert_tokens_to_ids
    table = {ids("Sentiment"): ids(":"), ids(":"): ids("positive")}
    return tok, RuleLM(len(tok), lambda t: table.get(t, ids("the")))


def test_scoring_returns_each_examples_prediction():
    tok, model = _rule_model()
    choices = (" negative", " positive")
    examples = [
        Example("Review: x\nSentiment:", " positive", choices),
        Example("Review: y\nSentiment:", " negative", choices),
        Example("Review: z\nSentiment:", " positive", choices),
    ]
    counts = evaluate_counts(model, tok, examples, batch_size=2)
    assert counts.predictions == [(0, " positive", True), (1, " positive", False),
                                  (2, " positive", True)]  # fmt: skip
    assert counts.correct == sum(ok for _, _, ok in counts.predictions)


def test_prediction_files_round_trip_and_fingerprint_the_eval_set(tmp_path):
    examples = [Example(f"p{i}", " a", (" a", " b")) for i in range(4)]
    assert example_key(examples[0]) == example_key(Example("p0", " a", (" a", " b")))
    assert example_key(examples[0]) != example_key(Example("p0", " b", (" a", " b")))
    rows = [(2, " a", True), (0, " b", False), (1, " a", True), (3, None, False)]
    record = prediction_record(40, examples, rows)
    assert record["correct"] == [False, True, True, False] and record["predicted"][3] is None
    assert record["fingerprint"] == eval_fingerprint([example_key(e) for e in examples])
    save_predictions(tmp_path, record)
    save_predictions(tmp_path, prediction_record(0, examples, rows))
    assert prediction_steps(tmp_path) == [0, 40]
    assert load_predictions(tmp_path) == record  # the last evaluation by default
    assert load_predictions(tmp_path, 0)["step"] == 0
    with pytest.raises(AlphaLoRAError, match="evaluated steps: \\[0, 40\\]"):
        load_predictions(tmp_path, 7)
    with pytest.raises(AlphaLoRAError, match="No per-example predictions"):
        load_predictions(tmp_path / "elsewhere")
    with pytest.raises(AlphaLoRAError, match="3 of 4 examples"):
        prediction_record(0, examples, rows[:3])


# --------------------------------------------------------------------------- seeds


def test_seed_counts_are_checked_and_configs_expanded():
    for bad in (0, -2):
        with pytest.raises(AlphaLoRAError, match="number of seeds must be ≥ 1"):
            seed_values(bad)
    with pytest.raises(AlphaLoRAError, match="whole number"):
        seed_values(2.5)
    with pytest.raises(AlphaLoRAError, match="Seeds must be ≥ 0"):
        seed_values(2, -1)
    assert seed_values(3, 5) == [5, 6, 7]
    config = {"name": "x", "model": "embedded", "seed": 0, "steps": 4}
    runs = expand_seeds("alphalora", config, 3)
    assert [n for n, _ in runs] == ["alphalora-s0", "alphalora-s1", "alphalora-s2"]
    assert [c["seed"] for _, c in runs] == [0, 1, 2]
    assert {c["extra"]["seed_group"] for _, c in runs} == {seed_group_key(config)}
    assert expand_seeds("solo", config, 1)[0][0] == "solo"
    assert seed_group_key(config) != seed_group_key({**config, "steps": 5})


def test_seeded_launch_checks_before_starting_anything(monkeypatch):
    import alphalora.runs.jobs as jobs

    started: list[tuple[str, dict, dict]] = []

    def fake_start(config, **kwargs):
        started.append((kwargs["name"], config, kwargs))
        return f"run-{len(started)}"

    monkeypatch.setattr(jobs, "start_run", fake_start)
    launches = [("a", {"steps": 2}, {"label": "A"}), ("b", {"steps": 3}, None)]
    with pytest.raises(AlphaLoRAError):
        start_seeded_runs(launches, 0)
    assert started == []
    ids = start_seeded_runs(launches, 2, num_processes=1)
    assert ids == ["run-1", "run-2", "run-3", "run-4"]
    assert [n for n, _, _ in started] == ["a-s0", "a-s1", "b-s0", "b-s1"]
    assert started[0][2]["allocation"] == {"label": "A"} and started[0][2]["num_processes"] == 1


def _run(run_id: str, group: str | None, seed: int, acc: float, label: str) -> dict:
    extra = {"seed_group": group} if group else {}
    return {
        "run_id": run_id,
        "name": label,
        "status": "completed",
        "config": {"seed": seed, "method": "moe-lora", "extra": extra},
        "allocation": {"label": label, "experts": [2, 3]},
        "summary": {"accuracy_after": acc, "n_eval": 200},
        "params_trainable": 1000,
    }


def test_seed_groups_give_mean_and_interval_and_curves():
    runs = [
        _run("r1", "g", 0, 0.80, "AlphaLoRA"),
        _run("r2", "g", 1, 0.82, "AlphaLoRA"),
        _run("r3", "g", 2, 0.84, "AlphaLoRA"),
        _run("r4", None, 0, 0.75, "Uniform"),
    ]
    groups = seed_groups(runs).set_index("group")
    assert groups.at["g", "n_seeds"] == 3 and groups.at["g", "seeds"] == "0, 1, 2"
    mean, low, high = mean_interval([0.80, 0.82, 0.84])
    assert groups.at["g", "accuracy_mean"] == pytest.approx(mean)
    assert (groups.at["g", "accuracy_low"], groups.at["g", "accuracy_high"]) == pytest.approx(
        (low, high)
    )
    # a lone run is a group of its own, with its Wilson interval
    assert groups.at["r4", "n_seeds"] == 1
    assert groups.at["r4", "accuracy_low"] == pytest.approx(wilson_interval(150, 200)[0])
    metrics = pd.DataFrame(
        {
            "run_id": ["r1", "r2", "r3", "r1", "r2", "r3"],
            "split": ["eval"] * 6,
            "step": [0, 0, 0, 10, 10, 10],
            "accuracy": [0.5, 0.5, 0.5, 0.80, 0.82, 0.84],
        }
    )
    curves = seed_curves(metrics, seed_groups(runs), "accuracy")
    last = curves[(curves["group"] == "g") & (curves["step"] == 10)].iloc[0]
    assert (last["mean"], last["low"], last["high"], last["n"]) == pytest.approx(
        (mean, low, high, 3)
    )
    first = curves[(curves["group"] == "g") & (curves["step"] == 0)].iloc[0]
    assert first["low"] == first["high"] == 0.5  # no spread, no band
    fig = seed_group_figure(seed_groups(runs))
    assert fig.data[0].error_y.array[0] == pytest.approx(high - mean)
    assert sorted(fig.data[1].y) == [0.75, 0.80, 0.82, 0.84]  # every seed's own value
    band = seed_curve_figure(curves)
    assert band.data[0].fill == "toself" and list(band.data[1].y) == pytest.approx([0.5, mean])


def test_interval_figures_draw_error_bars():
    table = pd.DataFrame(
        {
            "label": ["a", "b"],
            "allocation": ["AlphaLoRA", "Uniform"],
            "accuracy_before": [0.8, 0.8],
            "accuracy_after": [0.825, 0.835],
            "accuracy_after_low": [0.766, 0.777],
            "accuracy_after_high": [0.871, 0.880],
            "accuracy_low": [0.766, 0.777],
            "accuracy_high": [0.871, 0.880],
            "n_eval": [200, 200],
        }
    )
    bars = run_comparison_figure(table)
    assert bars.data[0].error_y.array is None  # no interval columns for "before"
    assert list(bars.data[1].error_y.array) == pytest.approx([0.046, 0.045])
    assert list(bars.data[1].error_y.arrayminus) == pytest.approx([0.059, 0.058])
    points = accuracy_interval_figure(table)
    assert list(points.data[0].error_y.arrayminus) == pytest.approx([0.059, 0.058])
    assert "No finished" in accuracy_interval_figure(table.iloc[:0]).layout.annotations[0].text
