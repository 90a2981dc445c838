"""LoRA ranks from layer alphas: the softmax rule over a rank budget, its peft export, the
equal-parameter helpers and ``allocate --as peft-ranks``; allocation labels and records."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from alphalora.allocation.labels import allocation_label, allocation_record, with_layer_score
from alphalora.allocation.params import LLAMA_TARGETS, trainable_parameters
from alphalora.allocation.presets import LLAMA2_7B_LAYER_ALPHAS, LLAMA2_7B_MODULE_SHAPES
from alphalora.allocation.ranks import (
    allocate_ranks,
    llama_module_names,
    matching_rank_budget,
    matching_uniform_rank,
    peft_lora_config,
    uniform_lora_parameters,
)
from alphalora.allocation.shapes import custom, mola_shape, uniform
from alphalora.allocation.softmax_rules import alphalora_allocation, alphalora_official
from alphalora.cli import main
from alphalora.errors import AlphaLoRAError

ALPHAS = [2.0, 3.0, 5.0, 4.0, 2.5, 6.0]


def test_rank_budget_is_spread_by_the_softmax_rule_within_bounds():
    result = allocate_ranks(ALPHAS, 500, 2.5)
    assert sum(result.ranks) == 500 and len(result.ranks) == 6 * 7
    for ranks in result.layer_ranks:
        assert max(ranks) - min(ranks) <= 1  # one layer's modules share its part evenly
    totals = [sum(r) for r in result.layer_ranks]
    share = np.asarray(ALPHAS) ** 2.5 / np.sum(np.asarray(ALPHAS) ** 2.5)
    assert np.abs(np.asarray(totals) - 500 * share).max() <= 7  # ≤ one unit per module
    order = np.argsort(ALPHAS)
    assert all(totals[order[i]] <= totals[order[i + 1]] for i in range(5))  # monotone in α
    flat = allocate_ranks(ALPHAS, 42 * 8, 0.0)
    assert set(flat.ranks) == {8}  # β = 0: a uniform rank
    capped = allocate_ranks(ALPHAS, 500, 4.0, min_rank=4, max_rank=20)
    assert min(capped.ranks) >= 4 and max(capped.ranks) <= 20 and sum(capped.ranks) == 500


def test_a_rank_budget_below_the_adapted_modules_is_refused():
    with pytest.raises(AlphaLoRAError, match="below the 42 adapted modules"):
        allocate_ranks(ALPHAS, 41)
    with pytest.raises(AlphaLoRAError, match="at least 84"):
        allocate_ranks(ALPHAS, 80, min_rank=2)
    with pytest.raises(AlphaLoRAError, match="cannot fit 42 modules of rank ≤ 2"):
        allocate_ranks(ALPHAS, 100, max_rank=2)
    allocate_ranks(ALPHAS, 42)  # exactly one rank per module is fine


def test_peft_export_is_a_valid_lora_config_with_constant_scaling():
    from peft import LoraConfig

    result = allocate_ranks(ALPHAS, 500, 2.5)
    data = peft_lora_config(result, lora_alpha=16)
    config = LoraConfig(**json.loads(json.dumps(data)))
    names = llama_module_names(6)
    assert list(config.rank_pattern) == names and names[0] == "model.layers.0.self_attn.q_proj"
    assert names[6] == "model.layers.0.mlp.down_proj"
    assert list(config.rank_pattern.values()) == list(result.ranks)
    assert config.r == round(500 / 42)
    for name, r in config.rank_pattern.items():  # lora_alpha / r is the same everywhere
        assert config.alpha_pattern[name] / r == pytest.approx(16 / config.r)
    with pytest.raises(AlphaLoRAError, match="one name per"):
        peft_lora_config(result, names[:-1])


def test_equal_parameter_helpers_match_a_moe_lora_allocation():
    moe = alphalora_allocation(LLAMA2_7B_LAYER_ALPHAS, 160, 2.5)
    target = trainable_parameters(moe, LLAMA2_7B_MODULE_SHAPES, rank=8)
    ranks = matching_rank_budget(target, LLAMA2_7B_LAYER_ALPHAS, LLAMA2_7B_MODULE_SHAPES)
    gap = abs(ranks.parameters(LLAMA2_7B_MODULE_SHAPES) - target) / target
    assert gap < 1e-3
    rank, params = matching_uniform_rank(target, 32, LLAMA2_7B_MODULE_SHAPES)
    assert params == uniform_lora_parameters(rank, 32, LLAMA2_7B_MODULE_SHAPES)
    for other in (rank - 1, rank + 1):  # the closest whole rank
        assert abs(uniform_lora_parameters(other, 32, LLAMA2_7B_MODULE_SHAPES) - target) >= abs(
            params - target
        )


# --------------------------------------------------------------------------- command line


def test_allocate_as_peft_ranks_writes_a_lora_config(tmp_path, capsys):
    from peft import LoraConfig

    out = tmp_path / "lora_config.json"
    argv = ["allocate", "--alphas", ",".join(map(str, ALPHAS)), "--as", "peft-ranks"]
    assert main([*argv, "--budget", "300", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "total rank 300 over 42 modules" in text and "LoraConfig" in text
    config = LoraConfig(**json.loads(out.read_text()))
    assert sum(config.rank_pattern.values()) == 300
    assert main([*argv, "--json"]) == 0  # default budget: rank 8 on every module
    data = json.loads(capsys.readouterr().out)
    assert data["budget"] == 8 * 42 and sum(data["lora_config"]["rank_pattern"].values()) == 336
    for extra, message in (
        (["--budget", "41"], "below the 42 adapted modules"),
        (["--shape", "2468"], "cannot be combined with --as peft-ranks"),
        (["--match-experts", "30"], "needs the module shapes"),
    ):
        assert main([*argv, *extra]) == 1
        assert message in capsys.readouterr().err


def test_allocate_as_peft_ranks_matches_a_moe_lora_and_uses_the_tables_names(tmp_path, capsys):
    assert main(["allocate", "--preset", "llama2-7b", "--as", "peft-ranks", "--match-experts",
                 "160", "--json"]) == 0  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    moe = trainable_parameters([160], LLAMA2_7B_MODULE_SHAPES, rank=8)
    assert data["matched_moe_parameters"] == moe
    assert abs(data["trainable_parameters"] - moe) / moe < 1e-3
    # a per-matrix table: module names and sizes come from it
    rows = []
    for layer in range(3):
        for kind, (d_in, d_out) in (("q_proj", (32, 32)), ("up_proj", (32, 64))):
            block = "self_attn" if kind == "q_proj" else "mlp"
            rows.append({"name": f"model.layers.{layer}.{block}.{kind}.weight", "layer": layer,
                         "kind": kind, "rows": d_out, "cols": d_in, "alpha": 2.0 + layer,
                         "reliable": True})  # fmt: skip
    table = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    argv = ["allocate", "--alphas", str(table), "--as", "peft-ranks", "--targets",
            "q_proj,up_proj", "--budget", "30", "--json"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data["lora_config"]["rank_pattern"])[:2] == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.mlp.up_proj",
    ]
    ranks = [r for layer in data["layer_ranks"] for r in layer]
    assert data["trainable_parameters"] == sum(
        r * (64 if i % 2 == 0 else 96) for i, r in enumerate(ranks)
    )


# --------------------------------------------------------------------------- labels


def test_allocation_records_keep_mode_beta_budget_and_shape():
    default = alphalora_allocation(ALPHAS, 30, 2.0)
    record = allocation_record(default, layer_score="median")
    assert (record["mode"], record["beta"], record["temperature"], record["budget"]) == (
        "default",
        2.0,
        0.5,
        30,
    )
    assert record["layer_score"] == "median" and record["label"] == default.label
    mola = allocation_record(mola_shape("2468", 6, 30))
    assert (mola["mode"], mola["shape"], mola["layer_score"]) == ("mola", "2468", None)
    official = allocation_record(alphalora_official(ALPHAS, 30, 2.5))
    assert official["mode"] == "official" and official["temperature"] == pytest.approx(0.4)
    flat = allocation_record(alphalora_allocation(ALPHAS, 30, 0.0))
    assert flat["temperature"] is None  # β = 0: τ = ∞
    assert with_layer_score(default, "mean").label == default.label
    assert with_layer_score(default, "trimmed", True).label.endswith(
        " · trimmed α, reliable fits only"
    )


def test_labels_for_stored_allocations_never_say_just_custom():
    assert allocation_label({"label": "AlphaLoRA (T=150, β=2.5)"}) == "AlphaLoRA (T=150, β=2.5)"
    assert allocation_label({**custom([2, 3]).to_dict(), "beta": 2.5, "mode": "default"}) == (
        "AlphaLoRA (T=5, β=2.5)"
    )
    assert allocation_label(custom([2, 3]).to_dict()) == "Custom (5 experts)"
    assert allocation_label({"method": "mola-2468", "label": "Custom", "total": 20}) == (
        "MoLA ▽ 2468 (T=20)"
    )
    assert allocation_label(uniform(3, 9).to_dict()).startswith("Uniform")
    assert allocation_label(None, "lora") == "Plain LoRA"
    assert allocation_label(None) == "—"
    assert LLAMA_TARGETS[0] == "q_proj"
