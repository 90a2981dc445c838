"""Whole-model analysis: AlphaLoRA Studio vs WeightWatcher ``analyze()``, side by side.

Both analyse the same weights (the embedded SmolLM2-135M, exported once to safetensors) in
one process on the same machine. WeightWatcher gets the model already loaded in memory (its
load time is not counted); ours streams from disk, cold cache. Both use the Clauset fit and
the same eigenvalue convention: WeightWatcher's default (``normalize=False``) takes the
eigenvalues of WᵀW as they are, which is our ``--esd-scale none``. Besides alpha, the
scale-dependent columns (λ_max, xmin, the norms) are compared, so a convention mismatch shows up
(``--esd-scale N`` makes them N times smaller than WeightWatcher's). It also times LAPACK's
eigvalsh alone on the precomputed Gram matrices: the floor of any float64 analysis on this CPU,
hence the largest ratio over WeightWatcher that this machine allows.

    .venv/bin/python bench/bench_analysis.py [--quick] [--esd-scale none|N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"


def _eigvalsh_floor(source, names: list[str]) -> float:
    """Seconds for LAPACK ``eigvalsh`` alone on every matrix's float64 Gram matrix (built
    beforehand, not timed), one single-threaded solve per core: the part of a float64
    analysis that no implementation on this CPU avoids."""
    from concurrent.futures import ThreadPoolExecutor

    from alphalora.spectral.analysis import default_workers
    from alphalora.spectral.spectra import cpu_threads, gram_matrix

    grams = [gram_matrix(source.load(name)) for name in names]
    with cpu_threads(1), ThreadPoolExecutor(default_workers()) as pool:
        list(pool.map(np.linalg.eigvalsh, grams[:8]))  # warm-up
        start = time.perf_counter()
        list(pool.map(np.linalg.eigvalsh, grams))
        return time.perf_counter() - start


#: Columns compared with WeightWatcher's: alpha and D do not depend on the eigenvalue scale,
#: the others do (λ_max and xmin linearly, the log10 norms by log10 N).
COMPARED = ("alpha", "D", "xmin", "lambda_max", "log_spectral_norm", "log_norm")


def compare_with_weightwatcher(
    ours: pd.DataFrame, ww: pd.DataFrame, columns: tuple[str, ...] = COMPARED, rtol: float = 1e-6
) -> dict:
    """Per column present in both tables (matched on ``longname``): how many matrices agree to
    ``rtol`` (relative; absolute for the log10 columns), the largest difference and the median
    ratio WeightWatcher / ours (1 when the conventions agree, N for λ_max under ``--esd-scale
    N``)."""
    left = ours.assign(longname=ours["name"].str.removesuffix(".weight"))
    merged = left.merge(ww, on="longname", suffixes=("", "_ww"))
    report: dict = {"matrices_compared": int(len(merged))}
    for col in columns:
        if col not in ours.columns or col not in ww.columns:
            continue
        a = pd.to_numeric(merged[col], errors="coerce").to_numpy(dtype=float)
        b = pd.to_numeric(merged[f"{col}_ww"], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(a) & np.isfinite(b)
        a, b = a[ok], b[ok]
        log_column = col.startswith("log_")
        diff = np.abs(a - b) if log_column else np.abs(a - b) / np.maximum(np.abs(b), 1e-300)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.power(10.0, b - a) if log_column else b / a
        report[col] = {
            "equal": int(np.sum(diff < rtol)),
            "of": int(a.size),
            "max_difference": float(diff.max()) if a.size else None,
            "median_ratio_ww_over_ours": float(np.median(ratio)) if a.size else None,
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="first 6 layers only")
    parser.add_argument(
        "--esd-scale",
        choices=("none", "N"),
        default="none",
        help="our eigenvalue convention (none = WeightWatcher's default; N shows the mismatch)",
    )
    args = parser.parse_args()
    os.environ.setdefault("ALPHALORA_HOME", tempfile.mkdtemp(prefix="alphalora-bench-"))

    import torch
    from transformers import AutoModelForCausalLM

    from alphalora.spectral.analysis import analyze
    from alphalora.spectral.analysis_types import AnalysisOptions
    from alphalora.spectral.embedded import export_embedded_hf
    from alphalora.spectral.sources import open_source

    folder = export_embedded_hf()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    n_layers = model.config.num_hidden_layers
    keep = range(6) if args.quick else range(n_layers)
    if args.quick:
        model.model.layers = model.model.layers[:6]

    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    watcher = ww.WeightWatcher(model=model)
    layer_ids = [
        i for i, (name, mod) in enumerate(model.named_modules())
        if isinstance(mod, torch.nn.Linear) and ".layers." in name
    ]  # fmt: skip
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ww_df = watcher.analyze(layers=layer_ids)
    t_ww = time.perf_counter() - start

    source = open_source(folder)
    if args.quick:
        infos = [i for i in source.matrices() if i.layer in keep]
        source.matrices = lambda include_non_block=False, _i=infos: _i  # analyse the same subset
    opts = AnalysisOptions(fit="clauset", device="cpu", esd_scale=args.esd_scale)
    start = time.perf_counter()
    ours = analyze(source, opts, use_cache=False)
    t_ours = time.perf_counter() - start

    opts32 = AnalysisOptions(
        fit="clauset", device="cpu", esd_scale=args.esd_scale, precision="float32"
    )
    start = time.perf_counter()
    ours32 = analyze(source, opts32, use_cache=False)
    t_ours32 = time.perf_counter() - start
    d32 = (ours32.matrices["alpha"] - ours.matrices["alpha"]).abs()

    t_floor = _eigvalsh_floor(source, ours.matrices["name"].tolist())

    ours_df = ours.matrices.assign(longname=ours.matrices["name"].str.removesuffix(".weight"))
    merged = ours_df.merge(
        ww_df[["longname", "alpha", "xmin", "D"]], on="longname", suffixes=("", "_ww")
    )
    diff = (merged["alpha"] - merged["alpha_ww"]).abs()
    rel = diff / merged["alpha_ww"].abs()
    same = int((rel < 1e-6).sum())
    agreement = compare_with_weightwatcher(ours.matrices, ww_df)
    report = {
        "model": "SmolLM2-135M-Instruct (embedded, dequantised Q4_1)",
        "esd_scale": args.esd_scale,
        "agreement": agreement,
        "matrices_ours": int(len(ours.matrices)),
        "matrices_weightwatcher": int(len(ww_df)),
        "matrices_compared": int(len(merged)),
        "seconds_ours": round(t_ours, 3),
        "seconds_weightwatcher": round(t_ww, 3),
        "speedup": round(t_ww / t_ours, 2),
        "seconds_ours_float32": round(t_ours32, 3),
        "speedup_float32": round(t_ww / t_ours32, 2),
        "float32_alpha_max_abs_diff_vs_float64": float(d32.max()),
        "float32_alpha_median_abs_diff_vs_float64": float(d32.median()),
        "alpha_equal_1e-6": same,
        "alpha_max_abs_diff": float(diff.max()) if len(diff) else None,
        "alpha_median_abs_diff": float(diff.median()) if len(diff) else None,
        "alpha_correlation": float(np.corrcoef(merged["alpha"], merged["alpha_ww"])[0, 1])
        if len(merged) > 2
        else None,
        "torch_threads": torch.get_num_threads(),
        "seconds_eigvalsh_floor": round(t_floor, 3),
        "ceiling_ratio_float64": round(t_ww / t_floor, 2),
        "floor_note": "LAPACK eigvalsh alone on the precomputed float64 Gram matrices, one "
        "single-threaded solve per core: no float64 analysis can beat WeightWatcher by more "
        "than ceiling_ratio_float64 on this machine",
    }
    by_layer = merged.groupby("layer")[["alpha", "alpha_ww"]].mean()
    scale = "WᵀW" if args.esd_scale == "none" else "WᵀW/N"
    print(
        f"whole analysis, {report['matrices_compared']} matrices (clauset fit, eigenvalues of {scale})"
    )
    print(f"  AlphaLoRA Studio  {t_ours:8.2f} s  (streams from safetensors)")
    print(f"  WeightWatcher     {t_ww:8.2f} s  (model already in memory)")
    print(f"  ratio             {report['speedup']:8.1f}x faster")
    print(f"  ours, float32 eigen-solver {t_ours32:6.2f} s -> {report['speedup_float32']:.1f}x faster; "
          f"alpha moves by ≤ {d32.max():.2g} (median {d32.median():.2g}) vs float64")  # fmt: skip
    print(f"  floor: float64 eigvalsh alone {t_floor:6.2f} s -> no float64 analysis can be more "
          f"than {report['ceiling_ratio_float64']:.1f}x faster than WeightWatcher here")  # fmt: skip
    print(f"  alpha equal to 1e-6 relative: {same}/{len(merged)}; max |Δα| {report['alpha_max_abs_diff']:.3g}; "
          f"correlation {report['alpha_correlation']:.6f}")  # fmt: skip
    for col in COMPARED:
        if col in agreement:
            a = agreement[col]
            print(f"  {col:<18} equal to 1e-6: {a['equal']}/{a['of']}; max difference "
                  f"{a['max_difference']:.3g}; WeightWatcher / ours {a['median_ratio_ww_over_ours']:.6g}")  # fmt: skip
    print("\nlayer-mean alpha, side by side")
    print(
        pd.DataFrame({"ours": by_layer["alpha"], "weightwatcher": by_layer["alpha_ww"]})
        .round(4)
        .to_string()
    )
    RESULTS.mkdir(exist_ok=True)
    suffix = ("_quick" if args.quick else "") + ("" if args.esd_scale == "none" else "_N")
    out = RESULTS / f"analysis{suffix}.json"
    report["layer_alpha"] = {
        int(k): [float(v["alpha"]), float(v["alpha_ww"])] for k, v in by_layer.iterrows()
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
