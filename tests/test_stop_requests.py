"""Stop requests take effect during model load and evaluation (issue 11, case 6), the
evaluation hook behind them (Interface B: ``evaluate_counts(on_batch=…)``) and the progress a
running trainer keeps on its run row (Interface A: ``summary["progress"]``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from reliability_helpers import tiny_config, tiny_files
from safetensors.torch import load_file
from train_helpers import RuleLM, make_tokenizer, toy_reviews, write_jsonl

from alphalora.finetune.checkpoints import latest_checkpoint, list_checkpoints
from alphalora.finetune.run_progress import PHASES, RunProgress, stop_between_blocks
from alphalora.finetune.scoring import evaluate_counts
from alphalora.finetune.tasks.examples import Example
from alphalora.finetune.train import train
from alphalora.runs import jobs
from alphalora.store.records import run_dir
from alphalora.store.run_store import RunStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama, a toy task and a toy task with a long evaluation split (2,000 rows)."""
    root = tmp_path_factory.mktemp("tiny")
    rows = [{**r, "split": "train"} for r in toy_reviews(40)]
    rows += [{**r, "split": "eval"} for r in toy_reviews(2000, seed=1)]
    return {
        **tiny_files(root, reviews=60),
        "long_eval": str(write_jsonl(root / "long_eval.jsonl", rows)),
    }


def _config(tiny, **changes) -> dict:
    allocation = {"experts": [2, 2], "top_k": [1, 1]}
    fixed = {"allocation": allocation, "steps": 4, "eval_batch_size": 2}
    return tiny_config(tiny, **{**fixed, **changes})


def _sigterm_at(prefix: str):
    """A progress callback that sends this process SIGTERM at the first message ``prefix``."""
    sent = []

    def progress(fraction: float, message: str) -> None:
        if message.startswith(prefix) and not sent:
            sent.append(message)
            os.kill(os.getpid(), signal.SIGTERM)

    return progress, sent


# --------------------------------------------------------------------------- Interface B


def _rule_model():
    tok = make_tokenizer(add_bos=False)
    ids = tok.convert_tokens_to_ids
    table = {ids("Sentiment"): ids(":"), ids(":"): ids("positive"), ids("very"): ids("dull")}
    return tok, RuleLM(len(tok), lambda t: table.get(t, ids("the")))


@pytest.mark.parametrize(
    ("choices", "scoring"),
    [((" negative", " positive"), None), ((" very dull", " positive"), None), (None, "generate")],
    ids=["single-token choices", "multi-token choices", "generation"],
)
def test_on_batch_reports_examples_scored_up_to_the_total(choices, scoring):
    tok, model = _rule_model()
    answer = " positive"
    examples = [Example("Review: x\nSentiment:", answer, choices) for _ in range(7)]
    seen: list[tuple[int, int]] = []
    counts = evaluate_counts(
        model, tok, examples, 3, scoring=scoring, on_batch=lambda d, t: seen.append((d, t))
    )
    assert counts.n == 7 and seen and seen[-1] == (7, 7)
    done = [d for d, _ in seen]
    assert done == sorted(done) and {t for _, t in seen} == {7}
    plain = evaluate_counts(model, tok, examples, 3, scoring=scoring)
    assert (plain.correct, plain.loss_sum) == (counts.correct, counts.loss_sum)


