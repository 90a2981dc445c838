"""`python -m alphalora allocate`: layer alphas (or a MoLA shape) → experts per layer."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from alphalora.allocation.allocate import EXPERTS_PER_LAYER, allocate
from alphalora.allocation.checks import MAX_TOTAL_EXPERTS
from alphalora.allocation.labels import with_layer_score
from alphalora.allocation.layer_alphas import layer_alphas_from_table
from alphalora.allocation.model import Allocation
from alphalora.allocation.params import module_shapes_from_config, trainable_parameters
from alphalora.allocation.softmax_rules import beta_to_temperature
from alphalora.cli.allocate_ranks import add_rank_arguments, run_ranks
from alphalora.errors import AlphaLoRAError
from alphalora.paths import atomic_write_text, check_output_file
from alphalora.spectral.layer_scores import LAYER_SCORES

ScoreChoice = tuple[str, bool] | None

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
_NUMBER_SPLIT = re.compile(r"[,\s;]+")


def register(subparsers: Any) -> None:
    """Add the ``allocate`` sub-command."""
    p = subparsers.add_parser(
        "allocate",
        help="turn layer alphas into LoRA experts per layer",
        description=(
            "Allocate LoRA experts per layer from layer alphas (AlphaLoRA) or a fixed MoLA "
            "shape. Alphas come from --alphas (a comma list or a file: an `analyze` output "
            ".csv/.json/.parquet, or a list of numbers .txt/.json) or from --preset."
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--alphas", metavar="A1,A2,…|FILE", help="layer alphas, comma-separated, or a file"
    )
    src.add_argument("--preset", metavar="NAME", help="published alphas: llama2-7b")
    p.add_argument(
        "--shape",
        metavar="SHAPE",
        help="MoLA shape instead of alphas (8642, 2468, 8228, 2882, 5555, 4444, diamond, ◇, "
        "…, or 'uniform')",
    )
    p.add_argument(
        "--layers", type=int, metavar="L", help="layer count for --shape without alphas (32)"
    )
    p.add_argument(
        "--budget",
        type=int,
        metavar="T",
        help=f"total experts, from one per layer to {MAX_TOTAL_EXPERTS:,} (default: "
        f"{EXPERTS_PER_LAYER} per layer, 160 at 32 layers; for --shape the shape's own total)",
    )
    temp = p.add_mutually_exclusive_group()
    temp.add_argument("--beta", type=float, metavar="B", help="inverse temperature (2.5)")
    temp.add_argument("--temperature", type=float, metavar="TAU", help="temperature τ = 1/β")
    p.add_argument(
        "--mode",
        choices=("official", "default"),
        help="official: the reference formula exactly (can give 0); default: largest "
        "remainder with bounds (the default)",
    )
    p.add_argument("--min", type=int, dest="min_experts", metavar="N", help="per layer ≥ N")
    p.add_argument("--max", type=int, dest="max_experts", metavar="N", help="per layer ≤ N")
    p.add_argument("--top-k", type=int, default=2, metavar="K", help="router top-k (2)")
    p.add_argument(
        "--min-at-least-top-k",
        action="store_true",
        help="raise the per-layer minimum to top-k (default mode)",
    )
    p.add_argument("--rank", type=int, default=8, metavar="R", help="LoRA rank for counts (8)")
    p.add_argument(
        "--config",
        metavar="CONFIG.json",
        help="a model config.json (Llama-style) to count trainable parameters",
    )
    p.add_argument(
        "--layer-score",
        choices=LAYER_SCORES,
        help="how a layer's alpha is made from its matrices (needs an `analyze` per-matrix "
        "table): mean (AlphaLoRA, default), median, or trimmed (without each layer's largest "
        "and smallest α when it has ≥ 5 matrices)",
    )
    p.add_argument(
        "--exclude-unreliable",
        action="store_true",
        help="score layers on their reliable fits only (needs a per-matrix table; a layer with "
        "none falls back to all its fits and is flagged)",
    )
    add_rank_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", metavar="FILE.json", help="also save the allocation as JSON")
    p.set_defaults(handler=run)


# --------------------------------------------------------------------------- reading alphas


def _parse_numbers(text: str, where: str) -> list[float]:
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    tokens = [t for t in _NUMBER_SPLIT.split(" ".join(lines)) if t]
    if not tokens:
        raise AlphaLoRAError(f"No numbers found in {where}.")
    values = []
    for t in tokens:
        try:
            values.append(float(t))
        except ValueError:
            raise AlphaLoRAError(
                f"{where} must hold numbers separated by commas or spaces; {t!r} is not one."
            ) from None
    return values


def _alphas_from_frame(df: Any, where: str, score: ScoreChoice = None) -> list[float]:
    cols = {str(c).lower(): c for c in df.columns}
    if "alpha" not in cols and "layer" in cols:  # a per-layer table (analyze --layers-out)
        column = cols.get("layer_score") or cols.get("alpha_mean")
        if column is not None:
            _per_matrix_only(score, where)
            cols["alpha"] = column
    if "alpha" in cols and "layer" in cols:
        method, exclude = score or (None, False)
        return layer_alphas_from_table(
            df.rename(columns={cols["alpha"]: "alpha", cols["layer"]: "layer"}), method, exclude
        )
    _per_matrix_only(score, where)
    if "alpha" in cols:
        return [float(v) for v in df[cols["alpha"]].tolist()]
    if df.shape[1] == 1:
        return [float(v) for v in df.iloc[:, 0].tolist()]
    raise AlphaLoRAError(
        f"{where} has columns {list(df.columns)}; expected an `analyze` table (name, layer, "
        "kind, alpha) or a single column of layer alphas."
    )


def _per_matrix_only(score: ScoreChoice, where: str) -> None:
    """Refuse --layer-score/--exclude-unreliable for inputs that are already layer alphas."""
    if score is not None:
        raise AlphaLoRAError(
            f"--layer-score and --exclude-unreliable need the per-matrix table of an analysis "
            f"(`python -m alphalora analyze MODEL --out matrices.csv`); {where} holds layer "
            "alphas already."
        )


def _alphas_from_json(data: Any, where: str, score: ScoreChoice = None) -> list[float]:
    import pandas as pd

    if isinstance(data, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in data
    ):
        _per_matrix_only(score, where)
        return [float(v) for v in data]
    if isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        return _alphas_from_frame(pd.DataFrame(data), where, score)
    if isinstance(data, dict):
        if "alphas" in data and isinstance(data["alphas"], list):
            return _alphas_from_json(data["alphas"], where, score)
        for key in ("matrices", "rows", "records", "data", "table"):
            if isinstance(data.get(key), list):
                return _alphas_from_json(data[key], where, score)
        if "alpha" in data:
            try:
                return _alphas_from_frame(pd.DataFrame(data), where, score)
            except ValueError as exc:
                raise AlphaLoRAError(f"{where} could not be read as a table: {exc}.") from exc
    raise AlphaLoRAError(
        f"{where} is neither a list of numbers nor an `analyze` table (rows with layer, alpha)."
    )


def read_alphas(spec: str, score: ScoreChoice = None) -> list[float]:
    """Layer alphas from a comma list or a file (analyze table or a list of numbers); ``score``
    (layer score, exclude unreliable) applies to a per-matrix analyze table only."""
    path = Path(spec).expanduser()
    if not path.is_file():
        looks_like_path = any(ch in spec for ch in "/\\") or bool(
            re.search(r"\.[A-Za-z]\w*$", spec.strip())
        )
        if looks_like_path:
            raise AlphaLoRAError(f"Alpha file {spec!r} not found.")
        _per_matrix_only(score, "--alphas")
        return _parse_numbers(spec, "--alphas")
    where = str(path)
    suffix = path.suffix.lower()
    try:
        if suffix in TABLE_SUFFIXES:
            import pandas as pd

            df = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
            return _alphas_from_frame(df, where, score)
        text = path.read_text(encoding="utf-8")
    except AlphaLoRAError:
        raise
    except (OSError, ValueError, ImportError, UnicodeDecodeError) as exc:
        raise AlphaLoRAError(f"Cannot read {where}: {exc}") from exc
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AlphaLoRAError(f"{where} is not valid JSON: {exc}.") from exc
        return _alphas_from_json(data, where, score)
    _per_matrix_only(score, where)
    return _parse_numbers(text, where)


def _read_config_shapes(spec: str) -> dict[str, tuple[int, int]]:
    path = Path(spec).expanduser()
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AlphaLoRAError(f"Cannot read the model config {spec}: {exc.strerror}.") from exc
    except json.JSONDecodeError as exc:
        raise AlphaLoRAError(f"The model config {spec} is not valid JSON: {exc}.") from exc
    if not isinstance(config, dict):
        raise AlphaLoRAError(f"The model config {spec} must be a JSON object.")
    return module_shapes_from_config(config)


# --------------------------------------------------------------------------- building


def _build(args: argparse.Namespace) -> tuple[Allocation, dict | None]:
    """The allocation the arguments ask for, and module shapes if known (for counts)."""
    from alphalora.allocation.presets import get_preset

    alphas: list[float] | None = None
    shapes = None
    preset_budget = None
    score = _score_choice(args)
    if score is not None and not args.alphas:
        _per_matrix_only(score, "--preset" if args.preset else "this input")
    if args.preset:
        preset = get_preset(args.preset)
        alphas, shapes, preset_budget = preset["alphas"], preset["module_shapes"], preset["budget"]
    elif args.alphas:
        alphas = read_alphas(args.alphas, score)
    if args.config:
        shapes = _read_config_shapes(args.config)

    result = allocate(
        alphas,
        budget=preset_budget if args.budget is None and not args.shape else args.budget,
        beta=args.beta,
        temperature=args.temperature,
        mode=args.mode,
        shape=args.shape,
        n_layers=args.layers,
        min_experts=args.min_experts,
        max_experts=args.max_experts,
        top_k=args.top_k,
        min_at_least_top_k=args.min_at_least_top_k,
    )
    if score is not None and not args.shape:
        result = with_layer_score(result, *score)
    return result, shapes


def _score_choice(args: argparse.Namespace) -> ScoreChoice:
    """(layer score, exclude unreliable) when either option was given, else None."""
    if args.layer_score is None and not args.exclude_unreliable:
        return None
    return args.layer_score or "mean", bool(args.exclude_unreliable)


# --------------------------------------------------------------------------- printing


def format_table(result: Allocation, params: int | None = None) -> str:
    """A readable per-layer table with bars, then the totals."""
    widest = max(result.experts)
    scale = 1.0 if widest <= 40 else 40 / widest
    lines = [result.label or result.method, ""]
    lines.append(f"{'layer':>5}  {'alpha':>8}  {'experts':>7}  {'top_k':>5}")
    for i, (n, k) in enumerate(zip(result.experts, result.top_k, strict=True)):
        a = "" if result.alphas is None else f"{result.alphas[i]:.3f}"
        bar = "█" * max(1 if n else 0, round(n * scale))
        lines.append(f"{i:>5}  {a:>8}  {n:>7}  {k:>5}  {bar}")
    lines.append("")
    extra = ""
    if result.beta is not None:
        tau = beta_to_temperature(result.beta)
        extra = f", beta {result.beta:g} (temperature {'inf' if math.isinf(tau) else f'{tau:g}'})"
    lines.append(
        f"total {result.total} experts over {result.n_layers} layers "
        f"(method {result.method}{extra})"
    )
    if params is not None:
        lines.append(f"trainable parameters: {params:,}")
    for warning in result.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def _write(path: str, text: str) -> None:
    target = Path(path).expanduser()
    try:
        atomic_write_text(target, text)
    except OSError as exc:
        raise AlphaLoRAError(f"Cannot write {target}: {exc.strerror or exc}.") from exc


def run(args: argparse.Namespace) -> int:
    """Handler: build, print (table or JSON), optionally save."""
    if args.out:
        check_output_file(args.out, what="allocation file")
    if args.as_ == "peft-ranks":
        return run_ranks(args, read_alphas, _score_choice(args), _read_config_shapes, _write)
    result, shapes = _build(args)
    params = None
    if shapes:
        params = trainable_parameters(result, shapes, rank=args.rank)
    score = _score_choice(args)
    if args.out:
        text = result.to_json()
        if score is not None and not args.shape:
            data = {**result.to_dict(), "layer_score": score[0], "exclude_unreliable": score[1]}
            text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        _write(args.out, text)
    if args.json:
        payload = result.to_dict()
        if score is not None and not args.shape:
            payload.update(layer_score=score[0], exclude_unreliable=score[1])
        if params is not None:
            payload["trainable_parameters"] = params
        print(json.dumps(payload, ensure_ascii=False))
        if args.out:
            print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(format_table(result, params))
        if args.out:
            print(f"wrote {args.out}")
    return 0
