"""`python -m alphalora allocate`: argument shapes, file inputs, JSON output, clean errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from alphalora.allocation.model import Allocation
from alphalora.allocation.presets import LLAMA2_7B_LAYER_ALPHAS
from alphalora.allocation.shapes import mola_shape
from alphalora.allocation.softmax_rules import alphalora_allocation, alphalora_official
from alphalora.cli import main

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _json(capsys, argv):
    assert main(argv) == 0
    out = capsys.readouterr().out
    data = json.loads(out)  # exactly one JSON object on stdout
    assert isinstance(data["experts"], list) and isinstance(data["top_k"], list)
    return data


def _analyze_table(n_layers=6, seed=0):
    """An `analyze`-shaped table: one row per matrix, plus embedding/head rows with no layer."""
    rng = np.random.default_rng(seed)
    rows = [
        {"name": "model.embed_tokens.weight", "layer": None, "kind": "embed", "alpha": 12.0},
        {"name": "lm_head.weight", "layer": None, "kind": "lm_head", "alpha": 15.0},
    ]
    for layer in range(n_layers):
        for kind in KINDS:
            rows.append(
                {
                    "name": f"model.layers.{layer}.mlp.{kind}.weight",
                    "layer": layer,
                    "kind": kind,
                    "alpha": float(rng.uniform(2, 6)),
                    "xmin": 1.0,
                }
            )
    rows[5]["alpha"] = float("nan")  # a failed fit is ignored, not averaged
    df = pd.DataFrame(rows)
    means = df.dropna(subset=["layer"]).groupby("layer")["alpha"].mean().tolist()
    return df, means


def test_json_official_matches_library(capsys):
    alphas = "2.1,2.7,3.1,3.4,4.3,3.9,2.8,3.3"
    data = _json(
        capsys,
        [
            "allocate",
            "--alphas",
            alphas,
            "--budget",
            "40",
            "--beta",
            "2.5",
            "--mode",
            "official",
            "--json",
        ],
    )
    expected = alphalora_official([float(a) for a in alphas.split(",")], 40, 2.5)
    assert data["experts"] == list(expected.experts) and data["top_k"] == list(expected.top_k)
    assert data["method"] == "alphalora-official" and sum(data["experts"]) == 40


def test_json_default_with_bounds(capsys):
    argv = ["allocate", "--alphas", "1.5,2,3,8,9", "--budget", "20", "--beta", "3"]
    data = _json(capsys, [*argv, "--mode", "default", "--min", "2", "--max", "6", "--json"])
    assert sum(data["experts"]) == 20
    assert min(data["experts"]) >= 2 and max(data["experts"]) <= 6
    assert data["min_experts"] == 2 and data["max_experts"] == 6


def test_temperature_equals_inverse_beta(capsys):
    base = ["allocate", "--alphas", "2,3,4,5,6", "--budget", "23", "--json"]
    by_beta = _json(capsys, [*base, "--beta", "2.5"])
    by_tau = _json(capsys, [*base, "--temperature", "0.4"])
    assert by_beta["experts"] == by_tau["experts"]
    assert by_tau["beta"] == pytest.approx(2.5)


def test_preset_gives_paper_counts(capsys):
    data = _json(capsys, ["allocate", "--preset", "llama2-7b", "--mode", "official", "--json"])
    assert data["experts"] == list(alphalora_official(LLAMA2_7B_LAYER_ALPHAS).experts)
    assert data["trainable_parameters"] == 105_635_840
    assert data["alphas"] == pytest.approx(list(LLAMA2_7B_LAYER_ALPHAS))


def test_csv_analyze_output_as_file(capsys, tmp_path):
    df, means = _analyze_table()
    path = tmp_path / "analysis.csv"
    df.to_csv(path, index=False)
    data = _json(capsys, ["allocate", "--alphas", str(path), "--budget", "30", "--json"])
    assert data["alphas"] == pytest.approx(means)
    assert data["experts"] == list(alphalora_allocation(means, 30, 2.5).experts)


def test_per_layer_table_as_file(capsys, tmp_path):
    path = tmp_path / "layers.csv"
    layers = pd.DataFrame({"layer": [2, 0, 1], "alpha_mean": [4.0, 2.0, 3.0], "n_matrices": 7})
    layers.to_csv(path, index=False)
    data = _json(capsys, ["allocate", "--alphas", str(path), "--budget", "9", "--json"])
    assert data["alphas"] == [2.0, 3.0, 4.0]


@pytest.mark.parametrize("fmt", ["parquet", "json-records", "json-list", "txt"])
def test_other_file_formats(capsys, tmp_path, fmt):
    df, means = _analyze_table(seed=3)
    if fmt == "parquet":
        path = tmp_path / "a.parquet"
        df.to_parquet(path)
    elif fmt == "json-records":
        path = tmp_path / "a.json"
        path.write_text(df.to_json(orient="records"))
    elif fmt == "json-list":
        path = tmp_path / "a.json"
        path.write_text(json.dumps(means))
    else:
        path = tmp_path / "a.txt"
        path.write_text("# layer alphas\n" + "\n".join(f"{m:.17g}" for m in means) + "\n")
    data = _json(capsys, ["allocate", "--alphas", str(path), "--json"])
    assert data["alphas"] == pytest.approx(means)
    assert sum(data["experts"]) == 5 * len(means)  # default budget: 5 per layer


def test_shape_and_layers(capsys):
    data = _json(capsys, ["allocate", "--shape", "2468", "--layers", "30", "--json"])
    assert data["experts"] == list(mola_shape("2468", 30).experts)
    assert data["method"] == "mola-2468"
    rescaled = _json(capsys, ["allocate", "--shape", "◇", "--budget", "128", "--json"])
    assert rescaled["experts"] == [2] * 8 + [6] * 16 + [2] * 8
    flat = _json(capsys, ["allocate", "--shape", "uniform", "--layers", "6", "--json"])
    assert flat["experts"] == [5] * 6


def test_table_output_and_out_file(capsys, tmp_path):
    target = tmp_path / "sub" / "alloc.json"
    assert main(["allocate", "--preset", "llama2-7b", "--out", str(target)]) == 0
    out = capsys.readouterr().out
    assert "total 160 experts over 32 layers" in out
    assert "trainable parameters: 105,635,840" in out
    assert "█" in out and "4.334" in out
    saved = Allocation.from_json(target.read_text())
    assert saved == alphalora_allocation(LLAMA2_7B_LAYER_ALPHAS, 160, 2.5)


def test_official_zero_layer_is_flagged(capsys):
    alphas = ",".join([repr(1.0)] + [repr(1.5 ** (1 / 2.5))] * 6)
    assert main(["allocate", "--alphas", alphas, "--budget", "12", "--mode", "official"]) == 0
    assert "warning: layer(s) [0] received 0 experts" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--alphas", "2,nan,3"], r"layer(s) [1]"),
        (["--alphas", "2,-3,3"], r"layer(s) [1]"),
        (["--alphas", "2,x,3"], "'x' is not one"),
        (["--alphas", "2,3,4", "--budget", "2"], "cannot give 3 layers"),
        (["--alphas", "2,3", "--budget", "9", "--max", "4"], "at most 4"),
        (["--alphas", "2,3", "--beta", "-1"], "beta must be a finite"),
        (["--alphas", "2,3", "--temperature", "0"], "temperature must be > 0"),
        (["--alphas", "2,3", "--mode", "official", "--min", "2"], "only apply to --mode default"),
        (["--alphas", "missing.csv"], "not found"),
        (["--preset", "gpt-9"], "Unknown preset"),
        (["--shape", "8602"], "Unknown MoLA shape"),
        (["--shape", "2468", "--beta", "2"], "cannot be combined with --shape"),
        ([], "Give layer alphas"),
    ],
)
def test_bad_inputs_exit_1_without_traceback(capsys, argv, message):
    assert main(["allocate", *argv]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ")
    assert message in captured.err
    assert "Traceback" not in captured.err + captured.out


def test_bad_files_exit_1(capsys, tmp_path):
    no_alpha = tmp_path / "bad.csv"
    pd.DataFrame({"name": ["a", "b"], "value": [1, 2]}).to_csv(no_alpha, index=False)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    df, _ = _analyze_table()
    gap = tmp_path / "gap.csv"
    df[df["layer"] != 2].to_csv(gap, index=False)
    for path, message in [
        (no_alpha, "expected an `analyze` table"),
        (broken, "not valid JSON"),
        (gap, "no rows for layer(s) [2]"),
    ]:
        assert main(["allocate", "--alphas", str(path)]) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_beta_and_temperature_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["allocate", "--alphas", "2,3", "--beta", "2", "--temperature", "0.5"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
