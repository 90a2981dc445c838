"""``python -m alphalora train CONFIG [--run-id ID] [--resume] [--steps N] [--device …]``."""

from __future__ import annotations

import argparse
import math

from alphalora.errors import AlphaLoRAError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command."""
    p = sub.add_parser(
        "train",
        help="fine-tune a model with MoE-LoRA (or plain LoRA) and record the run",
        description="Fine-tune as CONFIG says (a JSON file or a preset name such as demo-cpu), "
        "logging every step to the run store. SIGTERM or Ctrl-C stops after the current step "
        "with a checkpoint; continue with --resume --run-id ID.",
    )
    p.add_argument(
        "config",
        nargs="?",
        help="JSON config path or preset name (e.g. demo-cpu); omit with --run-id to use the "
        "config stored in that run",
    )
    p.add_argument("--run-id", help="use this existing run (queued, or the one to resume)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--steps", type=int, help="override the number of optimizer steps")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the device")
    p.add_argument("--model", help="override the model (embedded, folder or hub id)")
    p.add_argument("--task", help="override the task (rotten-tomatoes or a JSONL/CSV path)")
    p.add_argument("--name", help="override the run name")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def _config(args: argparse.Namespace):
    from alphalora.train_config import load_config

    overrides = {
        key: value
        for key, value in (
            ("steps", args.steps),
            ("device", args.device),
            ("model", args.model),
            ("task", args.task),
            ("name", args.name),
        )
        if value is not None
    }
    if args.config is None:
        if not args.run_id:
            raise AlphaLoRAError(
                "Give a CONFIG (a JSON file or a preset name such as demo-cpu), or --run-id ID "
                "to start a queued run (or --resume one) with the config stored in the run."
            )
        from alphalora.runs import RunStore

        stored = RunStore().get_run(args.run_id)["config"]
        config = load_config(stored)
    else:
        config = load_config(args.config)
    return config.replace(**overrides) if overrides else config


def run(args: argparse.Namespace) -> int:
    """Train with a tqdm bar; print accuracy before/after and where the adapter is."""
    from tqdm import tqdm

    from alphalora.train import train

    config = _config(args)
    bar = None if args.quiet else tqdm(total=config.steps, unit="step", desc="train")

    def progress(fraction: float, message: str) -> None:
        if bar is None:
            return
        bar.n = min(config.steps, int(round(fraction * config.steps)))
        bar.set_postfix_str(message[-60:], refresh=False)
        bar.refresh()

    try:
        result = train(config, run_id=args.run_id, resume=args.resume, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    print(f"run {result['run_id']}: {result['status']}")
    if result["status"] != "completed":
        print(result.get("message", ""))
        if result.get("checkpoint"):
            print(
                f"checkpoint {result['checkpoint']}; continue with: python -m alphalora train "
                f"--resume --run-id {result['run_id']}"
            )
        return 143 if result["status"] == "cancelled" else 130
    print(f"accuracy before: {_fmt(result.get('accuracy_before'))}")
    print(f"accuracy after:  {_fmt(result.get('accuracy_after'))}")
    print(
        f"trainable parameters: {result['params_trainable']:,}; "
        f"{result['steps']} steps in {result['seconds']:.1f} s on {result['device']}"
    )
    print(f"adapter: {result['adapter_path']}")
    return 0


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}"
