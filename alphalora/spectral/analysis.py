"""Model → per-matrix and per-layer tables of heavy-tailed spectral metrics.

Streams matrices one at a time from a :class:`~alphalora.spectral.source_base.ModelSource`
(peak memory is a few matrices), takes the eigenvalues of WᵀW, fits a power law and collects the
metrics. Results are cached on disk (:mod:`~alphalora.spectral.analysis_cache`), keyed by the
weights' fingerprint and the options, so a second analysis of the same model loads instantly.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from alphalora.errors import AlphaLoRAError
from alphalora.paths import check_output_file, subdir, write_error
from alphalora.spectral import spectra
from alphalora.spectral.analysis_cache import cache_key, load_cached, save_cache
from alphalora.spectral.analysis_types import AnalysisOptions, AnalysisResult
from alphalora.spectral.fits.dispatch import fit_many, fit_power_law
from alphalora.spectral.fits.result import PowerLawFit
from alphalora.spectral.metrics import check_matrix, reliability_warning, spectrum_metrics
from alphalora.spectral.source_base import MatrixInfo, ModelSource
from alphalora.spectral.sources import open_source
from alphalora.spectral.spectra import cpu_threads, eigenvalues, eigenvalues_batched, resolve_device

#: Column order of the per-matrix table (the CLI's --out file keeps these names).
MATRIX_COLUMNS = [
    "name", "layer", "kind", "rows", "cols", "alpha", "xmin", "D", "n_tail", "n_eigs",
    "lambda_max", "log_spectral_norm", "log_norm", "alpha_weighted", "stable_rank",
    "reliable", "warning",
]  # fmt: skip

#: progress(done, total, message)
ProgressFn = Callable[[int, int, str], None]


def _fits(
    spectra: list[np.ndarray], opts: AnalysisOptions, device: torch.device
) -> list[PowerLawFit]:
    """Fit every spectrum in one call, so that equal-length spectra are fitted batched."""
    if not spectra:
        return []
    kw = {"log10_quirk": opts.log10_quirk} if opts.fit == "hill-peak" else {}
    return fit_many(spectra, opts.fit, device=str(device), **kw)


def matrix_row(
    info: MatrixInfo,
    eigs: np.ndarray | None,
    opts: AnalysisOptions,
    problem: str | None,
    fit: PowerLawFit | None = None,
) -> dict[str, Any]:
    """One row of the per-matrix table from a matrix's eigenvalues and fit (fitted here when
    not given), or from the reason it has none."""
    rows, cols = info.shape
    base: dict[str, Any] = {
        "name": info.name,
        "layer": info.layer,
        "kind": info.kind,
        "rows": rows,
        "cols": cols,
    }
    if problem is not None or eigs is None:
        nan_metrics = dict.fromkeys(MATRIX_COLUMNS[5:-2], math.nan)
        nan_metrics["n_tail"] = 0
        nan_metrics["n_eigs"] = 0 if eigs is None else int(eigs.size)
        return {**base, **nan_metrics, "reliable": False, "warning": problem or "no spectrum"}
    if fit is None:
        kw = {"log10_quirk": opts.log10_quirk} if opts.fit == "hill-peak" else {}
        fit = fit_power_law(eigs, opts.fit, **kw)
    scale = 1.0 / max(rows, cols) if opts.esd_scale == "N" else 1.0
    metrics = spectrum_metrics(eigs, fit, scale=scale)
    warning = reliability_warning(fit, int(eigs.size))
    return {**base, **metrics, "reliable": not warning, "warning": warning}


def layer_table(matrices: pd.DataFrame) -> pd.DataFrame:
    """One row per transformer block: mean alpha (the AlphaLoRA score), spread, the
    per-kind alphas as ``alpha_<kind>`` columns and how many of its fits are flagged."""
    block = matrices[matrices["layer"].notna()].copy()
    if block.empty:
        return pd.DataFrame(columns=["layer", "alpha_mean", "alpha_std", "n_matrices", "n_flagged"])
    block["layer"] = block["layer"].astype(int)
    grouped = block.groupby("layer", sort=True)
    out = pd.DataFrame(
        {
            "alpha_mean": grouped["alpha"].mean(),
            "alpha_std": grouped["alpha"].std(ddof=0),
            "alpha_weighted_mean": grouped["alpha_weighted"].mean(),
            "log_norm_mean": grouped["log_norm"].mean(),
            "n_matrices": grouped.size(),
            "n_flagged": grouped["reliable"].apply(lambda s: int((~s.astype(bool)).sum())),
        }
    )
    per_kind = block.pivot_table(index="layer", columns="kind", values="alpha", aggfunc="mean")
    per_kind.columns = [f"alpha_{k}" for k in per_kind.columns]
    return out.join(per_kind).reset_index()


_KIND_ORDER = {k: i for i, k in enumerate(
    ("q_proj", "k_proj", "v_proj", "qkv", "o_proj", "gate_proj", "up_proj", "gate_up", "down_proj")
)}  # fmt: skip


def _matrix_order(info: MatrixInfo) -> tuple[int, int, str]:
    """Layer by layer, projections in the forward pass's order; non-block matrices last."""
    layer = info.layer if info.layer is not None else 1 << 30
    return layer, _KIND_ORDER.get(info.kind, 99), info.name


