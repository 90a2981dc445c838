"""Output paths are checked before any work, and write errors become clear messages
(issue 11, case 3): `analyze --out/--layers-out`, `runs metrics --csv`, `allocate --out`."""

from __future__ import annotations

import errno
import json

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from alphalora import paths
from alphalora.cli import main
from alphalora.errors import AlphaLoRAError
from alphalora.spectral.analysis import export_table
from alphalora.store.run_store import RunStore


@pytest.fixture
def model(tmp_path):
    tensors = {f"model.layers.{i}.self_attn.q_proj.weight": torch.randn(24, 24) for i in range(2)}
    folder = tmp_path / "model"
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    return folder


@pytest.fixture
def no_analysis(monkeypatch):
    """Fail the test if the analysis starts: the path must be refused before it."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the analysis ran before the output path was checked")

    monkeypatch.setattr("alphalora.cli.analyze_cmd.analyze", refuse)
    return calls


@pytest.mark.parametrize(
    ("flag", "target", "message"),
    [
        ("--out", "/proc/x.csv", "no file can be created in /proc"),
        ("--layers-out", "/proc/x.csv", "no file can be created in /proc"),
        ("--out", "{model}/model.safetensors/x.csv", "is a file, not a folder"),
        ("--layers-out", "{model}/model.safetensors/sub/x.json", "is a file, not a folder"),
        ("--out", "{tmp}/table.txt", "use a .csv, .json or .parquet file name"),
        ("--out", "{tmp}", "use a .csv, .json or .parquet file name"),
        ("--out", "{tmp}/folder.csv", "is a folder"),
    ],
)
def test_analyze_refuses_bad_output_paths_before_the_analysis(
    model, tmp_path, capsys, no_analysis, flag, target, message
):
    (tmp_path / "folder.csv").mkdir()
    target = target.format(model=model, tmp=tmp_path)
    assert main(["analyze", str(model), "--quiet", flag, target]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert no_analysis == []


def test_missing_output_folders_are_created(model, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "table.csv"
    assert main(["analyze", str(model), "--quiet", "--device", "cpu", "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == 2


def test_a_write_error_is_an_actionable_message(tmp_path, monkeypatch):
    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    with pytest.raises(AlphaLoRAError, match="Could not write the table .*No space left"):
        export_table(pd.DataFrame({"a": [1]}), tmp_path / "t.csv")
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_runs_metrics_csv_is_checked_and_write_errors_are_clear(tmp_path, capsys, monkeypatch):
    store = RunStore()
    run_id = store.create_run({"model": "m"})
    store.log_metrics(run_id, 1, {"train_loss": 0.5})
    assert main(["runs", "metrics", run_id, "--csv", "/proc/x.csv"]) == 1
    err = capsys.readouterr().err
    assert "Cannot write the metrics file /proc/x.csv" in err
    assert main(["runs", "metrics", run_id, "--csv", str(tmp_path / "m.txt")]) == 1
    assert "use a .csv file name" in capsys.readouterr().err

    def refuse(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(paths, "atomic_write_text", refuse)
    assert main(["runs", "metrics", run_id, "--csv", str(tmp_path / "m.csv")]) == 1
    assert "Could not write the metrics file" in capsys.readouterr().err


def test_allocate_out_is_checked_first(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    argv = ["allocate", "--alphas", "2,3", "--out", str(tmp_path / "file" / "a.json")]
    assert main(argv) == 1
    assert "is a file, not a folder" in capsys.readouterr().err


def test_check_output_file_unit(tmp_path):
    assert paths.check_output_file(tmp_path / "a" / "b.csv", (".csv",)) == tmp_path / "a" / "b.csv"
    assert not (tmp_path / "a").exists()  # checking creates nothing
    assert list(tmp_path.iterdir()) == []  # and leaves no probe file
    with pytest.raises(AlphaLoRAError, match=r"use a \.csv file name"):
        paths.check_output_file(tmp_path / "b.CSV.gz", (".csv",))
