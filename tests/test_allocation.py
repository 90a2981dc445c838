"""Expert allocation (docs/method.md §4/§5): official mode, corrected default, shapes, counts."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from alphalora.allocation.layer_alphas import layer_alphas_from_table
from alphalora.allocation.model import SCHEMA_VERSION, Allocation, default_top_k
from alphalora.allocation.params import (
    lora_parameters_per_expert,
    module_shapes_from_config,
    trainable_parameters,
)
from alphalora.allocation.presets import (
    LLAMA2_7B_LAYER_ALPHAS,
    LLAMA2_7B_MODULE_SHAPES,
    MISTRAL_7B_MODULE_SHAPES,
    MISTRAL_7B_PUBLISHED_ALLOCATION,
    get_preset,
    paper_preset,
)
from alphalora.allocation.shapes import custom, mola_shape, uniform
from alphalora.allocation.softmax_rules import (
    alphalora_allocation,
    alphalora_official,
    beta_to_temperature,
    temperature_to_beta,
)
from alphalora.errors import AlphaLoRAError

MISTRAL = "1,3,5,4,4,5,4,4,3,3,2,2,2,2,3,4,9,4,8,7,8,7,8,7,9,8,6,10,6,7,3,2"


def _reference(alphas, target, beta):
    """The official formula, written here independently of the module under test."""
    s = np.asarray(alphas, dtype=float) ** beta
    n = np.round(s / s.sum() * target).astype(int)
    corrected = []
    while n.sum() != target:
        i = int(np.argmin(s - n)) if n.sum() < target else int(np.argmax(s - n))
        n[i] += 1 if n.sum() < target else -1
        corrected.append(i)
    return n.tolist(), corrected


# --------------------------------------------------------------------------- official mode


def test_mistral_published_allocation_is_reproduced_exactly():
    published = [int(v) for v in MISTRAL.split(",")]
    assert list(MISTRAL_7B_PUBLISHED_ALLOCATION) == published
    # alphas that imply the string: s_i = α_i^β = n_i, so T·s/Σs = n_i exactly.
    alphas = np.asarray(published, dtype=float) ** (1 / 2.5)
    result = alphalora_official(alphas, budget=160, beta=2.5)
    assert ",".join(map(str, result.experts)) == MISTRAL
    assert result.top_k == tuple(1 if n == 1 else 2 for n in published)
    assert result.method == "alphalora-official" and result.total == 160
    # perturbed inside the rounding interval and rescaled (α^β normalisation is scale-free)
    rng = np.random.default_rng(7)
    noisy = (np.asarray(published) + rng.uniform(-0.3, 0.3, 32)) ** (1 / 2.5) * 3.7
    assert ",".join(map(str, alphalora_official(noisy).experts)) == MISTRAL


def test_llama2_official_matches_independent_formula():
    expected, corrected = _reference(LLAMA2_7B_LAYER_ALPHAS, 160, 2.5)
    result = alphalora_official(LLAMA2_7B_LAYER_ALPHAS, budget=160, beta=2.5)
    assert list(result.experts) == expected
    assert result.total == 160
    assert result.top_k == tuple(1 if n == 1 else 2 for n in expected)
    # the rounding overshoots by 2 and both corrections hit the largest-α layer (20)
    assert corrected == [20, 20]
    assert int(np.argmax(LLAMA2_7B_LAYER_ALPHAS)) == 20
    default = alphalora_allocation(LLAMA2_7B_LAYER_ALPHAS, 160, 2.5)
    assert result.experts[20] == default.experts[20] - 2


def test_official_repair_loop_defect_gives_zero_experts():
    alphas = [1.0] + [1.5 ** (1 / 2.5)] * 6  # s = [1, 1.5 × 6]; rounding overshoots by one
    expected, corrected = _reference(alphas, 12, 2.5)
    result = alphalora_official(alphas, budget=12, beta=2.5)
    assert list(result.experts) == expected == [0, 2, 2, 2, 2, 2, 2]
    assert result.top_k[0] == 0 and result.top_k[1:] == (2,) * 6
    assert result.warnings and "layer(s) [0]" in result.warnings[0]
    assert "0 experts" in result.label
    # several corrections pile up on the same layer
    result24 = alphalora_official(alphas, budget=24, beta=2.5)
    assert list(result24.experts) == [0, 4, 4, 4, 4, 4, 4]
    assert _reference(alphas, 24, 2.5)[1] == [0, 0]
    # a zero layer survives a JSON round trip (official mode only)
    assert Allocation.from_json(result.to_json()) == result
    # the default mode never does this
    fixed = alphalora_allocation(alphas, 12, 2.5)
    assert min(fixed.experts) >= 1 and fixed.total == 12


def test_official_refuses_negative_counts():
    alphas = [1.0] + [1.5 ** (1 / 2.5)] * 6
    assert _reference(alphas, 10, 2.5)[0][0] < 0
    with pytest.raises(AlphaLoRAError, match="negative expert count to layer"):
        alphalora_official(alphas, budget=10, beta=2.5)


def test_official_overflow_is_a_clear_error():
    with pytest.raises(AlphaLoRAError, match="default mode"):
        alphalora_official([2.0, 3.0, 1e3], budget=10, beta=200.0)


def test_official_random_cases_match_reference():
    rng = np.random.default_rng(11)
    checked = 0
    for _ in range(200):
        L = int(rng.integers(2, 40))
        alphas = rng.uniform(1.5, 8.0, L)
        beta = float(rng.uniform(0, 5))
        budget = int(rng.integers(L, 6 * L))
        expected, _ = _reference(alphas, budget, beta)
        if min(expected) < 0:
            continue
        assert list(alphalora_official(alphas, budget, beta).experts) == expected
        checked += 1
    assert checked > 150


# --------------------------------------------------------------------------- default mode


@pytest.mark.parametrize("mode", ["default", "official"])
def test_beta_zero_is_uniform(mode):
    rng = np.random.default_rng(0)
    for L, T in [(32, 160), (30, 150), (6, 12), (7, 21), (1, 5)]:
        alphas = rng.uniform(2, 6, L)
        fn = alphalora_allocation if mode == "default" else alphalora_official
        assert fn(alphas, T, 0.0).experts == (T // L,) * L
    for L, T in [(32, 161), (30, 160), (6, 13), (7, 19)]:
        experts = alphalora_allocation(rng.uniform(2, 6, L), T, 0.0).experts
        assert sum(experts) == T and max(experts) - min(experts) <= 1


def test_default_sum_bounds_and_monotonicity_on_random_inputs():
    rng = np.random.default_rng(1234)
    for case in range(400):
        L = int(rng.integers(1, 64))
        alphas = np.exp(rng.normal(1.2, 0.35, L))
        beta = float(rng.choice([0.0, 0.5, 1.0, 2.5, 5.0, 20.0]))
        low = int(rng.integers(1, 4))
        high = None if case % 2 else int(rng.integers(low, low + 10))
        lo_budget = L * low
        hi_budget = L * high if high is not None else L * (low + 12)
        budget = int(rng.integers(lo_budget, hi_budget + 1))
        result = alphalora_allocation(alphas, budget, beta, min_experts=low, max_experts=high)
        n = np.asarray(result.experts)
        assert n.sum() == budget, (case, n, budget)
        assert n.min() >= low and n.min() >= 1
        if high is not None:
            assert n.max() <= high
        # more α never means fewer experts
        order = np.argsort(alphas, kind="stable")
        assert np.all(np.diff(n[order]) >= 0), (case, n, alphas)
        assert all(1 <= k <= min(2, m) for k, m in zip(result.top_k, n, strict=True))
        # each layer within one expert of its exact box-constrained share
        x = _bounded_shares(alphas**beta, budget, low, np.inf if high is None else high)
        assert np.all(np.abs(n - x) < 1 + 1e-6), (case, n, x)


def _bounded_shares(weights, total, low, high):
    """x_i = clip(c·w_i, low, high) with Σx = total, c found by bisection (independent check)."""
    w = np.asarray(weights, dtype=float) / np.max(weights)
    lo, hi = 0.0, 1.0
    while np.clip(hi * w, low, high).sum() < total:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.clip(mid * w, low, high).sum() < total else (lo, mid)
    return np.clip(hi * w, low, high)


def test_default_is_the_rounded_softmax_when_bounds_do_not_bind():
    rng = np.random.default_rng(5)
    for _ in range(100):
        L = int(rng.integers(2, 40))
        alphas = rng.uniform(2.0, 5.0, L)
        beta = float(rng.uniform(0, 3))
        budget = int(rng.integers(4 * L, 10 * L))
        quota = budget * alphas**beta / np.sum(alphas**beta)
        if quota.min() < 1:
            continue
        n = np.asarray(alphalora_allocation(alphas, budget, beta).experts)
        assert np.all(np.abs(n - quota) < 1)  # Hamilton: each within one of its quota
        assert np.array_equal(n >= np.floor(quota), np.ones(L, bool))


def test_bounds_are_filled_like_water():
    alphas = [1.0, 1.0, 1.0, 10.0]
    result = alphalora_allocation(alphas, 20, 5.0, min_experts=2, max_experts=8)
    assert result.experts == (4, 4, 4, 8)  # the cap frees 10 experts, shared evenly
    result = alphalora_allocation(alphas, 20, 5.0, min_experts=3)
    assert result.experts == (3, 3, 3, 11)
    big_beta = alphalora_allocation([2.0, 3.0, 8.0, 1.5], 40, 1000.0)
    assert big_beta.experts == (1, 1, 37, 1)


def test_capped_share_is_redistributed_in_proportion():
    # weights 1 : 2 : 4 : 100; the big layer is capped at 10, then the third too; the last
    # 10 experts are split 1 : 2 between the first two layers.
    result = alphalora_allocation([1.0, 2.0, 4.0, 100.0], 30, 1.0, max_experts=10)
    assert result.experts == (3, 7, 10, 10)


def test_min_at_least_top_k_and_top_k():
    alphas = [1.0, 1.1, 9.0]
    plain = alphalora_allocation(alphas, 12, 3.0)
    assert plain.experts[0] == 1 and plain.top_k[0] == 1
    raised = alphalora_allocation(alphas, 12, 3.0, min_at_least_top_k=True)
    assert min(raised.experts) >= 2 and raised.min_experts == 2
    k3 = alphalora_allocation(alphas, 12, 3.0, top_k=3)
    assert k3.top_k == tuple(min(3, n) for n in k3.experts)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alphas": [], "budget": 4}, "No layer alphas"),
        ({"alphas": [2.0, float("nan"), 3.0], "budget": 6}, r"layer\(s\) \[1\]"),
        ({"alphas": [2.0, 3.0, float("inf")], "budget": 6}, r"layer\(s\) \[2\]"),
        ({"alphas": [0.0, 3.0, -1.0], "budget": 6}, r"layer\(s\) \[0, 2\]"),
        ({"alphas": [2.0, 3.0], "budget": 6, "beta": -1.0}, "beta must be a finite"),
        ({"alphas": [2.0, 3.0], "budget": 6, "beta": float("nan")}, "beta must be a finite"),
        ({"alphas": [2.0, 3.0], "budget": 6, "beta": float("inf")}, "beta must be a finite"),
        ({"alphas": [2.0, 3.0, 4.0], "budget": 2}, "cannot give 3 layers at least 1"),
        ({"alphas": [2.0, 3.0], "budget": 5, "min_experts": 3}, "needs ≥ 6"),
        ({"alphas": [2.0, 3.0], "budget": 9, "max_experts": 4}, "at most 4"),
        ({"alphas": [2.0, 3.0], "budget": 6, "min_experts": 4, "max_experts": 3}, "smaller"),
        ({"alphas": [2.0, 3.0], "budget": 6, "min_experts": 0}, "min_experts must be ≥ 1"),
        ({"alphas": [2.0, 3.0], "budget": 6.5}, "budget must be a whole number"),
        ({"alphas": [2.0, 3.0], "budget": 6, "top_k": 0}, "top_k must be ≥ 1"),
    ],
)
def test_default_mode_bad_inputs(kwargs, message):
    with pytest.raises(AlphaLoRAError, match=message):
        alphalora_allocation(**kwargs)


@pytest.mark.parametrize(
    ("alphas", "beta", "message"),
    [
        ([], 2.5, "No layer alphas"),
        ([2.0, float("nan")], 2.5, r"layer\(s\) \[1\]"),
        ([2.0, -3.0], 2.5, r"layer\(s\) \[1\]"),
        ([2.0, 3.0], -0.5, "beta"),
    ],
)
def test_official_mode_bad_inputs(alphas, beta, message):
    with pytest.raises(AlphaLoRAError, match=message):
        alphalora_official(alphas, 10, beta)


def test_temperature_beta_conversions():
    assert temperature_to_beta(0.4) == pytest.approx(2.5)
    assert beta_to_temperature(2.5) == pytest.approx(0.4)
    assert temperature_to_beta(math.inf) == 0.0
    assert beta_to_temperature(0.0) == math.inf
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(AlphaLoRAError, match="temperature"):
            temperature_to_beta(bad)
    with pytest.raises(AlphaLoRAError, match="beta"):
        beta_to_temperature(-2.0)


def test_default_top_k():
    assert default_top_k([1, 2, 5]) == (1, 2, 2)
    assert default_top_k([1, 2, 5], k=3) == (1, 2, 3)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("shape", "total"),
    [("8642", 160), ("2468", 160), ("8228", 160), ("2882", 160), ("5555", 160)]
    + [(s, 128) for s in ("4444", "6532", "6226", "2356", "2662")],
)
def test_mola_shapes_at_32_layers(shape, total):
    result = mola_shape(shape, 32)
    assert result.total == result.budget == total
    assert list(result.experts) == [int(d) for d in shape for _ in range(8)]
    assert result.method == f"mola-{shape}"
    assert result.top_k == (2,) * 32


@pytest.mark.parametrize(
    ("name", "digits"),
    [
        ("triangle", "8642"),
        ("△", "8642"),
        ("inverted-triangle", "2468"),
        ("▽", "2468"),
        ("hourglass", "8228"),
        ("⋈", "8228"),
        ("Diamond", "2882"),
        ("◇", "2882"),
        ("square", "5555"),
        ("□", "5555"),
    ],
)
def test_mola_shape_names_and_symbols(name, digits):
    assert mola_shape(name, 32).experts == mola_shape(digits, 32).experts


def test_mola_shapes_at_30_and_6_layers():
    r30 = mola_shape("8642", 30)  # groups 8, 8, 7, 7: the first groups take the remainder
    assert list(r30.experts) == [8] * 8 + [6] * 8 + [4] * 7 + [2] * 7
    assert r30.total == 154
    r6 = mola_shape("2468", 6)  # groups 2, 2, 1, 1
    assert list(r6.experts) == [2, 2, 4, 4, 6, 8]
    assert mola_shape("5555", 30).experts == (5,) * 30


def test_mola_shape_rescaled_to_budget():
    assert mola_shape("2882", 32, budget=128).experts == mola_shape("2662", 32).experts
    for L, T in [(30, 150), (6, 30), (30, 31), (32, 160)]:
        result = mola_shape("8642", L, budget=T)
        assert result.total == T and min(result.experts) >= 1
        n = np.asarray(result.experts)
        assert np.all(np.diff(n) <= 0)  # the triangle keeps its shape


def test_mola_shape_errors():
    with pytest.raises(AlphaLoRAError, match="Unknown MoLA shape"):
        mola_shape("8602", 32)
    with pytest.raises(AlphaLoRAError, match="Unknown MoLA shape"):
        mola_shape("pyramid", 32)
    with pytest.raises(AlphaLoRAError, match="only 3 layers"):
        mola_shape("8642", 3)
    with pytest.raises(AlphaLoRAError, match="cannot give 6 layers"):
        mola_shape("8642", 6, budget=5)


def test_uniform_and_custom():
    assert uniform(32, 160).experts == (5,) * 32
    assert uniform(4, 10).experts == (3, 3, 2, 2)
    c = custom([1, 4, 2], top_k=2)
    assert c.top_k == (1, 2, 2) and c.budget == 7 and c.method == "custom"
    assert custom([3, 3], top_k=[1, 3]).top_k == (1, 3)
    with pytest.raises(AlphaLoRAError, match=r"layer\(s\) \[1\]"):
        custom([2, 0, 3])
    with pytest.raises(AlphaLoRAError, match="top_k must be between"):
        custom([2, 2], top_k=[1, 3])
    with pytest.raises(AlphaLoRAError, match="cannot give 4 layers"):
        uniform(4, 3)


# --------------------------------------------------------------------------- parameter counts


def test_llama2_parameter_counts():
    shapes = module_shapes_from_config(
        {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32}
    )
    assert shapes == LLAMA2_7B_MODULE_SHAPES
    assert lora_parameters_per_expert(shapes, rank=8) == 660_224
    assert trainable_parameters(mola_shape("8642", 32), shapes) == 105_635_840
    assert trainable_parameters([5] * 32, shapes) == 105_635_840
    assert lora_parameters_per_expert(shapes, include_router=False) == 660_224 - (6 * 4096 + 11008)
    assert lora_parameters_per_expert({"q_proj": (16, 8)}, rank=2) == 2 * 24 + 16


def test_module_shapes_from_transformers_config_with_gqa():
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=64, intermediate_size=160, num_attention_heads=8, num_key_value_heads=2
    )
    shapes = module_shapes_from_config(config, targets=("q_proj", "k_proj", "down_proj"))
    assert shapes == {"q_proj": (64, 64), "k_proj": (64, 16), "down_proj": (160, 64)}
    assert MISTRAL_7B_MODULE_SHAPES["k_proj"] == (4096, 1024)
    with pytest.raises(AlphaLoRAError, match="Unknown target"):
        module_shapes_from_config(config, targets=("qkv_proj",))
    with pytest.raises(AlphaLoRAError, match="lacks hidden_size"):
        module_shapes_from_config({"n_embd": 64})


# --------------------------------------------------------------------------- serialisation


def test_json_round_trip():
    for result in (
        alphalora_allocation(LLAMA2_7B_LAYER_ALPHAS, 160, 2.5, max_experts=7),
        alphalora_official(LLAMA2_7B_LAYER_ALPHAS),
        mola_shape("◇", 30),
        custom([1, 2, 3], top_k=[1, 1, 2]),
    ):
        text = result.to_json()
        data = json.loads(text)
        assert data["schema_version"] == SCHEMA_VERSION
        assert data["experts"] == list(result.experts) and data["top_k"] == list(result.top_k)
        back = Allocation.from_json(text)
        assert back == result
        assert Allocation.from_dict(result.to_dict()) == result


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema_version": 2}, "Unsupported allocation schema_version 2"),
        ({"schema_version": "1"}, "Unsupported allocation schema_version"),
        ({"schema_version": None}, "no schema_version"),
        ({"experts": [2, 2.5, 3], "budget": 7}, r"position\(s\) \[1\]"),
        ({"experts": [2, "3", 3]}, "whole numbers"),
        ({"experts": [2, 0, 3], "budget": 5}, "at least 1 expert"),
        ({"top_k": [2, 2]}, "top_k has 2 entries but experts has 3"),
        ({"experts": [2, 3, 4], "budget": 10}, "must equal the total"),
        ({"alphas": [2.0, 3.0]}, "alphas has 2 entries"),
        ({"experts": "2,3,4"}, "must be a list"),
    ],
)
def test_from_dict_errors(change, message):
    good = custom([2, 3, 3]).to_dict()
    good["alphas"] = [2.0, 3.0, 3.5]
    Allocation.from_dict(good)  # the base document is valid
    bad = {**good, **change}
    with pytest.raises(AlphaLoRAError, match=message):
        Allocation.from_dict(bad)


def test_from_json_errors():
    with pytest.raises(AlphaLoRAError, match="not valid JSON"):
        Allocation.from_json("{experts: 1")
    with pytest.raises(AlphaLoRAError, match="must be a JSON object"):
        Allocation.from_json("[1, 2]")
    doc = custom([2, 3]).to_dict()
    del doc["experts"]
    with pytest.raises(AlphaLoRAError, match="missing the field 'experts'"):
        Allocation.from_dict(doc)


# --------------------------------------------------------------------------- analyze tables


def _table(per_layer):
    rows = [{"name": "model.embed_tokens.weight", "layer": None, "kind": "embed", "alpha": 9.0}]
    for layer, alphas in enumerate(per_layer):
        for kind, a in zip(("q_proj", "k_proj", "v_proj"), alphas, strict=False):
            rows.append(
                {
                    "name": f"model.layers.{layer}.self_attn.{kind}.weight",
                    "layer": layer,
                    "kind": kind,
                    "alpha": a,
                }
            )
    return pd.DataFrame(rows)


def test_layer_alphas_from_table():
    df = _table([[2.0, 4.0, float("nan")], [3.0, 3.0, 6.0], [5.0, float("inf"), 7.0]])
    df = df.sample(frac=1.0, random_state=3)  # order of rows must not matter
    assert layer_alphas_from_table(df) == pytest.approx([3.0, 4.0, 6.0])


def test_layer_alphas_from_table_errors():
    with pytest.raises(AlphaLoRAError, match=r"Layer\(s\) \[1\] have no finite alpha"):
        layer_alphas_from_table(_table([[2.0, 3.0], [float("nan"), float("nan")]]))
    df = _table([[2.0], [3.0], [4.0]])
    with pytest.raises(AlphaLoRAError, match=r"no rows for layer\(s\) \[1\]"):
        layer_alphas_from_table(df[df["layer"] != 1])
    with pytest.raises(AlphaLoRAError, match=r"lacks column\(s\) \['alpha'\]"):
        layer_alphas_from_table(df.drop(columns="alpha"))
    with pytest.raises(AlphaLoRAError, match="no rows with a layer"):
        layer_alphas_from_table(df[df["layer"].isna()])


# --------------------------------------------------------------------------- presets


def test_paper_preset():
    preset = paper_preset()
    assert preset["n_layers"] == len(preset["alphas"]) == 32
    assert preset["alphas"][0] == 2.136 and preset["alphas"][-1] == 3.483
    assert preset["family"] == "llama" and preset["budget"] == 160 and preset["beta"] == 2.5
    assert lora_parameters_per_expert(preset["module_shapes"]) == 660_224
    assert get_preset("Llama-2-7B")["name"] == "llama2-7b"
    with pytest.raises(AlphaLoRAError, match="Unknown preset"):
        get_preset("gpt-9")
