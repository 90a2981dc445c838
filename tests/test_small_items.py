"""The smaller findings of the adversarial pass (issue 11, case 9): --warmup-steps and the
warmup clamp, the app config's comment, bool tensors, an all-flagged analysis, a folder in
place of the store, and the `predict` / `adapters check` commands."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from reliability_helpers import tiny_config, tiny_files
from safetensors.torch import load_file, save_file

from alphalora.cli import main
from alphalora.errors import AlphaLoRAError
from alphalora.finetune.adapter_check import check_adapter
from alphalora.finetune.predict import fill_template, load_run, predict
from alphalora.finetune.tasks.load import load_task
from alphalora.finetune.train import train
from alphalora.spectral.analysis import analyze
from alphalora.spectral.analysis_types import AnalysisOptions
from alphalora.spectral.sources import open_source
from alphalora.store.run_store import RunStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_files(tmp_path_factory.mktemp("tiny"))


def _config(tiny, **changes) -> dict:
    return tiny_config(tiny, **{"warmup_steps": 4, **changes})


# --------------------------------------------------------------------------- warmup


def test_steps_below_the_warmup_lowers_the_warmup_with_a_note(tiny, tmp_path, capsys):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(_config(tiny)), encoding="utf-8")
    assert main(["train", str(path), "--steps", "1", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "note: warmup_steps 4 is more than --steps 1; using warmup_steps 1" in captured.err
    run_id = re.search(r"run (\S+): completed", captured.out).group(1)
    assert RunStore().get_run(run_id)["config"]["warmup_steps"] == 1
    assert main(["train", str(path), "--steps", "2", "--warmup-steps", "0", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "note:" not in captured.err
    run_id = re.search(r"run (\S+): completed", captured.out).group(1)
    assert RunStore().get_run(run_id)["config"]["warmup_steps"] == 0
    assert main(["train", str(path), "--steps", "1", "--warmup-steps", "3", "--quiet"]) == 1
    assert "warmup_steps (3) exceeds steps (1)" in capsys.readouterr().err


# --------------------------------------------------------------------------- app config


def test_every_alphalora_variable_the_docs_name_is_read_by_the_code():
    documented = set()
    for path in [ROOT / ".streamlit" / "config.toml", ROOT / "README.md", *ROOT.glob("docs/*.md")]:
        documented |= set(re.findall(r"ALPHALORA_[A-Z_]+", path.read_text(encoding="utf-8")))
    code = ""
    for pattern in ("alphalora/**/*.py", "ui/*.py", "app.py", "scripts/*.sh", "tests/*.py"):
        for path in ROOT.glob(pattern):
            if path.name != Path(__file__).name:
                code += path.read_text(encoding="utf-8")
    unread = sorted(name for name in documented if f'"{name}"' not in code and name not in code)
    assert documented and unread == []


# --------------------------------------------------------------------------- bool tensors


def _llama_with_a_bool_weight(folder: Path) -> Path:
    folder.mkdir()
    tensors = {f"model.layers.{i}.self_attn.q_proj.weight": torch.randn(24, 24) for i in range(2)}
    tensors["model.layers.0.self_attn.mask.weight"] = torch.ones(24, 24, dtype=torch.bool)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    return folder


def test_bool_tensors_are_masks_not_quantised_weights(tmp_path):
    folder = _llama_with_a_bool_weight(tmp_path / "st")
    source = open_source(folder)  # used to refuse the model as "quantised"
    names = {i.name for i in source.matrices(include_non_block=True)}
    assert "model.layers.0.self_attn.mask.weight" not in names and len(names) == 2
    pickled = tmp_path / "pt"
    pickled.mkdir()
    torch.save(load_file(str(folder / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "config.json").write_text((folder / "config.json").read_text())
    assert len(open_source(pickled, allow_pickle=True).matrices()) == 2


# --------------------------------------------------------------------------- empty slice


def test_an_analysis_with_every_fit_flagged_warns_nothing(tmp_path, capsys):
    folder = tmp_path / "zeros"
    folder.mkdir()
    tensors = {f"model.layers.{i}.self_attn.q_proj.weight": torch.zeros(16, 16) for i in range(2)}
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = analyze(str(folder), AnalysisOptions(device="cpu"))
        summary = result.summary()
        assert main(["analyze", str(folder), "--device", "cpu", "--quiet"]) == 0
    assert summary["flagged"] == 2 and summary["alpha_mean"] != summary["alpha_mean"]  # NaN
    assert "2 of 2 fits flagged" in capsys.readouterr().out


# --------------------------------------------------------------------------- store folder


def test_a_folder_in_place_of_the_store_is_named_as_such(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "runs.sqlite"
    folder.mkdir()
    with pytest.raises(AlphaLoRAError, match="is a folder, not a run store file") as info:
        RunStore(folder)
    assert "not writable" not in str(info.value)
    monkeypatch.setenv("ALPHALORA_RUNS_DB", str(folder))
    assert main(["runs", "list"]) == 1
    assert "is a folder, not a run store file" in capsys.readouterr().err


# --------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """A completed MoE-LoRA run and a completed plain-LoRA run, in a shared data directory."""
    import os

    home = tmp_path_factory.mktemp("predict-home")
    old = os.environ.get("ALPHALORA_HOME")
    os.environ["ALPHALORA_HOME"] = str(home)
    try:
        store = RunStore()
        moe = train(_config(tiny, warmup_steps=0), store=store)
        lora = train(_config(tiny, warmup_steps=0, method="lora", allocation=None), store=store)
    finally:
        if old is None:
            os.environ.pop("ALPHALORA_HOME", None)
        else:
            os.environ["ALPHALORA_HOME"] = old
    return {"home": home, "moe": moe, "lora": lora}


@pytest.mark.parametrize("method", ["moe", "lora"])
def test_predict_scores_like_the_evaluation(tiny, finished, monkeypatch, method):
    """Answering the run's own held-out prompts gives exactly its final accuracy."""
    monkeypatch.setenv("ALPHALORA_HOME", str(finished["home"]))
    result = finished[method]
    loaded = load_run(result["run_id"])
    assert loaded.choices and loaded.template == "{prompt}"
    examples = load_task(tiny["task"]).eval[:16]
    answers = predict(loaded, [ex.prompt for ex in examples], raw=True)
    correct = sum(a.answer == ex.answer.strip() for a, ex in zip(answers, examples, strict=True))
    assert correct / len(examples) == pytest.approx(result["accuracy_after"])
    for a in answers:
        assert a.answer == max(a.scores, key=a.scores.get)


