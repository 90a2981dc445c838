"""Side-by-side fine-tunes: AlphaLoRA vs uniform vs MoLA ▽ 2468 at the same expert budget.

Every allocation is trained in this one process with the same model, task, seed, data order,
steps and hyper-parameters; only the experts per layer differ. Loss and accuracy curves go to
``bench/results/finetune_<device>.json`` and a comparison table (with ratios to uniform) is
printed. Runs are recorded in the run store like any other (names ``bench-…``).

    python bench/bench_finetune.py --steps 20                       # CPU, embedded SmolLM2
    python bench/bench_finetune.py --model Qwen/Qwen2.5-0.5B --steps 200 --max-length 128
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alphalora.finetune.config import TrainConfig  # noqa: E402
from alphalora.finetune.train import train  # noqa: E402
from alphalora.paths import atomic_write_json  # noqa: E402
from alphalora.store.run_store import RunStore  # noqa: E402

ALLOCATIONS = {
    "alphalora": lambda budget, beta: {"method": "alphalora", "budget": budget, "beta": beta},
    "uniform": lambda budget, beta: {"method": "uniform", "budget": budget},
    "mola-2468": lambda budget, beta: {"method": "mola", "shape": "2468", "budget": budget},
    "mola-8642": lambda budget, beta: {"method": "mola", "shape": "8642", "budget": budget},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="embedded", help="embedded, a folder or a hub id")
    p.add_argument("--task", default="rotten-tomatoes")
    p.add_argument("--allocations", default="alphalora,uniform,mola-2468",
                   help=f"comma list from {', '.join(ALLOCATIONS)}")  # fmt: skip
    p.add_argument("--budget", type=int, help="total experts (default 5 per layer)")
    p.add_argument("--beta", type=float, default=2.5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--eval-examples", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", help="result JSON (default bench/results/finetune_<device>.json)")
    return p.parse_args(argv)


def _n_layers(model: str) -> int:
    from transformers import AutoConfig

    from alphalora.finetune.resolve import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(model))
    return int(config.num_hidden_layers)


def _device_tag(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0).lower()
        return "cuda-" + "".join(c if c.isalnum() else "-" for c in name).strip("-")
    return "cpu"


def _curves(store: RunStore, run_id: str) -> dict[str, Any]:
    frame = store.metrics(run_id)
    train_rows = frame[frame.split == "train"]
    eval_rows = frame[frame.split == "eval"]
    return {
        "train_loss": [float(v) for v in train_rows.train_loss],
        "aux_loss": [float(v) for v in train_rows.aux_loss] if "aux_loss" in train_rows else [],
        "step_seconds": [float(v) for v in train_rows.seconds_per_step],
        "eval": [
            {"step": int(r.step), "accuracy": float(r.accuracy), "eval_loss": float(r.eval_loss)}
            for r in eval_rows.itertuples()
        ],
    }


def _uncertainty(run_id: str, reference_id: str) -> dict[str, Any]:
    """Wilson 95 % interval of the run's final accuracy and the paired test against the
    reference run (the same held-out examples)."""
    from alphalora.runs.compare_runs import compare_runs

    paired = compare_runs(run_id, reference_id)
    low, high = paired.interval_a
    return {
        "accuracy_after_ci95": [low, high],
        "vs_reference": {
            "difference": paired.difference,
            "difference_ci95": [paired.diff_low, paired.diff_high],
            "only_this_right": paired.only_a,
            "only_reference_right": paired.only_b,
            "mcnemar_p": paired.p_value,
            "within_noise": paired.within_noise,
        },
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.allocations.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALLOCATIONS]
    if unknown:
        raise SystemExit(f"unknown allocation(s) {unknown}; choose from {', '.join(ALLOCATIONS)}")
    n_layers = _n_layers(args.model)
    budget = args.budget or 5 * n_layers
    tag = _device_tag(args.device)
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"finetune_{tag}.json"
    store = RunStore()
    results: dict[str, Any] = {}
    for name in names:
        config = TrainConfig(
            name=f"bench-{name}",
            model=args.model,
            task=args.task,
            allocation=ALLOCATIONS[name](budget, args.beta),
            steps=args.steps,
            batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            lr=args.lr,
            warmup_steps=min(args.warmup_steps, args.steps),
            max_length=args.max_length,
            eval_examples=args.eval_examples,
            eval_every=args.eval_every,
            seed=args.seed,
            device=args.device,
        )
        print(f"[{name}] training {args.steps} steps …", flush=True)
        started = time.perf_counter()
        summary = train(config, store=store)
        wall = time.perf_counter() - started
        curves = _curves(store, summary["run_id"])
        results[name] = {
            "run_id": summary["run_id"],
            "experts": summary["experts"],
            "params_trainable": summary["params_trainable"],
            "accuracy_before": summary["accuracy_before"],
            "accuracy_after": summary["accuracy_after"],
            "eval_loss_before": summary["eval_loss_before"],
            "eval_loss_after": summary["eval_loss_after"],
            "seconds_per_step_mean": summary["seconds_per_step"],
            "final_train_loss_mean_last5": _mean(curves["train_loss"][-5:]),
            "wall_seconds": wall,
            **curves,
        }
        # The median step time resists other processes on a shared machine; step 1 is warm-up.
        results[name]["seconds_per_step"] = statistics.median(
            curves["step_seconds"][1:] or curves["step_seconds"]
        )
    reference = results.get("uniform") or next(iter(results.values()))
    for entry in results.values():
        entry["ratio_seconds_per_step_vs_uniform"] = (
            entry["seconds_per_step"] / reference["seconds_per_step"]
        )
        entry["ratio_params_vs_uniform"] = entry["params_trainable"] / reference["params_trainable"]
        entry["accuracy_gain"] = entry["accuracy_after"] - entry["accuracy_before"]
        entry.update(_uncertainty(entry["run_id"], reference["run_id"]))
    document = {
        "benchmark": "finetune",
        "device": tag,
        "platform": platform.platform(),
        "model": args.model,
        "task": args.task,
        "n_layers": n_layers,
        "budget": budget,
        "beta": args.beta,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "lr": args.lr,
        "max_length": args.max_length,
        "eval_examples": args.eval_examples,
        "seed": args.seed,
        "results": results,
    }
    atomic_write_json(out, document)
    print()
    print(f"{args.model} on {args.task}, {args.steps} steps, budget {budget}, seed {args.seed}")
    header = (
        f"{'allocation':<12}{'params':>10}{'acc before':>12}{'acc after':>11}{'gain':>8}"
        f"{'eval loss':>11}{'loss last5':>12}{'s/step':>9}{'×uniform':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<12}{r['params_trainable']:>10,}{r['accuracy_before']:>12.3f}"
            f"{r['accuracy_after']:>11.3f}{r['accuracy_gain']:>+8.3f}{r['eval_loss_after']:>11.4f}"
            f"{r['final_train_loss_mean_last5']:>12.4f}{r['seconds_per_step']:>9.2f}"
            f"{r['ratio_seconds_per_step_vs_uniform']:>10.2f}"
        )
    for name, r in results.items():
        print(f"  {name}: experts {r['experts']}")
    for name, r in results.items():
        low, high = r["accuracy_after_ci95"]
        vs = r["vs_reference"]
        print(f"  {name}: accuracy {r['accuracy_after']:.3f} [95% CI {low:.3f}, {high:.3f}]; "
              f"vs reference {vs['difference']:+.3f} [{vs['difference_ci95'][0]:+.3f}, "
              f"{vs['difference_ci95'][1]:+.3f}], McNemar p = {vs['mcnemar_p']:.3g}"
              + (" (within noise)" if vs["within_noise"] else ""))  # fmt: skip
    print(f"\nresults written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