def _loaded(
    source: ModelSource, infos: list[MatrixInfo]
) -> Iterator[tuple[MatrixInfo, torch.Tensor | None, str | None]]:
    """Read matrices one by one; a matrix with no meaningful spectrum comes with its reason."""
    for info in infos:
        try:
            w = source.load(info.name)
        except AlphaLoRAError as exc:
            yield info, None, str(exc)
            continue
        finite, all_zero = _screen(w)
        problem = check_matrix(tuple(w.shape), finite, all_zero=all_zero)
        yield (info, None, problem.reason) if problem else (info, w, None)


def _screen(w: torch.Tensor) -> tuple[bool, bool]:
    """(finite, all zero) in one cheap pass: a nonzero finite norm settles both. Only when the
    norm is NaN/Inf or 0 (which overflow or underflow can also produce) are the elements
    checked one by one. Measured 30× cheaper than ``isfinite().all()`` plus ``any()``."""
    norm = float(torch.linalg.vector_norm(w))
    if math.isfinite(norm) and norm > 0.0:
        return True, False
    finite = bool(torch.isfinite(w).all())
    return finite, finite and not bool(w.any())


def _solve_cost(w: torch.Tensor) -> int:
    """Bytes one eigen-solve of ``w`` holds: the matrix, a float64 Gram of the small side
    and the solver's workspace of the same size, and one float64 block of rows."""
    k = min(w.shape)
    return w.numel() * w.element_size() + 2 * k * k * 8 + min(64 * 2**20, w.numel() * 8)


def _spectra_cpu(
    items: Iterator[tuple[MatrixInfo, torch.Tensor | None, str | None]],
    dtype: torch.dtype,
    workers: int,
    budget_bytes: int = 640 * 2**20,
) -> Iterator[tuple[MatrixInfo, np.ndarray | None, str | None]]:
    """Eigenvalues on the CPU: independent matrices solved in parallel threads (torch and
    numpy's LAPACK release the GIL), each solver single-threaded. At most ``2·workers``
    matrices, and at most ``budget_bytes`` of solver memory (but always one), are in flight at
    a time: small matrices run in parallel, a few huge ones one after the other. A matrix
    wider than ``spectra.SINGLE_THREAD_MAX_SIDE`` on both sides is solved alone with every
    core's thread instead (measured 1.5× faster on 2 cores for a 4096-wide Gram matrix)."""
    cpu = torch.device("cpu")
    with cpu_threads(1), ThreadPoolExecutor(max_workers=workers) as pool:
        window: deque[tuple[MatrixInfo, Future | None, str | None, int]] = deque()
        held = 0
        for info, w, problem in items:
            size = 0 if w is None else _solve_cost(w)
            alone = w is not None and workers > 1 and min(w.shape) > spectra.SINGLE_THREAD_MAX_SIDE
            while window and (alone or len(window) >= 2 * workers or held + size > budget_bytes):
                i, f, p, n = window.popleft()
                held -= n
                yield i, (f.result() if f else None), p
            if alone:
                with cpu_threads(workers):
                    eigs = eigenvalues(w, dtype=dtype, device=cpu)
                del w
                yield info, eigs, None
                continue
            fut = None if w is None else pool.submit(eigenvalues, w, dtype=dtype, device=cpu)
            window.append((info, fut, problem, size))
            held += size
            del w
        while window:
            i, f, p, _ = window.popleft()
            yield i, (f.result() if f else None), p


def _spectra_gpu(
    items: Iterator[tuple[MatrixInfo, torch.Tensor | None, str | None]],
    dtype: torch.dtype,
    device: torch.device,
    batch_bytes: int = 512 * 2**20,
) -> Iterator[tuple[MatrixInfo, np.ndarray | None, str | None]]:
    """Eigenvalues on a GPU: consecutive same-shaped matrices are stacked into one batched
    solve (bounded to ``batch_bytes``), the rest one by one."""
    pending: list[tuple[MatrixInfo, torch.Tensor]] = []

    def flush() -> Iterator[tuple[MatrixInfo, np.ndarray | None, str | None]]:
        mats = [w for _, w in pending]
        eigs_list = eigenvalues_batched(mats, dtype=dtype, device=device)
        yield from ((info, eigs, None) for (info, _), eigs in zip(pending, eigs_list, strict=True))
        pending.clear()

    for info, w, problem in items:
        if w is None:
            yield from flush()
            yield info, None, problem
            continue
        if pending and (
            tuple(pending[0][1].shape) != tuple(w.shape)
            or (len(pending) + 1) * w.numel() * 8 > batch_bytes
        ):
            yield from flush()
        pending.append((info, w))
    yield from flush()