def test_predict_cli_prints_the_chosen_label(finished, monkeypatch, capsys):
    monkeypatch.setenv("ALPHALORA_HOME", str(finished["home"]))
    run_id = finished["moe"]["run_id"]
    prompt = "Review: the film was great\nSentiment:"
    assert main(["predict", run_id, "--text", prompt, "--text", prompt, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("answer: ") == 2
    assert re.search(r"answer: (positive|negative)  \(log-likelihoods: \w+ -?\d", out)
    assert main(["predict", run_id, "--text", prompt, "--json", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["answer"] in ("positive", "negative") and set(data[0]["scores"]) == {
        "positive",
        "negative",
    }


def test_predict_refuses_a_run_without_an_adapter(finished, monkeypatch, capsys):
    monkeypatch.setenv("ALPHALORA_HOME", str(finished["home"]))
    run_id = RunStore().create_run({"model": "m", "task": "t"})
    assert main(["predict", run_id, "--text", "hi"]) == 1
    assert "has no saved adapter (it is queued)" in capsys.readouterr().err


def test_fill_template():
    assert fill_template("Review: {text}\nSentiment:", "nice") == "Review: nice\nSentiment:"
    assert fill_template("{prompt}", "as is") == "as is"
    assert fill_template("Q: {question}\n{options}", "x") == "x"


# --------------------------------------------------------------------------- adapters check


def test_adapters_check_validates_config_checksum_and_shapes(finished, tmp_path, capsys):
    import shutil

    adapter = Path(finished["moe"]["adapter_path"])
    summary = check_adapter(adapter.parent)  # the run folder is accepted too
    assert summary["format"] == "MoE-LoRA" and summary["total_experts"] == 5
    assert summary["layers"] == 2 and summary["checksum"] == "verified"
    assert main(["adapters", "check", str(adapter)]) == 0
    assert "adapter OK" in capsys.readouterr().out
    assert check_adapter(finished["lora"]["adapter_path"])["format"] == "LoRA (peft)"

    altered = tmp_path / "altered"
    shutil.copytree(adapter, altered)
    data = bytearray((altered / "adapter.safetensors").read_bytes())
    data[-4] ^= 0xFF
    (altered / "adapter.safetensors").write_bytes(bytes(data))
    assert main(["adapters", "check", str(altered)]) == 1
    assert "do not match their checksum" in capsys.readouterr().err

    partial = tmp_path / "partial"
    shutil.copytree(adapter, partial)
    tensors = load_file(str(partial / "adapter.safetensors"))
    dropped = sorted(k for k in tensors if k.endswith("lora_B"))[0]
    del tensors[dropped]
    save_file(tensors, str(partial / "adapter.safetensors"))
    config = json.loads((partial / "adapter_config.json").read_text())
    config.pop("weights_sha256")
    (partial / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AlphaLoRAError, match="is incomplete: .* lacks lora_A, lora_B"):
        check_adapter(partial)
    with pytest.raises(AlphaLoRAError, match="adapter_config.json is missing"):
        check_adapter(tmp_path)
