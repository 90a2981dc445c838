"""``python -m alphalora train CONFIG [--run-id ID] [--resume] [--steps N] [--device …]``."""

from __future__ import annotations

import argparse
import math
import os
import sys

from alphalora.cli.terminal import clean
from alphalora.errors import AlphaLoRAError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command."""
    p = sub.add_parser(
        "train",
        help="fine-tune a model with MoE-LoRA (or plain LoRA) and record the run",
        description="Fine-tune as CONFIG says (a JSON file or a preset name such as demo-cpu), "
        "logging every step to the run store. SIGTERM or Ctrl-C stops after the current step "
        "with a checkpoint; continue with --resume --run-id ID. Several GPUs (DDP): "
        "accelerate launch --multi_gpu --num_processes N -m alphalora train CONFIG.",
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
    p.add_argument(
        "--warmup-steps",
        type=int,
        metavar="N",
        help="override the learning-rate warmup (steps); when --steps alone goes below the "
        "config's warmup, the warmup is lowered to the step count (with a note)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the device")
    p.add_argument("--model", help="override the model (embedded, folder or hub id)")
    p.add_argument(
        "--task",
        help="override the task: rotten-tomatoes, a JSONL/CSV path, or a Hugging Face dataset "
        "as hf:NAME[:CONFIG][?split=…&text=…&label=…] (e.g. hf:nyu-mll/glue:sst2)",
    )
    p.add_argument("--name", help="override the run name")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def _config(args: argparse.Namespace):
    from alphalora.finetune.config import load_config

    overrides = {
        key: value
        for key, value in (
            ("steps", args.steps),
            ("warmup_steps", args.warmup_steps),
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
        from alphalora.store.run_store import RunStore

        stored = RunStore().get_run(args.run_id)["config"]
        config = load_config(stored)
    else:
        config = load_config(args.config)
    if args.steps is not None and args.warmup_steps is None and config.warmup_steps > args.steps:
        print(
            f"note: warmup_steps {config.warmup_steps} is more than --steps {args.steps}; "
            f"using warmup_steps {args.steps} (set it with --warmup-steps).",
            file=sys.stderr,
        )
        overrides["warmup_steps"] = args.steps
    return config.replace(**overrides) if overrides else config


def run(args: argparse.Namespace) -> int:
    """Train with a tqdm bar; print accuracy before/after and where the adapter is."""
    from tqdm import tqdm

    from alphalora.finetune.train import train

    config = _config(args)
    bar = None
    if not args.quiet and _main_process():
        bar = tqdm(total=config.steps, unit="step", desc="train")

    def progress(fraction: float, message: str) -> None:
        if bar is None:
            return
        bar.n = min(config.steps, int(round(fraction * config.steps)))
        bar.set_postfix_str(clean(message[-60:]), refresh=False)
        bar.refresh()

    try:
        result = train(config, run_id=args.run_id, resume=args.resume, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    code = {"completed": 0, "cancelled": 143}.get(result["status"], 130)
    if _main_process():
        _print_result(result)
    if _world_size() > 1:
        _leave_launch(code)
    return code


def _print_result(result: dict) -> None:
    print(f"run {result['run_id']}: {result['status']}")
    if result["status"] != "completed":
        print(clean(result.get("message", "")))
        if result.get("checkpoint"):
            print(
                f"checkpoint {result['checkpoint']}; continue with: python -m alphalora train "
                f"--resume --run-id {result['run_id']}"
                + (" (under the same accelerate launch)" if _world_size() > 1 else "")
            )
        return
    print(f"accuracy before: {_fmt(result.get('accuracy_before'))}")
    print(f"accuracy after:  {_fmt(result.get('accuracy_after'))}")
    print(
        f"trainable parameters: {result['params_trainable']:,}; "
        f"{result['steps']} steps in {result['seconds']:.1f} s on {result['device']}"
    )
    print(f"adapter: {result['adapter_path']}")


def _main_process() -> bool:
    """Whether this is the process that reports: under ``accelerate launch`` every process
    runs the command, and only rank 0 (``RANK``, set by the launcher) prints."""
    return os.environ.get("RANK", "0") in ("", "0")


def _leave_launch(code: int) -> None:
    """End one process of an ``accelerate launch`` run once its work is done: tear down the
    process group, flush, and exit without interpreter finalization.

    torch's gloo worker threads can still be releasing the last collective's tensors when the
    interpreter finalizes; they then cannot take the GIL and the process aborts (SIGABRT,
    "terminate called without an active exception"), failing a launch whose run completed.
    DDP keeps the process group alive past ``destroy_process_group``, so its threads cannot be
    joined first; everything the run wrote is already committed (store, files)."""
    import logging

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}"
