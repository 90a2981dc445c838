"""One training step (forward + backward) of our MoE-LoRA, side by side in one process, against
a per-expert-loop MoE-LoRA in MoLA's style, plain peft LoRA, and the frozen base alone.

    .venv/bin/python bench/bench_moe.py [--device cpu|cuda] [--quick] [--workload synthetic|demo]

Every variant starts from the same base and allocation: by default a random-weight
Llama-shaped base with MoLA ▽2468; ``--workload demo`` uses the product's real CPU workload
instead (the embedded SmolLM2-135M, the demo-cpu preset's AlphaLoRA allocation and batch).
Rounds run the variants in rotating order and the median per variant is reported, so a busy
neighbour slows all of them alike. Results go to bench/results/moe_<device>[_demo].json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alphalora.allocation.shapes import mola_shape  # noqa: E402
from alphalora.finetune.moe import (  # noqa: E402
    MoELoRALinear,
    inject_moe_lora,
    load_balancing_loss,
    make_peft_lora,
    moe_modules,
    trainable_parameter_count,
)

RANK = 8


# --------------------------------------------------------------------------- the loop reference


class LoopMoELoRALinear(nn.Module):
    """MoE-LoRA the way the MoLA/AlphaLoRA code computes it: one nn.Linear pair per expert, a
    Python loop over experts, ``torch.where`` on the one-hot routing mask, ``.tolist()`` index
    lists to gather each expert's tokens, ``index_add_`` to scatter the results back."""

    def __init__(self, src: MoELoRALinear) -> None:
        super().__init__()
        n, r = src.num_experts, src.rank
        self.base, self.num_experts, self.top_k = src.base, n, src.top_k
        self.scaling, self.out_features = src.scaling, src.out_features
        self.dropout = copy.deepcopy(src.lora_dropout)
        self.router = copy.deepcopy(src.router)
        self.lora_A = nn.ModuleList()
        self.lora_B = nn.ModuleList()
        for e in range(n):
            a = nn.Linear(src.in_features, r, bias=False, device=src.lora_A.device)
            b = nn.Linear(r, src.out_features, bias=False, device=src.lora_A.device)
            a.to(src.lora_A.dtype)
            b.to(src.lora_B.dtype)
            with torch.no_grad():
                a.weight.copy_(src.lora_A[e * r : (e + 1) * r])
                b.weight.copy_(src.lora_B[:, e * r : (e + 1) * r])
            self.lora_A.append(a)
            self.lora_B.append(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        hidden_dim = x.shape[-1]
        flat = x.reshape(-1, hidden_dim).to(self.lora_A[0].weight.dtype)
        probs = F.softmax(self.router(flat), dim=-1, dtype=torch.float32)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(flat.dtype)
        mask = F.one_hot(chosen, num_classes=self.num_experts).permute(2, 1, 0)
        out = torch.zeros(flat.shape[0], self.out_features, dtype=flat.dtype, device=flat.device)
        for e in range(self.num_experts):
            slot, token = torch.where(mask[e])
            if token.shape[0] == 0:
                continue
            token_list, slot_list = token.tolist(), slot.tolist()
            picked = flat[token_list]
            y = self.lora_B[e](self.lora_A[e](self.dropout(picked))) * self.scaling
            out.index_add_(0, token, y * weights[token_list, slot_list, None])
        return result + out.view(*x.shape[:-1], self.out_features).to(result.dtype)


def to_loop_reference(model: nn.Module) -> nn.Module:
    """Replace every MoELoRALinear by a loop module with the same weights."""
    for name, module in moe_modules(model):
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, LoopMoELoRALinear(module).train())
    return model


# --------------------------------------------------------------------------- set-up


def model_config(device: str, quick: bool):
    """A Llama-shaped config: TinyLlama-1.1B dimensions on GPU, a small one on CPU."""
    from transformers import LlamaConfig

    if device == "cuda":
        dims = (
            dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8)
            if quick
            else dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22)
        )
        return LlamaConfig(
            **dims, num_attention_heads=32 if not quick else 16, num_key_value_heads=4,
            vocab_size=32000, max_position_embeddings=2048,
        )  # fmt: skip
    dims = (
        dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4)
        if quick
        else dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4)
    )
    return LlamaConfig(
        **dims, num_attention_heads=8, num_key_value_heads=8, vocab_size=8192,
        max_position_embeddings=1024,
    )  # fmt: skip


