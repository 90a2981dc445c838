"""Pure helpers behind the app's pages: allocation modes, comparison tables, Learn-page maths."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from alphalora.allocation.model import Allocation
from alphalora.allocation.params import trainable_parameters
from alphalora.allocation.presets import LLAMA2_7B_LAYER_ALPHAS, LLAMA2_7B_MODULE_SHAPES
from alphalora.allocation.shapes import mola_shape
from alphalora.allocation.softmax_rules import alphalora_allocation, alphalora_official
from alphalora.errors import AlphaLoRAError
from alphalora.spectral.fits import fit_power_law
from ui import state as S

ALPHAS = [2.1, 3.5, 4.0, 2.8, 5.2, 3.3, 2.9, 4.4]


# --------------------------------------------------------------------------- model choices


def test_model_choice_defaults_and_custom_refs():
    default = S.ModelChoice()
    assert default.kind == S.KIND_EMBEDDED and default.key() == ("embedded", "hill-peak", "auto")
    assert not default.is_paper and "SmolLM2" in default.label()
    paper = S.ModelChoice(S.KIND_PAPER, "paper")
    assert paper.is_paper and paper.label() == S.PAPER_LABEL
    custom = S.custom_choice("  org/model  ", "clauset", "cpu")
    assert custom.ref == "org/model" and custom.fit == "clauset" and custom.label() == "org/model"
    with pytest.raises(AlphaLoRAError, match="hub id"):
        S.custom_choice("   ", "hill-peak", "auto")


# --------------------------------------------------------------------------- allocation


def test_paper_defaults_are_160_for_32_layers_and_5_per_layer_otherwise():
    assert S.paper_defaults(32) == (160, 2.5)
    assert S.paper_defaults(30) == (150, 2.5)
    assert S.paper_defaults(2) == (10, 2.5)
    with pytest.raises(AlphaLoRAError):
        S.paper_defaults(0)


def test_build_allocation_dispatches_to_the_library():
    default = S.build_allocation(S.MODE_DEFAULT, ALPHAS, 40, 2.5, min_experts=2, max_experts=8)
    assert default == alphalora_allocation(ALPHAS, 40, 2.5, min_experts=2, max_experts=8)
    official = S.build_allocation(S.MODE_OFFICIAL, LLAMA2_7B_LAYER_ALPHAS, 160, 2.5)
    assert official.experts == alphalora_official(LLAMA2_7B_LAYER_ALPHAS, 160, 2.5).experts
    mola = S.build_allocation(S.MODE_MOLA, ALPHAS, 40, 2.5, shape="2468")
    assert mola.experts == mola_shape("2468", 8, budget=40).experts
    flat = S.build_allocation(S.MODE_UNIFORM, ALPHAS, 40, 2.5)
    assert set(flat.experts) == {5}
    assert set(S.build_allocation(S.MODE_DEFAULT, ALPHAS, 40, 0.0).experts) == {5}  # β = 0
    with pytest.raises(AlphaLoRAError, match="Unknown allocation mode"):
        S.build_allocation("nope", ALPHAS, 40, 2.5)
    with pytest.raises(AlphaLoRAError):  # 8 layers × min 6 > 40
        S.build_allocation(S.MODE_DEFAULT, ALPHAS, 40, 2.5, min_experts=6)


def test_comparisons_share_the_budget_and_parameters_follow_the_totals():
    comps = S.comparison_allocations(8, 37, "8642")
    assert [a.total for a in comps.values()] == [37, 37]
    current = alphalora_allocation(ALPHAS, 37, 2.5)
    table = S.parameters_table({"current": current, **comps}, LLAMA2_7B_MODULE_SHAPES)
    expected = trainable_parameters(current, LLAMA2_7B_MODULE_SHAPES)
    assert table["trainable_parameters"].tolist() == [expected] * 3  # same total → same count
    assert table.loc[0, "min_per_layer"] == min(current.experts)


def test_module_shapes_from_the_matrix_table_in_llama_order():
    rows = []
    for layer in (1, 0):
        for kind, r, c in (("down_proj", 64, 128), ("q_proj", 64, 64), ("up_proj", 128, 64)):
            rows.append({"layer": layer, "kind": kind, "rows": r, "cols": c})
    rows.append({"layer": None, "kind": "lm_head", "rows": 10, "cols": 64})
    shapes = S.module_shapes_from_matrices(pd.DataFrame(rows))
    assert list(shapes) == ["q_proj", "up_proj", "down_proj"]
    assert shapes["down_proj"] == (128, 64) and shapes["up_proj"] == (64, 128)  # (d_in, d_out)
    with pytest.raises(AlphaLoRAError):
        S.module_shapes_from_matrices(
            pd.DataFrame([{"layer": None, "kind": "x", "rows": 1, "cols": 1}])
        )


def test_allocation_table_spec_and_layer_checks():
    alloc = alphalora_allocation(ALPHAS, 24, 2.5)
    table = S.allocation_table(alloc, ALPHAS)
    assert list(table.columns) == ["layer", "alpha", "experts", "top_k"]
    assert table["experts"].sum() == 24
    spec = S.allocation_spec(alloc)
    assert spec["experts"] == list(alloc.experts) and spec["top_k"] == list(alloc.top_k)
    S.check_layers(alloc, 8)
    with pytest.raises(AlphaLoRAError, match="8 layers but the model has 30"):
        S.check_layers(alloc, 30)
    zero = Allocation((0, 3), (0, 2), "alphalora-official", 3)
    with pytest.raises(AlphaLoRAError, match="0 experts"):
        S.allocation_spec(zero)


def test_beta_sweep_is_flat_at_zero_and_concentrates_with_beta():
    sweep = S.beta_sweep(ALPHAS, 40, [0.0, 1.0, 3.0, 6.0])
    assert sweep.loc[0, "spread"] == 0
    assert list(sweep["spread"]) == sorted(sweep["spread"])
    assert (
        sweep["experts_highest_alpha_layer"].iloc[-1] > sweep["experts_lowest_alpha_layer"].iloc[-1]
    )


# --------------------------------------------------------------------------- runs


def test_runs_comparison_table_and_latest_router_load():
    runs = [
        {
            "run_id": "r1", "name": "alphalora", "status": "completed",
            "config": {"method": "moe-lora", "steps": 4},
            "allocation": {"experts": [3, 2], "label": "AlphaLoRA"},
            "summary": {"accuracy_before": 0.5, "accuracy_after": 0.75},
            "params_trainable": 1234, "seconds_per_step": 0.2,
        },
        {"run_id": "r2", "name": None, "status": "failed", "config": {"method": "lora"},
         "allocation": None, "summary": None},
    ]  # fmt: skip
    table = S.runs_comparison_table(runs)
    assert table["label"].tolist() == ["alphalora", "r2"]
    assert table.loc[0, "total_experts"] == 5 and table.loc[0, "accuracy_gain"] == pytest.approx(
        0.25
    )
    assert math.isnan(table.loc[1, "accuracy_gain"])
    metrics = pd.DataFrame(
        {
            "run_id": ["r1"] * 3,
            "split": ["eval", "train", "eval"],
            "step": [0, 2, 2],
            "router_load": [[[0.5, 0.5]], None, [[0.9, 0.1]]],
        }
    )
    assert S.latest_router_load(metrics) == (2, [[0.9, 0.1]])
    assert S.latest_router_load(metrics.drop(columns=["router_load"])) == (None, None)


# --------------------------------------------------------------------------- Learn maths


@pytest.mark.parametrize(
    ("kind", "tail", "seed"), [("gaussian", 0, 0), ("student-t", 2.5, 1), ("correlated", 1.0, 2)]
)
def test_ks_scan_minimum_is_the_clauset_fit(kind, tail, seed):
    eigs = S.esd(S.random_matrix(kind, 192, 96, tail=tail, seed=seed))
    scan = S.ks_scan(eigs)
    best = S.best_xmin(scan)
    ref = fit_power_law(eigs, "clauset")
    assert best["xmin"] == pytest.approx(ref.xmin, rel=1e-12)
    assert best["alpha"] == pytest.approx(ref.alpha, rel=1e-9)
    assert best["D"] == pytest.approx(ref.D, rel=1e-9)
    assert int(best["n_tail"]) == ref.n_tail
    # Every row's α is Hill's estimator with xmin counted in the tail.
    row = scan.iloc[len(scan) // 2]
    tail_vals = eigs[eigs >= row["xmin"]]
    assert row["alpha"] == pytest.approx(
        1 + tail_vals.size / np.sum(np.log(tail_vals / row["xmin"]))
    )


def test_ks_scan_of_too_few_values_is_empty():
    assert S.ks_scan(np.array([1.0, 2.0])).empty
    with pytest.raises(AlphaLoRAError):
        S.best_xmin(S.ks_scan(np.array([1.0])))


def test_marchenko_pastur_density_integrates_to_one_and_holds_a_gaussian_spectrum():
    rows, cols = 512, 256
    lo, hi = S.mp_edges(rows, cols, 1.0)
    assert (lo, hi) == pytest.approx(
        (512 * (1 - math.sqrt(0.5)) ** 2, 512 * (1 + math.sqrt(0.5)) ** 2)
    )
    lam = np.linspace(lo, hi, 200_001)
    assert np.trapezoid(S.marchenko_pastur(lam, rows, cols, 1.0), lam) == pytest.approx(
        1.0, abs=2e-3
    )
    eigs = S.esd(S.random_matrix("gaussian", rows, cols, seed=3))
    inside = np.mean((eigs > 0.9 * lo) & (eigs < 1.05 * hi))
    assert inside == 1.0
    assert S.marchenko_pastur(np.array([lo / 2, 2 * hi]), rows, cols, 1.0).tolist() == [0.0, 0.0]


def test_heavier_tails_give_smaller_alpha():
    def alpha(kind, tail):
        return fit_power_law(
            S.esd(S.random_matrix(kind, 256, 128, tail=tail, seed=0)), "clauset"
        ).alpha

    assert alpha("student-t", 2.0) < alpha("student-t", 6.0) < alpha("gaussian", 0)
    assert alpha("correlated", 2.0) < alpha("correlated", 0.5)


def test_training_path_lowers_alpha():
    def mean_alpha(strength):
        return np.mean([
            fit_power_law(S.esd(S.trained_matrix(256, 128, strength, seed=k)), "clauset").alpha for k in range(3)
        ])  # fmt: skip

    assert mean_alpha(0.0) > mean_alpha(1.0) > mean_alpha(3.0)
    with pytest.raises(AlphaLoRAError):
        S.trained_matrix(8, 8, -1.0)


def test_random_matrix_checks_its_arguments():
    with pytest.raises(AlphaLoRAError, match="Unknown matrix kind"):
        S.random_matrix("uniform", 8, 8)
    with pytest.raises(AlphaLoRAError):
        S.random_matrix("gaussian", 1, 8)
    with pytest.raises(AlphaLoRAError):
        S.random_matrix("student-t", 8, 8, tail=0)
    a = S.random_matrix("correlated", 16, 8, tail=1.0, seed=5)
    assert a.shape == (16, 8) and np.array_equal(
        a, S.random_matrix("correlated", 16, 8, tail=1.0, seed=5)
    )
