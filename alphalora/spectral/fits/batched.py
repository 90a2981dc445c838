"""``fit_many``'s numpy engine: spectra of equal length fitted as [B, N] stacks of rows.

Spectra of equal length are stacked into a [B, N] array and fitted with one set of 2-D array
operations per step, so numpy's per-call overhead (most of a ~100 µs single fit at N ≈ 500)
is paid once per batch instead of once per spectrum. Every number is computed with the same
element-wise arithmetic as in the single fits (same operations, same order), hence the same
bits, the same winners and the same tie rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from alphalora.spectral.fits.batch_scan import RowStack, scan_rows
from alphalora.spectral.fits.clauset import finish_clauset, fit_clauset
from alphalora.spectral.fits.hill import ALPHA_LE_1, empty_window, fit_hill_peak
from alphalora.spectral.fits.prepare import as_vector, candidate_alphas
from alphalora.spectral.fits.result import PowerLawFit, no_fit

_ROW_BLOCK = 1 << 15  # values per stack of spectra handled at once (B·N)


def _row_histograms(lg: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``numpy.histogram(row, bins)`` of every sorted row of ``lg`` [B, N]: (edges, counts),
    with the edges computed as in :func:`hill_window` and the same counts, bit for bit."""
    nrow, size = lg.shape
    first, last = lg[:, 0].copy(), lg[:, -1].copy()
    same = first == last  # distinct values, equal logs: widen as numpy.histogram does
    first[same] -= 0.5
    last[same] += 0.5
    step = (last - first) / bins
    edges = np.arange(bins + 1) * step[:, None]
    edges += first[:, None]
    edges[:, -1] = last
    # numpy.histogram's counts are differences of at[e] = #{values < edges[e]} (at[bins] = N).
    # Guess each value's bin from the bin width (sorted values give sorted guesses), then move
    # each at[e] until lg[at − 1] < edges[e] <= lg[at], the exact comparisons.
    guess = lg - first[:, None]
    guess /= step[:, None]
    np.fmax(guess, 0.0, out=guess)  # also NaN (a zero step) to 0: any guess converges below
    np.fmin(guess, bins - 1.0, out=guess)
    bin_of = guess.astype(np.int64)  # ≥ 0: truncation is the floor
    bin_of += np.arange(nrow)[:, None] * bins
    at = np.zeros((nrow, bins + 1), dtype=np.int64)
    np.cumsum(
        np.bincount(bin_of.ravel(), minlength=nrow * bins).reshape(nrow, bins),
        axis=1,
        out=at[:, 1:],
    )
    inner, lg_flat = at[:, 1:-1], lg.ravel()
    row0 = np.arange(nrow)[:, None] * size
    while True:
        down = (inner > 0) & (lg_flat[row0 + np.maximum(inner - 1, 0)] >= edges[:, 1:-1])
        up = (inner < size) & (lg_flat[row0 + np.minimum(inner, size - 1)] < edges[:, 1:-1])
        if not (down.any() or up.any()):
            break
        inner -= down
        inner += up
    return edges, np.diff(at, axis=1)


def _hill_rows(xs: np.ndarray, bins: int, log10_quirk: bool) -> list[PowerLawFit]:
    """Hill-peak fits of a [B, N] stack of sorted positive spectra, each with x[0] < x[-1].

    The same steps as :func:`fit_hill_peak` (histogram, peak, window, α, pruned KS scan) as
    2-D array operations.
    """
    nrow, size = xs.shape
    edges, counts = _row_histograms(np.log10(xs), bins)
    at_peak = edges[np.arange(nrow), counts.argmax(axis=1)].tolist()
    # scalar pow and log10, exactly as the single fit takes them (numpy's vectorised
    # versions may differ in the last bit)
    peak = np.array([10.0**e for e in at_peak])
    if log10_quirk:
        lo = np.array([float(np.log10(0.95 * p)) for p in peak.tolist()])
    else:
        lo = 0.95 * peak
    hi = 1.5 * peak
    start = np.count_nonzero(xs < lo[:, None], axis=1)
    stop = np.minimum(np.count_nonzero(xs <= hi[:, None], axis=1), size - 1)
    ncand = np.maximum(stop - start, 0)

    out: list[PowerLawFit | None] = [None] * nrow
    for r in np.flatnonzero(ncand == 0).tolist():
        out[r] = empty_window(size, float(lo[r]), float(hi[r]), float(peak[r]))
    sub = np.flatnonzero(ncand > 0)
    if sub.size:
        cols = np.arange(int(ncand[sub].max()))
        valid = cols < ncand[sub, None]
        cp = np.where(valid, start[sub, None] + cols, start[sub, None])
        alpha = np.take_along_axis(candidate_alphas(xs[sub]), cp, axis=1)
        ok = valid & (alpha > 1.0)
        best, d = scan_rows(RowStack(xs[sub], clauset=False), cp, alpha, ok)
        k = np.arange(sub.size)
        w = np.maximum(best, 0)
        i = cp[k, w]
        values = zip(
            sub.tolist(),
            best.tolist(),
            alpha[k, w].tolist(),
            xs[sub, i].tolist(),
            d.tolist(),
            (size - i).tolist(),
            peak[sub].tolist(),
            strict=True,
        )
        for r, won, a, xmin, dist, n_tail, pk in values:
            if won < 0:
                out[r] = no_fit("hill-peak", size, ALPHA_LE_1, peak=pk)
            else:
                out[r] = PowerLawFit(a, xmin, dist, n_tail, size, "hill-peak", peak=pk)
    return [o for o in out if o is not None]