def demo_base_and_allocation(device: torch.device, dtype: torch.dtype):
    """The product's CPU workload: the embedded SmolLM2-135M and the allocation that the
    ``demo-cpu`` preset trains with (AlphaLoRA from the model's own alphas)."""
    from transformers import AutoModelForCausalLM

    from alphalora.finetune.config import load_config
    from alphalora.finetune.resolve import resolve_allocation, resolve_model_path

    config = load_config("demo-cpu")
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(config.model), dtype=dtype)
    base = base.to(device)
    alloc = resolve_allocation(config, base.config.num_hidden_layers, analysis_device="cpu")
    return base, alloc, config


def build_variants(args, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaForCausalLM

    if args.workload == "demo":
        base, alloc, _ = demo_base_and_allocation(device, dtype)
        config = base.config
    else:
        config = model_config(args.device, args.quick)
        torch.manual_seed(0)
        base = LlamaForCausalLM(config).to(device=device, dtype=dtype)
        alloc = mola_shape("2468", config.num_hidden_layers)
    base.config.use_cache = False
    layers = config.num_hidden_layers
    n_mean = sum(alloc.experts) / layers
    k_mean = sum(alloc.top_k) / layers
    variants: dict[str, dict] = {}

    moe = inject_moe_lora(copy.deepcopy(base), alloc, rank=RANK).train()
    gen = torch.Generator(device="cpu").manual_seed(1)
    with torch.no_grad():  # B ≠ 0, as after some training, so routing affects the output
        for _, module in moe_modules(moe):
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=gen) * 1e-3)
    variants["moe (ours)"] = dict(model=moe, aux=True)
    loop = to_loop_reference(copy.deepcopy(moe)).train()
    variants["moe loop (MoLA-style)"] = dict(model=loop, aux=False)

    rk = round(RANK * k_mean)
    rn = round(RANK * n_mean)
    pattern = {rf"layers\.{j}\..*": RANK * n for j, n in enumerate(alloc.experts)}
    peft_specs = {
        f"peft LoRA r={rk} (r·k)": dict(rank=rk),
        f"peft LoRA r={rn} (r·N̄)": dict(rank=rn),
        "peft LoRA r=8·N_j per layer": dict(rank=rn, rank_pattern=pattern),
    }
    for label, spec in peft_specs.items():
        model = make_peft_lora(copy.deepcopy(base), targets="llama", **spec).train()
        variants[label] = dict(model=model, aux=False)

    frozen = copy.deepcopy(base).train()
    for p in frozen.parameters():
        p.requires_grad_(False)
    frozen.enable_input_require_grads()  # backward through every layer, as LoRA needs
    variants["frozen base (floor)"] = dict(model=frozen, aux=False)
    for v in variants.values():
        v["trainable"] = trainable_parameter_count(v["model"])
    info = dict(
        config={k: getattr(config, k) for k in ("hidden_size", "intermediate_size",
                                                 "num_hidden_layers", "vocab_size")},
        allocation=dict(experts=list(alloc.experts), top_k=list(alloc.top_k)),
        rank=RANK, n_mean=n_mean, k_mean=k_mean,
    )  # fmt: skip
    return variants, info


def check_equivalence(variants, ids) -> float:
    """Max |logit difference| between ours and the loop reference (eval mode, no dropout)."""
    ours = variants["moe (ours)"]["model"].eval()
    loop = variants["moe loop (MoLA-style)"]["model"].eval()
    with torch.no_grad():
        diff = (ours(input_ids=ids).logits.float() - loop(input_ids=ids).logits.float()).abs()
    ours.train()
    loop.train()
    return float(diff.max())


