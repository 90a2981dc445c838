"""Layer scores (mean, median, trimmed, reliable fits only) from the per-matrix table, and their
use by the allocate/analyze commands and training configs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from alphalora.allocation.softmax_rules import alphalora_allocation
from alphalora.cli import main
from alphalora.errors import AlphaLoRAError
from alphalora.finetune.config import TrainConfig
from alphalora.spectral.analysis import layer_table
from alphalora.spectral.layer_scores import (
    fallback_layers,
    flagged_layers,
    layer_score_table,
    layer_scores,
    layers_with_score,
)

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _table() -> pd.DataFrame:
    """Three layers: 0 has one huge outlier (v_proj 18), 1 is calm except for one flagged fit,
    2 has only flagged fits (and a failed one)."""
    alphas = {
        0: [3.0, 3.2, 18.0, 2.8, 3.1, 3.3, 2.9],
        1: [4.0, 4.2, 4.4, 16.0, 3.8, 4.1, 3.9],
        2: [2.0, 2.5, 3.0, float("nan")],
    }
    flagged = {(1, "o_proj"), (2, "q_proj"), (2, "k_proj"), (2, "v_proj"), (2, "o_proj")}
    rows = [{"name": "model.embed_tokens.weight", "layer": None, "kind": "embed", "alpha": 30.0,
             "alpha_weighted": 1.0, "log_norm": 1.0, "reliable": True}]  # fmt: skip
    for layer, values in alphas.items():
        for kind, alpha in zip(KINDS, values, strict=False):
            rows.append(
                {
                    "name": f"model.layers.{layer}.x.{kind}.weight",
                    "layer": layer,
                    "kind": kind,
                    "alpha": alpha,
                    "alpha_weighted": 1.0,
                    "log_norm": 1.0,
                    "reliable": (layer, kind) not in flagged,
                }
            )
    df = pd.DataFrame(rows)
    df["layer"] = df["layer"].astype("Int64")
    return df


def test_mean_over_every_matrix_is_the_analysis_alpha_mean_exactly():
    rng = np.random.default_rng(1)
    df = _table()
    df.loc[df["layer"].notna(), "alpha"] = rng.uniform(1.5, 9, int(df["layer"].notna().sum()))
    expected = layer_table(df)["alpha_mean"].tolist()
    got = layer_scores(df)  # the paper-exact default
    assert got == expected  # bit for bit, not approximately


def test_median_and_trimmed_resist_a_single_outlier():
    df = _table()
    table = layer_score_table(df, "median").set_index("layer")
    assert table.at[0, "score"] == 3.1  # median of the seven
    assert layer_scores(df, "mean")[0] == pytest.approx(36.3 / 7)
    trimmed = layer_score_table(df, "trimmed").set_index("layer")
    # ≥ 5 matrices: the single largest (18) and smallest (2.8) are dropped
    assert trimmed.at[0, "score"] == pytest.approx((3.0 + 3.2 + 3.1 + 3.3 + 2.9) / 5)
    assert trimmed.at[0, "n_used"] == 5 and "v_proj 18.00" in trimmed.at[0, "left_out"]
    # fewer than 5 finite alphas: the plain mean (the NaN fit is never used)
    assert trimmed.at[2, "score"] == pytest.approx(2.5) and trimmed.at[2, "n_used"] == 3
    # the matrix farthest from the mean is named as the driver
    assert layer_score_table(df).set_index("layer").at[0, "driver"] == "v_proj 18.00"


def test_excluding_unreliable_fits_and_the_fallback_when_none_is_left():
    df = _table()
    table = layer_score_table(df, "mean", exclude_unreliable=True).set_index("layer")
    assert table.at[1, "score"] == pytest.approx((4.0 + 4.2 + 4.4 + 3.8 + 4.1 + 3.9) / 6)
    assert "o_proj 16.00!" in table.at[1, "left_out"] and not table.at[1, "flagged"]
    # layer 2 has no reliable fit: it falls back to all its finite fits, flagged, never NaN
    assert table.at[2, "fallback"] and table.at[2, "flagged"]
    assert table.at[2, "score"] == pytest.approx(2.5)
    plain = layer_score_table(df)
    assert flagged_layers(plain) == [1, 2] and fallback_layers(plain) == []
    scored = layer_score_table(df, "median", True)
    assert fallback_layers(scored) == [2] and flagged_layers(scored) == [2]
    alphas = layer_scores(df, "median", True)
    assert all(np.isfinite(alphas)) and len(alphas) == 3


def test_bad_tables_and_methods_are_refused():
    df = _table()
    with pytest.raises(AlphaLoRAError, match="Unknown layer score 'mode'"):
        layer_scores(df, "mode")
    nan_layer = df.copy()
    nan_layer.loc[nan_layer["layer"] == 2, "alpha"] = np.nan
    with pytest.raises(AlphaLoRAError, match=r"Layer\(s\) \[2\] have no finite alpha"):
        layer_scores(nan_layer, "median", True)
    assert flagged_layers(layer_score_table(nan_layer)) == [1, 2]  # shown, not raised
    with pytest.raises(AlphaLoRAError, match=r"no rows for layer\(s\) \[1\]"):
        layer_scores(df[df["layer"] != 1])
    with pytest.raises(AlphaLoRAError, match="lacks column"):
        layer_scores(df.drop(columns=["alpha"]))


def test_layers_with_score_keeps_the_mean_and_adds_the_score():
    df = _table()
    out = layers_with_score(layer_table(df), df, "median", True)
    assert out["alpha_mean"].tolist() == layer_table(df)["alpha_mean"].tolist()
    assert out["layer_score"].tolist() == layer_scores(df, "median", True)
    assert set(out["layer_score_method"]) == {"median α, reliable fits only"}
    assert out["score_fallback"].tolist() == [False, False, True]


# --------------------------------------------------------------------------- command line


def test_allocate_layer_score_options_on_a_per_matrix_table(tmp_path, capsys):
    df = _table()
    path = tmp_path / "matrices.csv"
    df.to_csv(path, index=False)
    argv = ["allocate", "--alphas", str(path), "--budget", "15", "--json"]
    assert main([*argv, "--layer-score", "median", "--exclude-unreliable"]) == 0
    data = json.loads(capsys.readouterr().out)
    medians = layer_scores(df, "median", True)
    assert data["alphas"] == pytest.approx(medians)
    assert data["experts"] == list(alphalora_allocation(medians, 15, 2.5).experts)
    assert data["layer_score"] == "median" and data["exclude_unreliable"] is True
    assert data["label"].endswith("· median α, reliable fits only")
    assert main(argv) == 0  # no option: the mean, as before
    assert json.loads(capsys.readouterr().out)["alphas"] == pytest.approx(layer_scores(df))


def test_allocate_refuses_score_options_without_a_per_matrix_table(tmp_path, capsys):
    layers = tmp_path / "layers.csv"
    pd.DataFrame({"layer": [0, 1], "alpha_mean": [2.0, 3.0], "layer_score": [2.5, 2.0]}).to_csv(
        layers, index=False
    )
    for argv in (
        ["--alphas", "2,3,4", "--layer-score", "median"],
        ["--alphas", str(layers), "--exclude-unreliable"],
        ["--preset", "llama2-7b", "--layer-score", "trimmed"],
    ):
        assert main(["allocate", *argv]) == 1
        assert "need the per-matrix table" in capsys.readouterr().err
    # a per-layer table written with a layer score is read through that score
    assert main(["allocate", "--alphas", str(layers), "--budget", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["alphas"] == [2.5, 2.0]


@pytest.fixture
def folder(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(3):
        for kind in ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj"):
            tensors[f"model.layers.{layer}.x.{kind}.weight"] = torch.randn(40, 40, generator=g)
    out = tmp_path / "model"
    out.mkdir()
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 3}))
    return out


def test_analyze_layers_out_carries_the_chosen_score(folder, tmp_path, capsys):
    out, layers = tmp_path / "m.csv", tmp_path / "l.csv"
    argv = ["analyze", str(folder), "--fit", "clauset", "--device", "cpu", "--quiet"]
    argv += ["--out", str(out), "--layers-out", str(layers), "--layer-score", "trimmed"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "layer score: trimmed α" in text
    table = pd.read_csv(layers)
    matrices = pd.read_csv(out)
    assert table["layer_score"].tolist() == pytest.approx(layer_scores(matrices, "trimmed"))
    assert table["alpha_mean"].tolist() == pytest.approx(layer_scores(matrices, "mean"))


def test_training_config_accepts_the_score_options_and_resolves_with_them(folder):
    from alphalora.finetune.resolve import allocation_record_for, resolve_allocation
    from alphalora.spectral.analysis import analyze
    from alphalora.spectral.analysis_types import AnalysisOptions

    spec = {"method": "alphalora", "budget": 9, "layer_score": "median"}
    cfg = TrainConfig(model=str(folder), allocation={**spec, "exclude_unreliable": True})
    allocation = resolve_allocation(cfg, 3, analysis_device="cpu")
    matrices = analyze(str(folder), AnalysisOptions(fit="hill-peak", device="cpu")).matrices
    assert list(allocation.alphas) == pytest.approx(layer_scores(matrices, "median", True))
    assert "median α, reliable fits only" in allocation.label
    record = allocation_record_for(cfg, allocation)
    assert record["layer_score"] == "median" and record["exclude_unreliable"] is True
    for bad, message in (
        ({**spec, "layer_score": "mode"}, "layer_score must be one of"),
        ({**spec, "exclude_unreliable": "yes"}, "must be true or false"),
    ):
        with pytest.raises(AlphaLoRAError, match=message):
            TrainConfig(allocation=bad)