def test_on_batch_may_raise_to_stop_and_the_model_is_left_as_it_was():
    tok, model = _rule_model()
    model.train()
    examples = [Example("Review: x\nSentiment:", " positive", (" negative", " positive"))] * 9
    calls = []

    def stop(done: int, total: int) -> None:
        calls.append(done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate_counts(model, tok, examples, 3, on_batch=stop)
    assert calls == [3] and model.training


# --------------------------------------------------------------------------- Interface A


def test_run_progress_writes_phase_changes_at_once_and_throttles_within_a_phase():
    now = [0.0]
    written: list[dict] = []
    progress = RunProgress(written.append, steps=40, interval=1.0, clock=lambda: now[0])
    assert progress.update("loading task")
    assert progress.update("evaluating", 0, 200)
    now[0] = 0.5
    assert not progress.update("evaluating", 16, 200)  # within the second: skipped
    now[0] = 1.2
    assert progress.update("evaluating", 32, 200)
    assert progress.update("training", 1, 40, step=1)  # a new phase: at once
    assert [w["phase"] for w in written] == ["loading task", "evaluating", "evaluating", "training"]
    last = written[-1]
    assert set(last) == {"phase", "done", "total", "step", "steps", "at"}
    assert (last["done"], last["total"], last["step"], last["steps"]) == (1, 40, 1, 40)
    assert last["at"].endswith("+00:00")
    with pytest.raises(ValueError):
        progress.update("sleeping")


def test_a_run_keeps_its_phase_and_progress_on_its_row(tiny, monkeypatch):
    store = RunStore()
    seen: list[dict] = []
    original = store.merge_summary

    def spy(run_id, **items):
        if "progress" in items:
            seen.append(items["progress"])
        return original(run_id, **items)

    monkeypatch.setattr(store, "merge_summary", spy)
    result = train(_config(tiny, eval_every=2), store=store)
    phases = [p["phase"] for p in seen]
    assert set(phases) <= set(PHASES)
    order = ["loading task", "loading model", "evaluating", "training", "saving", "finished"]
    assert [p for p in dict.fromkeys(phases) if p in order] == order
    evals = [p for p in seen if p["phase"] == "evaluating"]
    assert {p["total"] for p in evals} == {12} and evals[0]["done"] == 0  # 20 % of 60 rows
    steps = [p["step"] for p in seen if p["phase"] == "training"]
    assert steps == sorted(steps) and all(p["steps"] == 4 for p in seen)
    final = store.get_run(result["run_id"])["summary"]["progress"]
    assert final["phase"] == "finished" and final["step"] == 4


# --------------------------------------------------------------------------- case 6


@pytest.mark.parametrize(
    ("prefix", "allocation"),
    [
        ("Loading task", {"experts": [2, 2], "top_k": [1, 1]}),
        ("Loading model", {"experts": [2, 2], "top_k": [1, 1]}),
        ("Resolving the expert allocation", {"method": "alphalora", "budget": 4}),
    ],
    ids=["task", "model", "allocation"],
)
def test_sigterm_during_load_stops_before_the_next_phase(tiny, prefix, allocation):
    store = RunStore()
    progress, sent = _sigterm_at(prefix)
    result = train(_config(tiny, allocation=allocation), store=store, progress=progress)
    assert sent and result["status"] == "cancelled" and result["step"] == 0
    assert result["checkpoint"] is None
    run = store.get_run(result["run_id"])
    assert run["status"] == "cancelled" and "stopped by SIGTERM at step 0/4" in run["error"]
    assert run["params_trainable"] is None and run["allocation"] is None  # never got that far
    assert run["summary"]["progress"]["phase"] == "finished"
    assert store.metric_count(result["run_id"]) == 0


def test_stop_between_blocks_checks_before_each_block_in_eval_mode_only():
    from train_helpers import make_tiny_llama

    model = make_tiny_llama(32, layers=3)
    calls = []
    assert stop_between_blocks(model, lambda: calls.append(1)) == 3
    ids = torch.tensor([[1, 5, 6]])
    model.eval()
    model(input_ids=ids)
    assert len(calls) == 3
    model.train()
    model(input_ids=ids)
    assert len(calls) == 3  # a training step is never cut short
    assert stop_between_blocks(torch.nn.Linear(2, 2), lambda: None) == 0


def test_sigterm_during_the_first_evaluation_stops_within_the_first_batch(tiny, monkeypatch):
    from alphalora.finetune.session import Session

    batches = []
    original = Session._eval_batch
    monkeypatch.setattr(
        Session, "_eval_batch", lambda self, d, t: (batches.append(d), original(self, d, t))
    )
    store = RunStore()
    progress, sent = _sigterm_at("Evaluating at step 0")
    result = train(_config(tiny, eval_examples=40), store=store, progress=progress)
    assert sent and result["status"] == "cancelled" and result["step"] == 0
    assert batches == []  # stopped before the first block of the first batch's forward
    run = store.get_run(result["run_id"])
    assert run["status"] == "cancelled" and result["checkpoint"] is None
    assert store.metrics(result["run_id"], split="eval").empty  # the evaluation was cut short
    assert "accuracy_before" not in run["summary"]
    assert list_checkpoints(run_dir(result["run_id"])) == []  # none needed before step 1
    resumed = train(None, run_id=result["run_id"], store=store, resume=True)
    assert resumed["status"] == "completed" and resumed["accuracy_before"] is not None


def test_a_stopped_mid_training_evaluation_is_redone_on_resume(tiny):
    store = RunStore()
    cfg = _config(tiny, eval_every=2)
    straight = train(cfg, store=store)
    progress, sent = _sigterm_at("Evaluating at step 2")
    first = train(cfg, store=store, progress=progress)
    assert sent and first["status"] == "cancelled" and first["step"] == 2
    assert latest_checkpoint(run_dir(first["run_id"])).name == "step-2"
    assert sorted(store.metrics(first["run_id"], split="eval").step) == [0]
    resumed = train(None, run_id=first["run_id"], store=store, resume=True)
    assert resumed["status"] == "completed"
    ours = store.metrics(first["run_id"], split="eval")
    theirs = store.metrics(straight["run_id"], split="eval")
    assert list(ours.step) == list(theirs.step) == [0, 2, 4]
    assert ours.accuracy.tolist() == pytest.approx(theirs.accuracy.tolist())
    a = load_file(str(Path(straight["adapter_path"]) / "adapter.safetensors"))
    b = load_file(str(Path(resumed["adapter_path"]) / "adapter.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def _wait(predicate, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the trainer ended early ({proc.returncode})")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the trainer")
        time.sleep(0.05)


def _phase(store: RunStore, run_id: str) -> str | None:
    summary = store.get_run(run_id).get("summary") or {}
    return (summary.get("progress") or {}).get("phase")


def test_runs_cancel_during_the_first_evaluation_stops_the_trainer_cleanly(tiny):
    """The adversarial pass's case: `runs cancel` while the first (long) evaluation runs used
    to wait out its timeout and SIGKILL the trainer; now the trainer stops between batches."""
    store = RunStore()
    cfg = _config(tiny, task=tiny["long_eval"], eval_examples=None, eval_batch_size=1)
    run_id = jobs.start_run(cfg, store=store, env={"OMP_NUM_THREADS": "1"})
    _wait(lambda: _phase(store, run_id) == "evaluating")
    message = jobs.cancel_run(run_id, store=store, timeout=20)
    assert "killed" not in message and "cancelled" in message
    run = store.get_run(run_id)
    assert run["status"] == "cancelled" and "stopped by SIGTERM at step 0/4" in run["error"]
    assert store.metrics(run_id, split="eval").empty
    assert run["summary"]["progress"]["phase"] == "finished"


def test_sigterm_to_the_cli_trainer_during_the_first_evaluation(tiny, tmp_path):
    store = RunStore()
    cfg = _config(tiny, task=tiny["long_eval"], eval_examples=None, eval_batch_size=1)
    run_id = store.create_run(cfg, name="cli")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "alphalora", "train", "--run-id", run_id, "--quiet"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    _wait(lambda: _phase(store, run_id) == "evaluating", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert f"run {run_id}: cancelled" in out and "stopped by SIGTERM at step 0/4" in out
    assert store.get_run(run_id)["status"] == "cancelled"
    assert store.metrics(run_id, split="eval").empty