def _spectra(
    source: ModelSource,
    infos: list[MatrixInfo],
    opts: AnalysisOptions,
    device: torch.device,
    progress: ProgressFn | None,
) -> Iterator[tuple[MatrixInfo, np.ndarray | None, str | None]]:
    """Yield (info, eigenvalues or None, problem) per matrix, in order, streaming from the
    source so that only a few matrices are in memory at any time."""
    dtype = torch.float64 if opts.precision == "float64" else torch.float32
    items = _loaded(source, infos)
    if device.type == "cuda":
        results = _spectra_gpu(items, dtype, device)
    else:
        results = _spectra_cpu(items, dtype, opts.workers or default_workers())
    for done, row in enumerate(results, start=1):
        if progress:
            progress(done, len(infos), row[0].name)
        yield row


def default_workers() -> int:
    """Parallel eigen-solvers on the CPU: one per core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def analyze(
    ref: str | Path | ModelSource,
    options: AnalysisOptions | None = None,
    *,
    progress: ProgressFn | None = None,
    use_cache: bool = True,
    keep_eigenvalues: bool = True,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    verify_cache: bool = False,
) -> AnalysisResult:
    """Analyse every 2-D block matrix of a model (hub id, folder, file or ``"embedded"``).

    Returns per-matrix and per-layer DataFrames. Matrices that cannot be fitted (NaN/Inf,
    all zeros, a single row) get NaN metrics and a ``warning``; the rest completes. A cached
    result is reused when the weight files' fingerprint, size, mtime and inode match;
    ``verify_cache`` also hashes every byte of the weights and reuses only an entry made from
    the same bytes.
    """
    opts = options or AnalysisOptions()
    opts.validate()
    source = (
        ref
        if isinstance(ref, ModelSource)
        else open_source(ref, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    )
    device = resolve_device(opts.device)
    fingerprint = source.fingerprint()
    cache_path = subdir("analyses") / cache_key(fingerprint, opts, source.stat_guard())
    content_hash = source.content_hash() if use_cache and verify_cache else None
    if use_cache and cache_path.exists():
        cached = load_cached(
            cache_path, str(source.ref), opts, fingerprint, content_hash=content_hash
        )
        if cached is not None:
            if progress:
                n = len(cached.matrices)
                progress(n, n, "loaded from cache")
            return cached

    infos = sorted(source.matrices(include_non_block=opts.include_non_block), key=_matrix_order)
    if not infos:
        raise AlphaLoRAError(
            f"{source.ref}: no 2-D weight matrices found, so there is nothing to analyse. "
            "Check that the path points at a model checkpoint."
        )
    start = time.perf_counter()
    spectra = list(_spectra(source, infos, opts, device, progress))
    fitted = iter(_fits([e for _, e, _ in spectra if e is not None], opts, device))
    rows = [
        matrix_row(info, eigs, opts, problem, next(fitted) if eigs is not None else None)
        for info, eigs, problem in spectra
    ]
    eigs_by_name: dict[str, np.ndarray] = {}
    if keep_eigenvalues:
        for info, eigs, _ in spectra:
            if eigs is not None:
                eigs_by_name[info.name] = eigs.astype(np.float32) if eigs.size > 4096 else eigs
    matrices = pd.DataFrame(rows, columns=MATRIX_COLUMNS)
    matrices["layer"] = matrices["layer"].astype("Int64")
    result = AnalysisResult(
        ref=str(source.ref), model=source.describe(), options=opts, matrices=matrices,
        layers=layer_table(matrices), eigenvalues=eigs_by_name, fingerprint=fingerprint,
        elapsed_s=time.perf_counter() - start, device=str(device), cache_dir=cache_path,
    )  # fmt: skip
    if use_cache and keep_eigenvalues:
        try:
            save_cache(cache_path, result, content_hash)
        except OSError as exc:  # the analysis itself is still good: report, do not lose it
            result.cache_dir = None
            result.model = {**result.model, "cache_error": str(exc)}
    return result


def layer_alphas(
    ref: str | Path,
    fit: str = "hill-peak",
    device: str = "auto",
    *,
    progress: ProgressFn | None = None,
    layer_score: str | None = None,
    exclude_unreliable: bool = False,
) -> list[float]:
    """Per-layer mean alpha of a model (cached), the input of the AlphaLoRA allocation; or
    another layer score (median, trimmed mean, reliable fits only), see ``layer_scores``."""
    result = analyze(ref, AnalysisOptions(fit=fit, device=device), progress=progress)
    if (layer_score or "mean") != "mean" or exclude_unreliable:
        from alphalora.spectral.layer_scores import layer_scores

        return layer_scores(result.matrices, layer_score, exclude_unreliable)
    alphas = result.layer_alphas
    bad = [i for i, a in enumerate(alphas) if not np.isfinite(a)]
    if bad:
        raise AlphaLoRAError(
            f"Layers {bad} have no valid alpha (every matrix failed to fit); cannot allocate."
        )
    return alphas


TABLE_SUFFIXES = (".csv", ".json", ".parquet")


def export_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a table to CSV, JSON (records) or Parquet, chosen by the file's suffix."""
    path = check_output_file(path, TABLE_SUFFIXES, what="table")
    suffix = path.suffix.lower()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".csv":
            df.to_csv(tmp, index=False)
        elif suffix == ".json":
            df.to_json(tmp, orient="records", indent=1)
        else:
            df.to_parquet(tmp, index=False)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc, "table") from exc
    return path
