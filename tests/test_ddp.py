"""Training under a real ``accelerate launch`` with two CPU processes (DDP over gloo).

One launch must behave like one run: a single run row, metrics and checkpoints written once,
a sharded evaluation that adds up to the single-process one, replicas kept identical by the
gradient all-reduce, and cancel/resume working across the whole process group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import save_tiny_model, toy_reviews, write_jsonl

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.checkpoints import latest_checkpoint, list_checkpoints
from alphalora.finetune.train import train
from alphalora.runs import jobs
from alphalora.store.records import run_dir
from alphalora.store.run_store import RunStore

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 240
STEPS = 24
EVAL_EXAMPLES = 7  # odd: the two processes score shards of 4 and 3 examples

LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",  # accelerate's torch.distributed launcher; the trainer picks gloo on CPU
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
    "--main_process_port",
    "0",  # accelerate picks a free port
    "-m",
    "alphalora",
    "train",
]


def _config(model: str, task: str) -> dict:
    return {
        "name": "ddp",
        "model": model,
        "task": task,
        # A 3-expert top-2 layer and a 1-expert layer, no auxiliary loss: the router is reached
        # only through the gate. DDP runs without find_unused_parameters, so a parameter left
        # out of the graph would fail the second step.
        "allocation": {"experts": [3, 1], "top_k": [2, 1]},
        "aux_loss_coef": 0.0,
        "steps": STEPS,
        "batch_size": 2,
        "grad_accum": 2,  # the first micro-batch skips the all-reduce (no_sync)
        "max_length": 32,
        "eval_examples": EVAL_EXAMPLES,
        "eval_every": 12,
        "checkpoint_every": 12,
        "lr": 0.01,
        "dropout": 0.1,
        "device": "cpu",
    }


def _env(home: Path, hf_home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ALPHALORA_HOME": str(home),
        "HF_HOME": str(hf_home),  # no user accelerate config file can change the launch
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted two-process launch, in a data directory of its own."""
    root = tmp_path_factory.mktemp("ddp")
    model = save_tiny_model(root / "model")
    task = write_jsonl(root / "reviews.jsonl", toy_reviews(60))
    config = _config(str(model), str(task))
    path = root / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    home, hf_home = root / "home", root / "hf"
    proc = subprocess.run(
        [*LAUNCH, str(path), "--quiet"],
        cwd=root,
        env=_env(home, hf_home),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {"config": config, "home": home, "hf_home": hf_home, "proc": proc}


def _adapter(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "adapter.safetensors"))


def test_the_job_launcher_for_several_processes_is_accelerate_launch():
    assert jobs.trainer_command("py") == ["py", "-m", "alphalora", "train"]
    assert jobs.trainer_command(sys.executable, 2) == LAUNCH
    with pytest.raises(AlphaLoRAError, match="num_processes must be a whole number"):
        jobs.trainer_command("py", 0)