def _clauset_rows(xs: np.ndarray) -> list[PowerLawFit]:
    """Clauset fits of a [B, N] stack of sorted positive spectra without ties (every value is
    a candidate but the largest), finished exactly as :func:`fit_clauset` does."""
    nrow, size = xs.shape
    alpha = candidate_alphas(xs)[:, :-1]
    cp = np.broadcast_to(np.arange(size - 1), alpha.shape)
    best, _ = scan_rows(RowStack(xs, clauset=True), cp, alpha, np.ones(alpha.shape, dtype=bool))
    return [finish_clauset(xs[r], w, ties=False) for r, w in enumerate(best.tolist())]


def fit_many_numpy(
    eigs_list: Sequence[Any], mode: str, bins: int, log10_quirk: bool, min_batch: int
) -> list[PowerLawFit]:
    """``fit_many``'s numpy engine: spectra grouped by their length once values ≤ 0 are
    dropped, each group fitted as stacks of rows; spectra with nothing to fit (or, for clauset,
    with ties) and groups smaller than ``min_batch`` go through the single fits."""

    def single(x: np.ndarray) -> PowerLawFit:
        if mode == "clauset":
            return fit_clauset(x)
        return fit_hill_peak(x, bins=bins, log10_quirk=log10_quirk)

    out: list[PowerLawFit | None] = [None] * len(eigs_list)
    vecs = [as_vector(e) for e in eigs_list]
    by_size: dict[int, list[int]] = {}
    for j, x in enumerate(vecs):
        by_size.setdefault(x.size, []).append(j)
    # stacks of sorted positive rows by their length once λ ≤ 0 are dropped
    groups: dict[int, list[tuple[list[int], np.ndarray]]] = {}
    for size, idx in by_size.items():
        if size < 2:
            for j in idx:
                out[j] = single(vecs[j])
            continue
        xs = np.stack([vecs[j] for j in idx])
        xs.sort(axis=1)
        broken = ~np.isfinite(xs).all(axis=1)
        dropped = np.count_nonzero(xs <= 0, axis=1)
        if not (broken.any() or dropped.any()):  # the usual case: the stack as it is
            groups.setdefault(size, []).append((idx, xs))
            continue
        for r, j in enumerate(idx):
            if broken[r]:
                out[j] = single(vecs[j])
            else:
                d = int(dropped[r])
                groups.setdefault(size - d, []).append(([j], xs[r : r + 1, d:]))
    for size, pieces in groups.items():
        idx = [j for p in pieces for j in p[0]]
        xs = pieces[0][1] if len(pieces) == 1 else np.concatenate([p[1] for p in pieces])
        usable = np.zeros(len(idx), dtype=bool)
        if size >= 2:
            usable = xs[:, 0] < xs[:, -1]
            if mode == "clauset":
                usable &= ~(xs[:, 1:] == xs[:, :-1]).any(axis=1)
        rows = np.flatnonzero(usable)
        if rows.size < min_batch:
            rows = rows[:0]
        usable[:] = False
        usable[rows] = True
        for r in np.flatnonzero(~usable).tolist():
            out[idx[r]] = single(xs[r])
        per = max(1, _ROW_BLOCK // max(size, 1))
        for s in range(0, rows.size, per):
            part = rows[s : s + per]
            if mode == "clauset":
                fits = _clauset_rows(xs[part])
            else:
                fits = _hill_rows(xs[part], bins, log10_quirk)
            for r, f in zip(part.tolist(), fits, strict=True):
                out[idx[r]] = f
    return [o for o in out if o is not None]