def step(variant, ids, sync) -> float:
    """Time one forward + backward (gradients cleared first, outside the timing)."""
    model = variant["model"]
    model.zero_grad(set_to_none=True)
    sync()
    start = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    if variant["aux"]:
        loss = loss + 0.001 * load_balancing_loss(model)
    loss.backward()
    sync()
    return (time.perf_counter() - start) * 1000.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="smaller model, fewer rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default 1 on CPU: on shared cores a multi-threaded step's time "
        "swings several-fold with the neighbours' load; one thread keeps ratios stable)",
    )
    parser.add_argument(
        "--workload",
        choices=["synthetic", "demo"],
        default="synthetic",
        help="synthetic: random Llama-shaped base with MoLA ▽2468 (default); demo: the embedded "
        "SmolLM2-135M with the demo-cpu preset's AlphaLoRA allocation, batch 8 × 48 tokens",
    )
    parser.add_argument("--out", type=Path, help="result JSON (default bench/results/moe_…)")
    args = parser.parse_args(argv)
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("No CUDA device here; run with --device cpu.", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    batch, seq = (4, 512) if args.device == "cuda" else (4, 128)
    if args.quick:
        batch, seq = (2, 256) if args.device == "cuda" else (2, 64)
    if args.workload == "demo":
        from alphalora.finetune.config import load_config

        demo = load_config("demo-cpu")
        batch, seq = demo.batch_size, demo.max_length
    rounds = args.rounds or (3 if args.quick else 7)
    warmup = 1 if args.quick else 2
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    variants, info = build_variants(args, device, dtype)
    torch.manual_seed(2)
    ids = torch.randint(0, info["config"]["vocab_size"], (batch, seq), device=device)
    max_diff = check_equivalence(variants, ids)

    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            ms = step(variants[name], ids, sync)
            if r >= warmup:
                times[name].append(ms)
    median = {n: statistics.median(t) for n, t in times.items()}
    best = {n: min(t) for n, t in times.items()}

    ours = median["moe (ours)"]
    floor = median["frozen base (floor)"]
    loop = median["moe loop (MoLA-style)"]
    rows = []
    for name in names:
        rows.append(
            dict(
                variant=name,
                ms_per_step=round(median[name], 2),
                best_ms=round(best[name], 2),
                vs_ours=round(median[name] / ours, 3),
                overhead_vs_base_pct=round(100 * (median[name] / floor - 1), 1),
                trainable_params=variants[name]["trainable"],
                samples_ms=[round(t, 2) for t in times[name]],
            )
        )
    peft_names = [n for n in names if n.startswith("peft")]
    summary = {
        "loop_over_ours": round(loop / ours, 3),
        "loop_over_ours_best": round(best["moe loop (MoLA-style)"] / best["moe (ours)"], 3),
        "loop_over_ours_adapter_only": (
            round((loop - floor) / (ours - floor), 3) if ours > floor else None
        ),
        **{f"ours_over_{n}": round(ours / median[n], 3) for n in peft_names},
        **{f"ours_over_{n}_best": round(best["moe (ours)"] / best[n], 3) for n in peft_names},
        "ours_overhead_vs_base_pct": round(100 * (ours / floor - 1), 1),
        "max_logit_diff_ours_vs_loop": max_diff,
    }
    result = dict(
        device=args.device,
        device_name=torch.cuda.get_device_name()
        if args.device == "cuda"
        else platform.processor() or platform.machine(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        dtype=str(dtype).removeprefix("torch."),
        batch=batch,
        seq=seq,
        quick=args.quick,
        workload=args.workload,
        warmup_rounds=warmup,
        rounds=rounds,
        **info,
        notes=(
            "one step = forward + loss.backward(), no optimizer; ours adds the balancing loss "
            "(0.001·aux), the loop reference does not (MoLA ships it off); adapters are float32 "
            "in every variant (peft's default autocast_adapter_dtype); base frozen everywhere."
        ),
        results=rows,
        summary=summary,
    )
    print(
        f"device={args.device} dtype={result['dtype']} threads={result['threads']} batch={batch} "
        f"seq={seq} layers={info['config']['num_hidden_layers']} "
        f"hidden={info['config']['hidden_size']} experts={info['allocation']['experts']}"
    )
    print(
        f"{'variant':30s} {'median ms':>10s} {'best ms':>9s} {'÷ ours':>7s} {'vs base':>8s} "
        f"{'trainable':>11s}"
    )
    for row in rows:
        print(
            f"{row['variant']:30s} {row['ms_per_step']:10.1f} {row['best_ms']:9.1f} "
            f"{row['vs_ours']:7.3f} "
            f"{row['overhead_vs_base_pct']:+7.1f}% {row['trainable_params']:11,d}"
        )
    for key, value in summary.items():
        print(f"{key}: {value}")
    suffix = "" if args.workload == "synthetic" else f"_{args.workload}"
    out = (
        args.out or Path(__file__).resolve().parent / "results" / f"moe_{args.device}{suffix}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
