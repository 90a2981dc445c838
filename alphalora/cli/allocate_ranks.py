"""``allocate … --as peft-ranks``: the same layer alphas spread a LoRA *rank* budget over the
adapted modules, written as a ``peft.LoraConfig`` JSON with ``rank_pattern`` that plain-LoRA
training (``method: lora``, ``lora_config``) takes."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alphalora.allocation.params import LLAMA_TARGETS
from alphalora.allocation.ranks import (
    RankAllocation,
    allocate_ranks,
    llama_module_names,
    matching_rank_budget,
    peft_lora_config,
)
from alphalora.errors import AlphaLoRAError


def add_rank_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``--as peft-ranks``."""
    p.add_argument(
        "--as",
        dest="as_",
        choices=("experts", "peft-ranks"),
        default="experts",
        help="experts: MoE-LoRA experts per layer (default); peft-ranks: LoRA ranks per module "
        "(--budget is then the total rank, --min/--max bound each module's rank), written as a "
        "peft LoraConfig JSON with rank_pattern",
    )
    p.add_argument(
        "--targets",
        metavar="q_proj,…",
        help="peft-ranks: adapted modules (default: the seven Llama projections)",
    )
    p.add_argument(
        "--match-experts",
        type=int,
        metavar="T",
        help="peft-ranks: pick the rank budget whose parameters are closest to a MoE-LoRA with "
        "T experts of rank --rank (needs module shapes: --config, --preset or a per-matrix table)",
    )
    p.add_argument("--lora-alpha", type=float, default=16.0, help="peft-ranks: lora_alpha (16)")


def _table(spec: str | None) -> Any:
    """The per-matrix analyze table behind ``--alphas FILE``, or None."""
    if not spec:
        return None
    path = Path(spec).expanduser()
    if not path.is_file() or path.suffix.lower() not in (".csv", ".parquet", ".pq", ".json"):
        return None
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            df = pd.read_csv(path)
        elif path.suffix.lower() == ".json":
            df = pd.read_json(path)
        else:
            df = pd.read_parquet(path)
    except (OSError, ValueError):
        return None
    needed = {"name", "layer", "kind", "rows", "cols"}
    return df if needed <= set(df.columns) else None


def _names_and_shapes(
    table: Any, targets: tuple[str, ...], n_layers: int
) -> tuple[list[str] | None, dict[str, tuple[int, int]]]:
    """Module names (layer-major, targets order) and (d_in, d_out) per kind from a table."""
    if table is None:
        return None, {}
    block = table[table["layer"].notna()]
    shapes: dict[str, tuple[int, int]] = {}
    names: dict[tuple[int, str], str] = {}
    for row in block.itertuples():
        key = (int(row.layer), str(row.kind))
        names[key] = str(row.name).removesuffix(".weight")
        shapes.setdefault(str(row.kind), (int(row.cols), int(row.rows)))
    wanted = [(i, t) for i in range(n_layers) for t in targets]
    if not all(k in names for k in wanted):
        return None, shapes
    return [names[k] for k in wanted], shapes


def _check_options(args: argparse.Namespace) -> None:
    wrong = [
        flag
        for flag, value in (
            ("--shape", args.shape),
            ("--mode official", args.mode == "official"),
            ("--min-at-least-top-k", args.min_at_least_top_k),
        )
        if value
    ]
    if wrong:
        raise AlphaLoRAError(
            f"{', '.join(wrong)} cannot be combined with --as peft-ranks (ranks use the default "
            "mode's softmax rule and rounding)."
        )


