"""``python -m alphalora analyze MODEL [--fit …] [--device …] [--out FILE]``."""

from __future__ import annotations

import argparse
from typing import Any

from alphalora.cli.terminal import clean
from alphalora.paths import check_output_file
from alphalora.spectral.analysis import TABLE_SUFFIXES, analyze, export_table
from alphalora.spectral.analysis_types import FIT_MODES, AnalysisOptions
from alphalora.spectral.layer_scores import (
    LAYER_SCORES,
    describe_layer_score,
    fallback_layers,
    layer_score_table,
    layers_with_score,
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``analyze`` sub-command."""
    p = sub.add_parser(
        "analyze",
        help="spectral analysis of a model: per-matrix and per-layer power-law alphas",
        description="Stream every 2-D block matrix of MODEL, fit a power law to the eigenvalues "
        "of WᵀW and print the per-layer table. MODEL is 'embedded' (the default model that "
        "ships with the project), a folder with config.json and safetensors, a .safetensors "
        "or .gguf file, or a Hugging Face hub id.",
    )
    p.add_argument(
        "model", nargs="?", default="embedded", help="model reference (default: embedded)"
    )
    p.add_argument("--fit", choices=FIT_MODES, default="hill-peak",
                   help="xmin search: hill-peak (AlphaLoRA, default) or clauset (powerlaw package)")  # fmt: skip
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", help="write the per-matrix table to FILE (.csv, .json or .parquet)")
    p.add_argument(
        "--layers-out", help="write the per-layer table to FILE (.csv, .json or .parquet)"
    )
    p.add_argument("--precision", choices=("float64", "float32"), default="float64")
    p.add_argument("--log10-quirk", action="store_true",
                   help="hill-peak: reproduce AlphaLoRA's log10 lower bound on xmin exactly")  # fmt: skip
    p.add_argument("--esd-scale", choices=("none", "N"), default="none",
                   help="none: eigenvalues of WᵀW as they are (AlphaLoRA's and WeightWatcher's "
                   "default); N: divided by N = max(rows, cols), i.e. WeightWatcher with "
                   "normalize=True. Alpha is the same either way")  # fmt: skip
    p.add_argument("--layer-score", choices=LAYER_SCORES, default=None,
                   help="layer score added to --layers-out and the table: mean (AlphaLoRA, the "
                   "default), median, or trimmed (drops each layer's largest and smallest α "
                   "when it has ≥ 5 matrices)")  # fmt: skip
    p.add_argument("--exclude-unreliable", action="store_true",
                   help="score layers on their reliable fits only (a layer with none falls back "
                   "to all its fits and is flagged)")  # fmt: skip
    p.add_argument("--all-matrices", action="store_true",
                   help="also analyse embeddings and lm_head (they never enter a layer score)")  # fmt: skip
    p.add_argument(
        "--no-cache", action="store_true", help="recompute even if a cached analysis exists"
    )
    p.add_argument(
        "--verify-cache",
        action="store_true",
        help="hash every byte of the weights and reuse a cached analysis only if it was made "
        "from the same bytes (the default check is the files' size, mtime and inode)",
    )
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow .bin checkpoints (loaded with torch.load(weights_only=True))")  # fmt: skip
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the analysis with a tqdm bar, print the layer table, write the files asked for."""
    from tqdm import tqdm

    for flag, target in (("--out", args.out), ("--layers-out", args.layers_out)):
        if target:  # refused now, not after the whole analysis
            check_output_file(target, TABLE_SUFFIXES, what=f"{flag} table")
    options = AnalysisOptions(
        fit=args.fit, device=args.device, precision=args.precision, log10_quirk=args.log10_quirk,
        esd_scale=args.esd_scale, include_non_block=args.all_matrices,
    )  # fmt: skip
    bar = None

    def progress(done: int, total: int, name: str) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            bar = tqdm(total=total, unit="matrix", desc="analyse", leave=False)
        bar.n = done
        bar.set_postfix_str(clean(name[-40:]), refresh=False)
        bar.refresh()

    try:
        result = analyze(
            args.model, options, progress=progress, use_cache=not args.no_cache,
            allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
            verify_cache=args.verify_cache,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    print(format_report(result))
    layers = layers_with_score(
        result.layers, result.matrices, args.layer_score, args.exclude_unreliable
    )
    if args.layer_score not in (None, "mean") or args.exclude_unreliable:
        print(format_scores(result.matrices, args.layer_score, args.exclude_unreliable))
    if args.out:
        print(f"per-matrix table written to {export_table(result.matrices, args.out)}")
    if args.layers_out:
        print(f"per-layer table written to {export_table(layers, args.layers_out)}")
    return 0


def format_scores(matrices: Any, method: str | None, exclude_unreliable: bool) -> str:
    """The chosen layer scores beside the mean, and the layers that rest on flagged fits."""
    table = layer_score_table(matrices, method, exclude_unreliable)
    mean = layer_score_table(matrices, "mean", False).set_index("layer")["score"]
    lines = ["", f"layer score: {describe_layer_score(method, exclude_unreliable)}"]
    lines.append(f"{'layer':>5} {'score':>6} {'mean':>6}  left out")
    for row in table.itertuples():
        lines.append(f"{row.layer:5d} {row.score:6.2f} {mean[row.layer]:6.2f}  {row.left_out}")
    fallback = fallback_layers(table)
    if fallback:
        lines.append(f"layer(s) {fallback} have no reliable fit: their score uses flagged fits")
    return "\n".join(lines)


def format_report(result) -> str:
    """The readable summary: model line, layer table with a bar per layer, flagged fits."""
    s = result.summary()
    lines = [
        f"model    {clean(s['model'])}  ({clean(s['family'])}, {s['layers']} layers, {s['matrices']} matrices"
        + (f", {s['parameters'] / 1e6:.1f} M parameters)" if s.get("parameters") else ")"),
        f"fit      {s['fit']}   device {s['device']}   "
        + ("loaded from cache" if s["from_cache"] else f"{s['seconds']:.1f} s"),
        "",
    ]
    layers = result.layers
    kinds = [c for c in layers.columns if c.startswith("alpha_") and c not in
             ("alpha_mean", "alpha_std", "alpha_weighted_mean")]  # fmt: skip
    header = (
        f"{'layer':>5} {'alpha':>6} {'±':>5}  "
        + " ".join(f"{k[6:][:7]:>7}" for k in kinds)
        + "  flags"
    )
    lines.append(header)
    amax = max(float(layers["alpha_mean"].max()), 1e-9) if len(layers) else 1.0
    for _, row in layers.iterrows():
        bar = (
            "█" * max(1, round(12 * row["alpha_mean"] / amax))
            if row["alpha_mean"] == row["alpha_mean"]
            else ""
        )
        per_kind = " ".join(f"{row[k]:7.2f}" for k in kinds)
        flags = f"{int(row['n_flagged'])}" if row["n_flagged"] else ""
        lines.append(
            f"{int(row['layer']):5d} {row['alpha_mean']:6.2f} {row['alpha_std']:5.2f}  {per_kind}  {flags:>5} {bar}"
        )
    flagged = result.matrices[~result.matrices["reliable"].astype(bool)]
    lines.append("")
    lines.append(
        f"mean alpha {s['alpha_mean']:.3f}; {len(flagged)} of {s['matrices']} fits flagged"
    )
    for _, row in flagged.head(10).iterrows():
        lines.append(f"  ! {clean(row['name'])}: {clean(row['warning'])}")
    if len(flagged) > 10:
        lines.append(f"  … and {len(flagged) - 10} more (see --out)")
    return "\n".join(lines)
