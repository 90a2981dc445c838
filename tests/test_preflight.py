"""Launch checks: a run that cannot work is refused before it starts, with a message that says
what to change (model, task, allocation's layers, adapter size); no weights read, no network."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from train_helpers import save_tiny_model, toy_reviews, write_jsonl

from alphalora.allocation.params import trainable_parameters
from alphalora.errors import AlphaLoRAError
from alphalora.finetune.preflight import (
    ModelFacts,
    check_launch,
    check_task,
    facts_from_analysis,
    model_facts,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("preflight") / "tiny-model")


def _task(tmp_path: Path, n: int = 40) -> str:
    return str(write_jsonl(tmp_path / "reviews.jsonl", toy_reviews(n)))


def _config(model: str, task: str, **changes) -> dict:
    base = {"model": model, "task": task, "method": "moe-lora", "steps": 2, "device": "cpu"}
    return {**base, **changes}


def test_a_tiny_folder_passes_with_its_layers_parameters_and_adapter_size(tiny, tmp_path):
    facts = model_facts(str(tiny))
    assert facts.n_layers == 2 and facts.where.startswith("the folder")
    assert facts.parameters == sum(  # exact, from the safetensors headers
        p.numel() for p in __import__("safetensors.torch").torch.load_file(
            str(tiny / "model.safetensors")).values()
    )  # fmt: skip
    assert facts.module_shapes["q_proj"] == (32, 32) and facts.module_shapes["up_proj"] == (32, 64)
    check = check_launch(
        _config(str(tiny), _task(tmp_path), allocation={"experts": [3, 2], "top_k": [2, 2]})
    )
    assert check.total_experts == 5 and check.task["n_train"] > 0
    assert check.trainable_parameters == trainable_parameters([3, 2], facts.module_shapes)
    uniform = check_launch(
        _config(str(tiny), _task(tmp_path), allocation={"method": "uniform", "budget": 6})
    )
    assert uniform.total_experts == 6
    lora = check_launch(_config(str(tiny), _task(tmp_path), method="lora"))
    assert lora.total_experts is None and lora.trainable_parameters is None


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("/nonexistent/model/path", "not found: no such folder"),
        ("complete garbage !!", "not found: no such folder or hub id"),
        ("org/na me with spaces", "neither an existing folder nor a Hugging Face hub id"),
        ("", "No model given"),
        ("embedded:nope", "Unknown embedded model"),
    ],
)
def test_missing_paths_and_garbage_are_refused(ref, message):
    with pytest.raises(AlphaLoRAError, match=message):
        model_facts(ref)


def test_folders_the_trainer_could_not_load_are_refused(tiny, tmp_path):
    with pytest.raises(AlphaLoRAError, match="is a file"):
        model_facts(str(tiny / "config.json"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AlphaLoRAError, match="has no config.json"):
        model_facts(str(empty))
    (empty / "config.json").write_text("{not json")
    with pytest.raises(AlphaLoRAError, match="not valid JSON"):
        model_facts(str(empty))
    (empty / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    with pytest.raises(AlphaLoRAError, match="no weights"):
        model_facts(str(empty))
    (empty / "model.safetensors").write_bytes((tiny / "model.safetensors").read_bytes())
    with pytest.raises(AlphaLoRAError, match="no tokenizer"):
        model_facts(str(empty))


def _fake_cache(cache: Path, repo: str, snapshot_from: Path | None) -> None:
    """The Hugging Face cache layout: models--org--name/refs/main → snapshots/<hash>/…"""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    if snapshot_from is not None:
        for f in snapshot_from.iterdir():
            (snap / f.name).write_bytes(f.read_bytes())


def test_hub_ids_are_read_from_the_local_cache_and_refused_offline_when_missing(tiny, tmp_path):
    cache = tmp_path / "hf-cache"
    _fake_cache(cache, "someorg/tiny-llama", tiny)
    facts = model_facts("someorg/tiny-llama", offline=True, cache_dir=cache)
    assert facts.n_layers == 2 and "Hugging Face cache" in facts.where
    with pytest.raises(AlphaLoRAError, match="not in the Hugging Face cache.*switched off"):
        model_facts("someorg/not-downloaded", offline=True, cache_dir=cache)
    online = model_facts("someorg/not-downloaded", offline=False, cache_dir=cache)
    assert online.n_layers is None and "downloaded when the run starts" in online.where


def test_layer_count_and_absurd_allocations_are_refused_with_the_numbers(tiny, tmp_path):
    task = _task(tmp_path)
    with pytest.raises(AlphaLoRAError, match="3 layers but .* has 2 transformer layers"):
        check_launch(_config(str(tiny), task, allocation={"experts": [2, 2, 2]}))
    with pytest.raises(AlphaLoRAError, match="cannot give 2 layers at least 1"):
        check_launch(_config(str(tiny), task, allocation={"method": "uniform", "budget": 1}))
    huge = 10**9
    with pytest.raises(AlphaLoRAError) as err:
        check_launch(_config(str(tiny), task, allocation={"experts": [huge, huge]}))
    text = str(err.value)
    facts = model_facts(str(tiny))
    assert f"{2 * huge:,} experts" in text and f"{facts.parameters:,} parameters" in text
    assert "Allocation page" in text


def test_tasks_are_loaded_like_the_trainer_does(tmp_path):
    assert check_task(_task(tmp_path))["n_eval"] > 0
    with pytest.raises(AlphaLoRAError):
        check_task(str(tmp_path / "missing.jsonl"))
    with pytest.raises(AlphaLoRAError, match="no held-out examples"):
        check_task("x", load=lambda spec: {"n_train": 5, "n_eval": 0})
    with pytest.raises(AlphaLoRAError, match="steps must be"):
        check_launch({"model": "embedded", "task": "rotten-tomatoes", "steps": 0})


def test_embedded_facts_come_from_its_analysis_without_reading_the_gguf():
    matrices = pd.DataFrame(
        {
            "layer": [0, 0, 1, None],
            "kind": ["q_proj", "down_proj", "q_proj", "lm_head"],
            "rows": [576, 576, 576, 49152],
            "cols": [576, 1536, 576, 576],
        }
    )
    analysis = SimpleNamespace(
        matrices=matrices,
        layers=pd.DataFrame({"layer": [0, 1]}),
        model={"name": "SmolLM2", "n_layers": 30, "parameters": 134_515_008},
    )
    facts = model_facts("embedded", analysis=analysis)
    assert facts == facts_from_analysis("embedded", analysis)
    assert isinstance(facts, ModelFacts) and facts.n_layers == 30
    assert facts.module_shapes == {"q_proj": (576, 576), "down_proj": (1536, 576)}
    assert facts.parameters == 134_515_008


def test_the_adapter_bound_is_the_model_size_with_a_floor_for_toy_models():
    from alphalora.finetune.config import TrainConfig
    from alphalora.finetune.preflight import ADAPTER_FLOOR, check_adapter_size

    shapes = {"q_proj": (576, 576), "down_proj": (1536, 576)}
    per_expert = 8 * (576 + 576) + 576 + 8 * (1536 + 576) + 1536
    big = ModelFacts("m", "test", 30, 134_515_008, shapes)
    cfg = TrainConfig(targets=["q_proj", "down_proj"])
    fits = 134_515_008 // per_expert
    assert check_adapter_size(cfg, big, fits) == fits * per_expert
    with pytest.raises(AlphaLoRAError, match="more than the 134,515,008 parameters"):
        check_adapter_size(cfg, big, fits + 1)
    toy = ModelFacts("t", "test", 2, 20_000, shapes)  # smaller than any adapter
    assert check_adapter_size(cfg, toy, ADAPTER_FLOOR // per_expert) is not None
    with pytest.raises(AlphaLoRAError):
        check_adapter_size(cfg, toy, ADAPTER_FLOOR // per_expert + 1)
    assert check_adapter_size(cfg, ModelFacts("h", "hub"), 10**12) is None  # nothing known


def test_the_embedded_model_without_an_analysis_reads_its_gguf_header():
    facts = model_facts("embedded")
    assert facts.n_layers == 30 and facts.parameters > 100_000_000
    assert facts.module_shapes["q_proj"] == (576, 576)
