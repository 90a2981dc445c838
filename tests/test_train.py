"""The training loop, its config, checkpoints/resume, interruption and the CLI (tiny models)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import save_tiny_model, toy_reviews, write_jsonl

from alphalora import paths
from alphalora.errors import AlphaLoRAError
from alphalora.finetune.checkpoints import latest_checkpoint, list_checkpoints
from alphalora.finetune.config import TrainConfig, load_config, preset_names
from alphalora.finetune.data_order import batch_indices
from alphalora.finetune.train import train
from alphalora.store.records import run_dir
from alphalora.store.run_store import RunStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama folder and a toy sentiment JSONL shared by the tests of this module."""
    root = tmp_path_factory.mktemp("tiny")
    model = save_tiny_model(root / "model")
    task = write_jsonl(root / "reviews.jsonl", toy_reviews(120))
    return {"model": str(model), "task": str(task)}


def _config(tiny, **changes) -> dict:
    cfg = {
        "name": "tiny",
        "model": tiny["model"],
        "task": tiny["task"],
        "allocation": {"experts": [3, 2], "top_k": [2, 1]},
        "steps": 6,
        "batch_size": 4,
        "max_length": 32,
        "eval_examples": 12,
        "lr": 0.01,
        "dropout": 0.1,
        "device": "cpu",
    }
    cfg.update(changes)
    return cfg


# --------------------------------------------------------------------------- config


def test_presets_load_and_describe_the_demo_and_the_paper_recipe():
    assert {"demo-cpu", "paper"} <= set(preset_names())
    demo = load_config("demo-cpu")
    assert demo.model == "embedded" and demo.task == "rotten-tomatoes"
    assert 20 <= demo.steps <= 60 and demo.max_length <= 64 and demo.eval_examples == 200
    paper = load_config("paper")
    assert (paper.lr, paper.warmup_steps, paper.batch_size, paper.grad_accum, paper.max_length) == (
        3e-4,
        100,
        8,
        16,
        256,
    )
    again = TrainConfig.from_dict(json.loads(paper.to_json()))
    assert again == paper


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"stepz": 3}, "Unknown config key(s) ['stepz']"),
        ({"steps": 0}, "steps must be a whole number ≥ 1"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"method": "qlora"}, "method must be one of moe-lora, lora"),
        ({"device": "tpu"}, "device must be one of"),
        ({"warmup_steps": 10, "steps": 5}, "warmup_steps (10) exceeds steps (5)"),
        ({"allocation": {"method": "magic"}}, "allocation.method must be one of"),
        ({"allocation": {"method": "mola"}}, 'needs a "shape"'),
        ({"allocation": {"experts": [2, 0]}}, "allocation.experts must be a list"),
        ({"allocation": {"method": "uniform", "budgett": 3}}, "Unknown allocation key"),
        ({"method": "lora", "allocation": {"method": "uniform"}}, "'moe-lora' only"),
        ({"eval_before": "yes"}, "eval_before must be true or false"),
    ],
)
def test_bad_configs_are_refused_with_the_field_named(changes, message):
    base = {"name": "x", "model": "embedded", "task": "rotten-tomatoes"}
    with pytest.raises(AlphaLoRAError) as info:
        TrainConfig.from_dict({**base, **changes})
    assert message in str(info.value)


def test_load_config_errors(tmp_path):
    with pytest.raises(AlphaLoRAError, match="preset name"):
        load_config("no-such-preset")
    bad = tmp_path / "c.json"
    bad.write_text("{nope", encoding="utf-8")
    with pytest.raises(AlphaLoRAError, match="not valid JSON"):
        load_config(bad)


def test_batch_order_is_seeded_covers_each_epoch_and_shards_processes():
    n, bs = 10, 4
    stream = [i for step in range(5) for i in batch_indices(n, 7, step, bs)]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]  # a new permutation each epoch
    assert batch_indices(n, 7, 3, bs) == stream[12:16]  # position given by the step alone
    assert batch_indices(n, 8, 0, bs) != batch_indices(n, 7, 0, bs)
    a = batch_indices(n, 7, 0, 2, num_processes=2, process_index=0)
    b = batch_indices(n, 7, 0, 2, num_processes=2, process_index=1)
    assert a + b == stream[:4]


# --------------------------------------------------------------------------- training