@pytest.mark.slow
def test_two_processes_make_one_run_that_a_single_process_confirms(straight, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alphalora.finetune.moe import load_adapter
    from alphalora.finetune.scoring import evaluate
    from alphalora.finetune.tasks.load import load_task

    out = straight["proc"].stdout + straight["proc"].stderr
    assert straight["proc"].stdout.count(": completed") == 1  # only rank 0 reports
    assert "find_unused_parameters" not in out  # DDP's error for a parameter out of the graph
    monkeypatch.setenv("ALPHALORA_HOME", str(straight["home"]))
    store = RunStore()
    (run,) = store.runs()
    run_id = run["run_id"]
    assert run["status"] == "completed" and run["device"].endswith("×2")
    metrics = store.metrics(run_id)
    train_rows = metrics[metrics.split == "train"]
    assert list(train_rows.step) == list(range(1, STEPS + 1))  # once per step, not per rank
    assert train_rows.train_loss.notna().all()
    eval_rows = metrics[metrics.split == "eval"]
    assert list(eval_rows.step) == [0, 12, 24]
    assert list(eval_rows.n) == [EVAL_EXAMPLES] * 3  # every example scored exactly once
    # Checkpoints: written by one process, with both processes' RNG state; nothing half-done.
    folder = run_dir(run_id)
    assert [s for s, _ in list_checkpoints(folder)] == [12, 24]
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step-12", "step-24"]
    state = json.loads((folder / "checkpoints" / "step-24" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2
    files = {p.name for p in (folder / "checkpoints" / "step-24").iterdir()}
    assert {"rng-0.pt", "rng-1.pt", "trainable.safetensors", "optim_state.pt"} <= files
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".tmp")]
    assert Path(run["adapter_path"]) == folder / "adapter"
    # The saved adapter is rank 0's replica; rank 1 scored its own shard with its replica. A
    # single process scoring all examples with the saved adapter gets the logged numbers only
    # if the shards were gathered right and both replicas held the same weights.
    cfg = straight["config"]
    tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
    examples = load_task(cfg["task"]).eval[:EVAL_EXAMPLES]
    base = AutoModelForCausalLM.from_pretrained(cfg["model"])
    before = evaluate(base, tokenizer, examples, max_length=32)
    summary = run["summary"]
    assert before["eval_loss"] == pytest.approx(summary["eval_loss_before"], rel=1e-5)
    assert before["accuracy"] == summary["accuracy_before"]
    load_adapter(base, run["adapter_path"])
    after = evaluate(base, tokenizer, examples, max_length=32)
    assert after["n"] == summary["n_eval"] == EVAL_EXAMPLES
    assert after["eval_loss"] == pytest.approx(summary["eval_loss_after"], rel=1e-5)
    assert after["accuracy"] == summary["accuracy_after"]
    assert after["eval_loss"] != pytest.approx(before["eval_loss"], rel=1e-3)  # it trained


@pytest.mark.slow
def test_sharded_evaluations_gather_every_examples_prediction(straight, monkeypatch):
    """Each process scores its own shard; the main process stores all examples' predictions,
    in order, equal to a single-process evaluation of the saved adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alphalora.finetune.moe import load_adapter
    from alphalora.finetune.predictions import example_key, load_predictions, prediction_steps
    from alphalora.finetune.scoring import evaluate_counts
    from alphalora.finetune.tasks.load import load_task

    monkeypatch.setenv("ALPHALORA_HOME", str(straight["home"]))
    (run,) = RunStore().runs()
    folder = run_dir(run["run_id"])
    assert prediction_steps(folder) == [0, 12, 24]
    final = load_predictions(folder)
    cfg = straight["config"]
    examples = load_task(cfg["task"]).eval[:EVAL_EXAMPLES]
    assert final["index"] == list(range(EVAL_EXAMPLES))
    assert final["key"] == [example_key(ex) for ex in examples]
    assert sum(final["correct"]) == round(run["summary"]["accuracy_after"] * EVAL_EXAMPLES)
    model = AutoModelForCausalLM.from_pretrained(cfg["model"])
    load_adapter(model, run["adapter_path"])
    tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
    single = evaluate_counts(model, tokenizer, examples, max_length=32)
    assert final["predicted"] == [p for _, p, _ in single.predictions]
    assert final["correct"] == [ok for _, _, ok in single.predictions]


def _wait(predicate, what: str, run_id: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; log:\n{jobs.tail_log(run_id, 60)}")
        time.sleep(0.05)


@pytest.mark.slow
def test_cancel_stops_every_rank_and_resume_needs_the_same_launch(straight, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(straight["hf_home"]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    store = RunStore()
    run_id = jobs.start_run(straight["config"], store=store, num_processes=2)
    launch = json.loads((run_dir(run_id) / "launch.json").read_text(encoding="utf-8"))
    assert launch["argv"][1:3] == ["-m", "accelerate.commands.launch"]

    def trained_two() -> bool:
        if store.get_run(run_id)["status"] not in ("queued", "running"):
            pytest.fail(f"the run ended early; log:\n{jobs.tail_log(run_id, 60)}")
        return len(store.metrics(run_id, split="train")) >= 2

    _wait(trained_two, "two training steps", run_id)
    message = jobs.cancel_run(run_id, store=store, timeout=60)
    assert "cancelled (the trainer saved its state)" in message, message
    # The launcher exits only once every rank has: both saw the stop and left together.
    _wait(lambda: not jobs.is_alive(launch["pid"]), "the launcher to exit", run_id, 60)
    run = store.get_run(run_id)
    assert run["status"] == "cancelled" and "--resume" in run["error"]
    stopped = int(store.metrics(run_id, split="train").step.max())
    assert 2 <= stopped < STEPS
    checkpoint = latest_checkpoint(run_dir(run_id))
    assert checkpoint.name == f"step-{stopped}"
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["num_processes"] == 2

    with pytest.raises(AlphaLoRAError, match=r"written by 2 process\(es\) but this resume runs 1"):
        train(None, run_id=run_id, store=store, resume=True)
    assert store.get_run(run_id)["status"] == "failed"

    jobs.resume_run(run_id, store=store)  # the launcher of launch.json: two processes again

    def finished() -> bool:
        status = store.get_run(run_id)["status"]
        if status in ("failed", "interrupted", "cancelled"):
            pytest.fail(f"the resumed run is {status}; log:\n{jobs.tail_log(run_id, 60)}")
        return status == "completed"

    _wait(finished, "the resumed run to complete", run_id)
    metrics = store.metrics(run_id)
    assert list(metrics[metrics.split == "train"].step) == list(range(1, STEPS + 1))
    assert list(metrics[metrics.split == "eval"].step) == [0, 12, 24]
    # Same weights and losses as the uninterrupted launch: every rank resumed its own RNG and
    # its own place in the data.
    monkeypatch.setenv("ALPHALORA_HOME", str(straight["home"]))
    (reference,) = RunStore().runs()
    expected = RunStore().metrics(reference["run_id"], split="train").train_loss.to_numpy()
    got = metrics[metrics.split == "train"].train_loss.to_numpy()
    assert got == pytest.approx(expected, abs=1e-6)
    a, b = _adapter(reference["adapter_path"]), _adapter(store.get_run(run_id)["adapter_path"])
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)
