"""`python -m alphalora analyze`: the output file's columns, the summary, and error exits."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from alphalora.cli import main

REQUIRED = ["name", "layer", "kind", "alpha", "xmin", "D", "n_tail", "lambda_max"]


@pytest.fixture
def folder(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(3):
        tensors[f"model.layers.{layer}.self_attn.q_proj.weight"] = torch.randn(40, 40, generator=g)
        tensors[f"model.layers.{layer}.mlp.down_proj.weight"] = torch.randn(40, 80, generator=g)
    out = tmp_path / "model"
    out.mkdir()
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 3}))
    return out


@pytest.mark.parametrize("suffix", [".csv", ".json", ".parquet"])
def test_out_file_has_one_row_per_matrix_and_the_named_columns(folder, tmp_path, capsys, suffix):
    out = tmp_path / f"table{suffix}"
    assert (
        main(
            [
                "analyze",
                str(folder),
                "--fit",
                "clauset",
                "--device",
                "cpu",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    df = {".csv": pd.read_csv, ".json": pd.read_json, ".parquet": pd.read_parquet}[suffix](out)
    assert set(REQUIRED) <= set(df.columns)
    assert len(df) == 6
    assert set(df["name"]) == {
        f"model.layers.{i}.{m}.weight"
        for i in range(3)
        for m in ("self_attn.q_proj", "mlp.down_proj")
    }
    assert sorted(df["layer"].unique().tolist()) == [0, 1, 2]
    text = capsys.readouterr().out
    assert "layer" in text and "alpha" in text and "3 layers" in text


def test_missing_path_exits_1_with_a_message(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nowhere"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err


def test_module_entry_point_runs_as_a_process(folder, tmp_path):
    out = tmp_path / "t.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "alphalora", "analyze", str(folder), "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and len(pd.read_csv(out)) == 6