def test_short_run_logs_every_metric_and_saves_a_loadable_adapter(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alphalora.finetune.moe import load_adapter
    from alphalora.finetune.scoring import evaluate
    from alphalora.finetune.tasks.load import load_task

    store = RunStore()
    seen: list[tuple[float, str]] = []
    result = train(
        _config(tiny, eval_every=3, checkpoint_every=2),
        store=store,
        progress=lambda f, m: seen.append((f, m)),
    )
    assert result["status"] == "completed" and result["steps"] == 6
    run = store.get_run(result["run_id"])
    assert run["status"] == "completed" and run["adapter_path"] == result["adapter_path"]
    summary = run["summary"]
    for key in (
        "accuracy_before",
        "accuracy_after",
        "steps",
        "seconds",
        "params_trainable",
        "device",
    ):
        assert summary[key] is not None, key
    assert 0 <= summary["accuracy_before"] <= 1 and 0 <= summary["accuracy_after"] <= 1
    assert summary["experts"] == [3, 2] and run["params_trainable"] == summary["params_trainable"]
    metrics = store.metrics(result["run_id"])
    train_rows = metrics[metrics.split == "train"]
    assert list(train_rows.step) == [1, 2, 3, 4, 5, 6]
    for name in ("train_loss", "aux_loss", "lr", "tokens_per_s", "seconds_per_step"):
        assert train_rows[name].notna().all(), name
    assert train_rows.lr.iloc[0] == pytest.approx(0.01) and train_rows.lr.is_monotonic_decreasing
    eval_rows = metrics[metrics.split == "eval"]
    assert list(eval_rows.step) == [0, 3, 6]
    loads = eval_rows.router_load.iloc[-1]
    assert [len(layer) for layer in loads] == [3, 2]
    assert all(sum(layer) == pytest.approx(1.0) for layer in loads)
    assert [s for s, _ in list_checkpoints(run_dir(result["run_id"]))] == [4, 6]  # last 2 kept
    assert seen[-1][0] == 1.0 and "adapter saved" in seen[-1][1]
    # The adapter reloads onto a fresh base and reproduces the trained model's final eval loss.
    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])
    task = load_task(tiny["task"])
    base = AutoModelForCausalLM.from_pretrained(tiny["model"])
    before = evaluate(base, tokenizer, task.eval[:12], max_length=32)
    assert before["eval_loss"] == pytest.approx(summary["eval_loss_before"], rel=1e-5)
    load_adapter(base, result["adapter_path"])
    after = evaluate(base, tokenizer, task.eval[:12], max_length=32)
    assert after["eval_loss"] == pytest.approx(summary["eval_loss_after"], rel=1e-5)
    assert after["eval_loss"] != pytest.approx(before["eval_loss"], rel=1e-3)


def _adapter_tensors(path: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "adapter.safetensors"))


def test_sigterm_then_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny):
    store = RunStore()
    cfg = _config(tiny, eval_every=2, grad_accum=2)
    straight = train(cfg, store=store)

    def stop_after_three(fraction: float, message: str) -> None:
        if message.startswith("step 3/"):
            os.kill(os.getpid(), signal.SIGTERM)

    handler = signal.getsignal(signal.SIGTERM)
    first = train(cfg, store=store, progress=stop_after_three)
    assert signal.getsignal(signal.SIGTERM) is handler  # restored afterwards
    assert first["status"] == "cancelled" and first["step"] == 3
    run = store.get_run(first["run_id"])
    assert run["status"] == "cancelled" and "--resume" in run["error"]
    assert latest_checkpoint(run_dir(first["run_id"])).name == "step-3"
    resumed = train(None, run_id=first["run_id"], store=store, resume=True)
    assert resumed["status"] == "completed" and resumed["steps"] == 6
    assert resumed["accuracy_before"] == straight["accuracy_before"]
    a, b = _adapter_tensors(straight["adapter_path"]), _adapter_tensors(resumed["adapter_path"])
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    losses = store.metrics([straight["run_id"], first["run_id"]], split="train")
    x = losses[losses.run_id == straight["run_id"]].train_loss.to_numpy()
    y = losses[losses.run_id == first["run_id"]].train_loss.to_numpy()
    assert y == pytest.approx(x, abs=1e-6)
    with pytest.raises(AlphaLoRAError, match="already completed"):
        train(None, run_id=first["run_id"], store=store, resume=True)


def test_ctrl_c_stops_after_the_step_with_a_checkpoint(tiny):
    store = RunStore()

    def press_ctrl_c(fraction: float, message: str) -> None:
        if message.startswith("step 2/"):
            os.kill(os.getpid(), signal.SIGINT)

    result = train(_config(tiny, steps=4, eval_before=False), store=store, progress=press_ctrl_c)
    assert result["status"] == "interrupted" and result["step"] == 2
    assert store.get_run(result["run_id"])["status"] == "interrupted"
    assert latest_checkpoint(run_dir(result["run_id"])).name == "step-2"


def test_gradient_checkpointing_gives_the_same_losses(tiny):
    store = RunStore()
    cfg = _config(tiny, steps=2, eval_before=False)
    plain = train(cfg, store=store)
    checkpointed = train({**cfg, "gradient_checkpointing": True}, store=store)
    frame = store.metrics([plain["run_id"], checkpointed["run_id"]], split="train")
    a = frame[frame.run_id == plain["run_id"]].train_loss.to_numpy()
    b = frame[frame.run_id == checkpointed["run_id"]].train_loss.to_numpy()
    assert len(a) == 2 and b == pytest.approx(a, abs=1e-6)
    assert checkpointed["eval_loss_after"] == pytest.approx(plain["eval_loss_after"], abs=1e-5)