def run_ranks(
    args: argparse.Namespace,
    read_alphas: Callable[..., list[float]],
    score: tuple[str, bool] | None,
    read_config_shapes: Callable[[str], dict[str, tuple[int, int]]],
    write: Callable[[str, str], None],
) -> int:
    """Build the rank allocation the arguments ask for, print it, write the LoraConfig JSON."""
    from alphalora.allocation.allocate import DEFAULT_BETA
    from alphalora.allocation.params import trainable_parameters
    from alphalora.allocation.presets import get_preset
    from alphalora.allocation.softmax_rules import temperature_to_beta

    _check_options(args)
    targets = tuple(t.strip() for t in (args.targets or ",".join(LLAMA_TARGETS)).split(","))
    targets = tuple(t for t in targets if t)
    shapes: dict[str, tuple[int, int]] = {}
    if args.preset:
        if score is not None:
            raise AlphaLoRAError("--layer-score needs a per-matrix table, not --preset.")
        alphas = list(get_preset(args.preset)["alphas"])
        shapes = dict(get_preset(args.preset)["module_shapes"])
    elif args.alphas:
        alphas = read_alphas(args.alphas, score)
    else:
        raise AlphaLoRAError("Give layer alphas with --alphas or --preset for --as peft-ranks.")
    names, table_shapes = _names_and_shapes(_table(args.alphas), targets, len(alphas))
    shapes = shapes or table_shapes
    if args.config:
        shapes = read_config_shapes(args.config)
    beta = (
        temperature_to_beta(args.temperature)
        if args.temperature is not None
        else (DEFAULT_BETA if args.beta is None else args.beta)
    )
    low = 1 if args.min_experts is None else args.min_experts
    bounds = {"targets": targets, "min_rank": low, "max_rank": args.max_experts}
    moe_params = None
    if args.match_experts is not None:
        if not shapes:
            raise AlphaLoRAError(
                "--match-experts needs the module shapes: give --config config.json, --preset, "
                "or an `analyze --out` per-matrix table as --alphas."
            )
        sizes = {t: shapes[t] for t in targets if t in shapes}
        moe_params = trainable_parameters([args.match_experts], sizes, rank=args.rank)
        result = matching_rank_budget(moe_params, alphas, sizes, beta, **bounds)
    else:
        budget = args.budget if args.budget is not None else args.rank * len(alphas) * len(targets)
        result = allocate_ranks(alphas, budget, beta, **bounds)
    if score is not None:
        result = _labelled(result, score)
    config = peft_lora_config(
        result, names or llama_module_names(len(alphas), targets), lora_alpha=args.lora_alpha
    )
    params = result.parameters(shapes) if all(t in shapes for t in targets) else None
    if args.out:
        write(args.out, json.dumps(config, indent=2) + "\n")
    if args.json:
        print(json.dumps(_payload(result, config, params, moe_params), ensure_ascii=False))
    else:
        print(format_ranks(result, params, moe_params))
        if args.out:
            print(f"wrote {args.out} (peft.LoraConfig(**json.load(f)))")
    return 0


def _labelled(result: RankAllocation, score: tuple[str, bool]) -> RankAllocation:
    import dataclasses

    from alphalora.spectral.layer_scores import describe_layer_score

    return dataclasses.replace(result, label=f"{result.label} · {describe_layer_score(*score)}")


def _payload(
    result: RankAllocation, config: dict, params: int | None, moe_params: int | None
) -> dict[str, Any]:
    payload = {**result.to_dict(), "lora_config": config, "trainable_parameters": params}
    if moe_params is not None:
        payload["matched_moe_parameters"] = moe_params
    return payload


def format_ranks(result: RankAllocation, params: int | None, moe_params: int | None) -> str:
    """Per-layer ranks (min–max over the layer's modules) with a bar, then the totals."""
    lines = [result.label, "", f"{'layer':>5}  {'alpha':>8}  {'rank':>9}"]
    widest = max(max(r) for r in result.layer_ranks)
    scale = 1.0 if widest <= 40 else 40 / widest
    for i, ranks in enumerate(result.layer_ranks):
        low, high = min(ranks), max(ranks)
        text = f"{low}" if low == high else f"{low}–{high}"
        bar = "█" * max(1, round(high * scale))
        lines.append(f"{i:>5}  {result.alphas[i]:>8.3f}  {text:>9}  {bar}")
    lines.append("")
    lines.append(
        f"total rank {result.budget} over {len(result.ranks)} modules ({result.n_layers} layers × "
        f"{len(result.targets)}), mean {result.mean_rank:.2f}, beta {result.beta:g}"
    )
    if params is not None:
        lines.append(f"trainable parameters: {params:,}")
    if moe_params is not None and params is not None:
        gap = (params - moe_params) / moe_params
        lines.append(f"MoE-LoRA to match: {moe_params:,} parameters; this is {gap:+.3%} of it")
    return "\n".join(lines)
