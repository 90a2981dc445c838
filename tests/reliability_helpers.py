"""Shared by the reliability tests (issue 11): a tiny model with a toy task on disk, and a short
MoE-LoRA training config on them."""

from __future__ import annotations

from pathlib import Path

from train_helpers import save_tiny_model, toy_reviews, write_jsonl


def tiny_files(root: Path, reviews: int = 80) -> dict[str, str]:
    """A tiny Llama folder and a toy sentiment JSONL of ``reviews`` rows under ``root``."""
    return {
        "model": str(save_tiny_model(root / "model")),
        "task": str(write_jsonl(root / "reviews.jsonl", toy_reviews(reviews))),
    }


def tiny_config(tiny: dict[str, str], **changes) -> dict:
    """A six-step MoE-LoRA config on the CPU over :func:`tiny_files`, with ``changes``."""
    cfg = {
        "name": "tiny", "model": tiny["model"], "task": tiny["task"],
        "allocation": {"experts": [3, 2], "top_k": [2, 1]}, "steps": 6, "batch_size": 4,
        "max_length": 32, "eval_examples": 16, "lr": 0.01, "device": "cpu",
    }  # fmt: skip
    cfg.update(changes)
    return cfg