def test_bf16_precision_on_cpu_then_fp32_again_in_one_process(tiny):
    half = train(_config(tiny, steps=1, precision="bf16", eval_before=False))
    assert half["status"] == "completed" and half["precision"] == "bf16"
    assert math.isfinite(half["eval_loss_after"])
    full = train(_config(tiny, steps=1, eval_before=False))
    assert full["precision"] == "fp32"


def test_plain_lora_baseline_runs(tiny):
    result = train(
        _config(tiny, method="lora", allocation=None, steps=2, targets=["q_proj", "v_proj"])
    )
    assert result["status"] == "completed" and result["experts"] is None
    assert (Path(result["adapter_path"]) / "adapter_model.safetensors").is_file()


# --------------------------------------------------------------------------- failures


def test_allocation_layer_mismatch_fails_before_training(tiny):
    store = RunStore()
    with pytest.raises(AlphaLoRAError, match="lists 3 layers but the model has 2"):
        train(_config(tiny, allocation={"experts": [2, 2, 2]}), store=store)
    (run,) = store.runs()
    assert run["status"] == "failed" and "3 layers" in run["error"]
    assert store.metric_count(run["run_id"]) == 0


def test_missing_dataset_fails_before_loading_the_model(tiny):
    store = RunStore()
    with pytest.raises(AlphaLoRAError, match="does not exist"):
        train(_config(tiny, task="/nope/data.jsonl", model="/nope/model"), store=store)
    (run,) = store.runs()
    assert run["status"] == "failed"


def test_unwritable_run_folder_is_reported_before_any_work(tiny):
    (paths.data_dir() / "runs").write_text("a file where the runs folder should be")
    store = RunStore()
    with pytest.raises(AlphaLoRAError, match="Cannot create the folder of run"):
        train(_config(tiny, model="/nope/model"), store=store)
    (run,) = store.runs()
    assert run["status"] == "failed" and "ALPHALORA_HOME" in run["error"]


def test_out_of_memory_becomes_an_actionable_message(tiny, monkeypatch):
    from alphalora.finetune import session as session_module

    def boom(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(session_module.Session, "train_step", boom)
    store = RunStore()
    with pytest.raises(AlphaLoRAError, match="gradient_checkpointing"):
        train(_config(tiny, eval_before=False), store=store)
    assert "batch_size" in store.runs()[0]["error"]


# --------------------------------------------------------------------------- CLI / process


def test_cli_prints_accuracies_and_adapter(tiny, tmp_path, capsys):
    from alphalora.cli import main

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(_config(tiny, steps=3)), encoding="utf-8")
    assert main(["train", str(path), "--quiet", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "accuracy before:" in out and "accuracy after:" in out and "adapter: " in out
    assert "2 steps" in out
    assert main(["train", str(tmp_path / "missing.json"), "--quiet"]) == 1
    assert "No config file" in capsys.readouterr().err


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"trainer exited early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the trainer did not reach the expected step in time")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_trainer_process_keeps_its_metrics_and_resumes(tiny, sig):
    store = RunStore()
    cfg = _config(tiny, steps=20, checkpoint_every=1, eval_examples=4, eval_before=False)
    run_id = store.create_run(cfg, name="child")  # queued, as the app does
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "alphalora", "train", "--run-id", run_id, "--quiet"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: latest_checkpoint(run_dir(run_id)) is not None, 90, proc)
    _wait_for(lambda: store.metric_count(run_id) >= 15, 60, proc)
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    logged = store.metrics(run_id, split="train")
    steps_before = set(logged.step)
    assert steps_before and len(steps_before) < 20
    run = store.get_run(run_id)
    if sig == signal.SIGTERM:
        assert code == 143 and run["status"] == "cancelled"
        assert latest_checkpoint(run_dir(run_id)).name == f"step-{max(steps_before)}"
    else:
        assert code == -signal.SIGKILL and run["status"] == "running"  # nobody could mark it
    result = train(None, run_id=run_id, store=store, resume=True)
    assert result["status"] == "completed"
    after = store.metrics(run_id, split="train")
    assert list(after.step) == list(range(1, 21))
    kept = after[after.step.isin(steps_before)]
    assert kept.train_loss.notna().all()
    assert store.get_run(run_id)["status"] == "completed"


@pytest.mark.slow
def test_two_steps_on_the_embedded_model():
    from alphalora.spectral.embedded import embedded_gguf_path

    try:
        embedded_gguf_path()
    except AlphaLoRAError as exc:
        pytest.skip(f"embedded model not installed: {exc}")
    result = train(
        {
            "name": "embedded-smoke",
            "model": "embedded",
            "task": "rotten-tomatoes",
            "allocation": {"method": "uniform", "budget": 30},
            "steps": 2,
            "batch_size": 2,
            "max_length": 32,
            "eval_examples": 4,
            "device": "cpu",
        }
    )
    assert result["status"] == "completed" and result["experts"] == [1] * 30
