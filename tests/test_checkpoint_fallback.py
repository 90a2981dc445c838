"""A damaged newest checkpoint does not block a resume (issue 11, case 4): it is set aside and
named, and the run continues from the newest valid checkpoint, to the same weights as an
uninterrupted run."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from reliability_helpers import tiny_config, tiny_files
from safetensors.torch import load_file

from alphalora.cli import main
from alphalora.finetune.checkpoint_check import checkpoint_problem, newest_valid_checkpoint
from alphalora.finetune.checkpoints import list_checkpoints
from alphalora.finetune.train import train
from alphalora.store.records import run_dir
from alphalora.store.run_store import RunStore


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_files(tmp_path_factory.mktemp("tiny"))


def _config(tiny) -> dict:
    return tiny_config(tiny, eval_examples=8, checkpoint_every=2, keep_checkpoints=3)


@pytest.fixture(scope="module")
def straight(tiny, tmp_path_factory):
    """The uninterrupted run's adapter weights, to compare resumed runs with."""
    os.environ["ALPHALORA_HOME"] = str(tmp_path_factory.mktemp("straight-home"))
    try:
        result = train(_config(tiny), store=RunStore())
    finally:
        os.environ.pop("ALPHALORA_HOME", None)
    return load_file(str(Path(result["adapter_path"]) / "adapter.safetensors"))


def _stopped_at_step_5(tiny, store: RunStore) -> str:
    """A run cancelled after step 5 with checkpoints step-2, step-4 and step-5."""

    def stop(fraction: float, message: str) -> None:
        if message.startswith("step 5/"):
            os.kill(os.getpid(), signal.SIGTERM)

    result = train(_config(tiny), store=store, progress=stop)
    assert result["status"] == "cancelled" and result["step"] == 5
    assert [s for s, _ in list_checkpoints(run_dir(result["run_id"]))] == [2, 4, 5]
    return result["run_id"]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # inside the tensor data, past the header
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated tensors": (
        "trainable.safetensors",
        _truncate,
        "trainable.safetensors is unreadable",
    ),
    "altered tensors": ("trainable.safetensors", _flip_a_byte, "trainable.safetensors does not"),
    "truncated state": ("trainer_state.json", _truncate, "trainer_state.json is not valid JSON"),
    "deleted rng": ("rng-0.pt", Path.unlink, "rng-0.pt is missing"),
    "truncated optimizer": ("optim_state.pt", _truncate, "optim_state.pt is unreadable"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_resume_falls_back_past_a_damaged_newest_checkpoint(tiny, straight, kind):
    store = RunStore()
    run_id = _stopped_at_step_5(tiny, store)
    file, damage, problem = DAMAGE[kind]
    newest = run_dir(run_id) / "checkpoints" / "step-5"
    damage(newest / file)
    assert checkpoint_problem(newest, 1).startswith(problem)
    result = train(None, run_id=run_id, store=store, resume=True)
    assert result["status"] == "completed" and result["steps"] == 6
    notes = store.get_run(run_id)["summary"]["checkpoint_notes"]
    assert len(notes) == 1 and "checkpoint step-5 is damaged: " + problem in notes[0]
    assert "resuming from step-4" in notes[0]
    aside = run_dir(run_id) / "checkpoints" / "damaged-step-5"
    assert aside.is_dir() and not newest.exists()  # kept for inspection, never chosen again
    resumed = load_file(str(Path(result["adapter_path"]) / "adapter.safetensors"))
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, atol=1e-6, rtol=0)


def test_every_checkpoint_damaged_restarts_from_step_0_and_says_so(tiny, straight):
    store = RunStore()
    run_id = _stopped_at_step_5(tiny, store)
    for _, folder in list_checkpoints(run_dir(run_id)):
        (folder / "rng-0.pt").unlink()
    chosen, damaged = newest_valid_checkpoint(run_dir(run_id), 1)
    assert chosen is None and [f.name for f, _ in damaged] == ["step-5", "step-4", "step-2"]
    result = train(None, run_id=run_id, store=store, resume=True)
    assert result["status"] == "completed"
    note = store.get_run(run_id)["summary"]["checkpoint_notes"][0]
    assert note.count("rng-0.pt is missing") == 3
    assert "no valid checkpoint is left, so the run starts again from step 0" in note
    resumed = load_file(str(Path(result["adapter_path"]) / "adapter.safetensors"))
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, atol=1e-6, rtol=0)


def test_runs_resume_names_the_damaged_checkpoint_before_it_starts(tiny, capsys, monkeypatch):
    store = RunStore()
    run_id = _stopped_at_step_5(tiny, store)
    _truncate(run_dir(run_id) / "checkpoints" / "step-5" / "trainable.safetensors")
    started = []
    monkeypatch.setattr("alphalora.runs.jobs.resume_run", lambda *a, **k: started.append(a))
    assert main(["runs", "resume", run_id]) == 0
    out = capsys.readouterr().out
    assert "checkpoint step-5 is damaged: trainable.safetensors is unreadable" in out
    assert "resume from step-4" in out and started
