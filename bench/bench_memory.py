"""Peak memory of analysing a multi-GB checkpoint: streaming keeps RSS to a few matrices.

Writes a synthetic Llama-7B-shaped checkpoint (hidden 4096, intermediate 11008, random
weights, float32, split over shards) of several GB, then analyses it in a fresh child process
and reports that process's peak RSS next to the checkpoint's size.

    .venv/bin/python bench/bench_memory.py [--layers 4] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
HIDDEN, INTER = 4096, 11008
SHAPES = {
    "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, HIDDEN),
    "self_attn.v_proj": (HIDDEN, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (INTER, HIDDEN), "mlp.up_proj": (INTER, HIDDEN), "mlp.down_proj": (HIDDEN, INTER),
}  # fmt: skip

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from alphalora.spectral.analysis import analyze
from alphalora.spectral.analysis_types import AnalysisOptions
t = time.perf_counter()
r = analyze({folder!r}, AnalysisOptions(device={device!r}), use_cache=False)
print(json.dumps({{"seconds": time.perf_counter() - t, "matrices": len(r.matrices),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "alpha_mean": float(r.matrices["alpha"].mean())}}))
"""


def write_checkpoint(folder: Path, n_layers: int) -> int:
    """Write a sharded Llama-shaped safetensors checkpoint (one shard per layer); return bytes."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for layer in range(n_layers):
        shard = f"model-{layer + 1:05d}-of-{n_layers:05d}.safetensors"
        tensors = {}
        for suffix, shape in SHAPES.items():
            name = f"model.layers.{layer}.{suffix}.weight"
            tensors[name] = torch.randn(shape, generator=gen) / shape[1] ** 0.5
            weight_map[name] = shard
        save_file(tensors, str(folder / shard))
        total += sum(t.numel() * 4 for t in tensors.values())
        del tensors
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN,
              "intermediate_size": INTER, "num_hidden_layers": n_layers, "num_attention_heads": 32,
              "num_key_value_heads": 32, "vocab_size": 32000}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks (0.81 GB each)")
    parser.add_argument("--keep", help="write the checkpoint here and keep it")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (time it on each)")
    args = parser.parse_args()
    folder = (
        Path(args.keep)
        if args.keep
        else Path(tempfile.mkdtemp(prefix="alphalora-mem-")) / "llama7b-shaped"
    )
    try:
        t = time.perf_counter()
        size = write_checkpoint(folder, args.layers)
        print(f"checkpoint: {args.layers} Llama-7B-shaped blocks, {size / 2**30:.2f} GiB float32 "
              f"({time.perf_counter() - t:.0f} s to write)")  # fmt: skip
        env = {**os.environ, "ALPHALORA_HOME": tempfile.mkdtemp(prefix="alphalora-home-")}
        out = subprocess.run(
            [sys.executable, "-c", CHILD.format(root=str(ROOT), folder=str(folder), device=args.device)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        res = json.loads(out.stdout.strip().splitlines()[-1])
        res.update(checkpoint_gib=round(size / 2**30, 3), layers=args.layers, device=args.device,
                   parent_peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # fmt: skip
        print(f"analysis: {res['matrices']} matrices in {res['seconds']:.1f} s")
        print(f"peak RSS of the analysing process: {res['peak_rss_mb']:.0f} MB "
              f"({res['peak_rss_mb'] / (size / 2**20):.2f}× the checkpoint size; target < 1500 MB)")  # fmt: skip
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"memory_{args.device}.json").write_text(json.dumps(res, indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(folder.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
