"""The pruned KS scan of many spectra at once: a [B, N] stack of equal-length sorted spectra
(:class:`RowStack`) and the scan of all its rows together (:func:`scan_rows`).

The pruning of :mod:`alphalora.spectral.fits.scan` as 2-D array operations, computed with the
same element-wise arithmetic as the single scan (same operations, same order), hence the same
bits, the same winners and the same tie rule.
"""

from __future__ import annotations

import numpy as np

from alphalora.spectral.fits.scan import SLACK

_PAIR_BLOCK = 1 << 16  # KS terms per work block: 512 KB temporaries stay in cache and get reused
_FIRST_EXACT_BATCH = 4  # candidates per row scored exactly in the first round, then ×_GROW
_GROW = 2  # growth of the candidates scored per row and round


def _ks_terms(r: np.ndarray, xmin: np.ndarray, expo: np.ndarray, emp: np.ndarray) -> np.ndarray:
    """|1 − (λ/xmin)^(1−α) − S| in place over ``r`` = λ, with :meth:`KSProblem.terms_max`'s
    operations in its order (hence its bits); ``expo`` = 1 − α. Callers ignore FP errors."""
    r /= xmin
    np.power(r, expo, out=r)
    np.subtract(1.0, r, out=r)
    r -= emp
    np.abs(r, out=r)
    return r


class RowStack:
    """A [B, N] stack of sorted positive spectra and the KS terms of (row, candidate) pairs.

    ``clauset`` rows must have no ties: their evaluation points are then every index. Each
    row is padded with N copies of its largest value, so that the tail of any candidate, cut
    or padded to a common width, is one slice of a sliding window (padding repeats the last
    point, a genuine term, as the single fit's clamped offsets do).
    """

    def __init__(self, xs: np.ndarray, clauset: bool) -> None:
        self.size = size = int(xs.shape[1])
        self.xs = np.ascontiguousarray(xs)
        self.flat = self.xs.ravel()
        self.clauset = clauset
        self.pad = np.concatenate([self.xs, np.repeat(self.xs[:, -1:], size, axis=1)], axis=1)
        steps = np.arange(size) / size  # clauset: powerlaw's empirical CDF k/N
        self.steps_pad = np.concatenate([steps, np.full(size, steps[-1])])

    def terms_max(
        self, rows: np.ndarray, i: np.ndarray, alpha: np.ndarray, pos: np.ndarray
    ) -> np.ndarray:
        """Largest KS term of each pair (xmin = x[row, i]) over its positions ``pos`` [T, P]
        (each in [i, N − 1]), in bounded blocks; laid out [T, P] so that numpy's inner loops
        run along the pairs."""
        out = np.empty(rows.size)
        per = max(1, _PAIR_BLOCK // max(pos.shape[0], 1))
        size = self.size
        for s in range(0, rows.size, per):
            sl = slice(s, s + per)
            ii, k = i[sl], pos[:, sl]
            base = rows[sl] * size
            r = self.flat[k + base]
            if self.clauset:  # (k/N − i/N) / (1 − i/N)
                si = ii / size
                emp = k / size
                emp -= si
                emp /= 1.0 - si
            else:  # (k − i) / (N − i), integers converted exactly
                emp = (k - ii).astype(np.float64)
                emp /= (size - ii).astype(np.float64)
            out[sl] = _ks_terms(r, self.flat[base + ii], 1.0 - alpha[sl], emp).max(axis=0)
        return out

    def lower_bound(self, rows: np.ndarray, i: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """A lower bound on D: the KS term a third of the way along the tail. One term ranks
        the candidates about as well as the single fit's five (measured on SmolLM2's
        spectra, where it was the fastest choice), and sharpening does the rest."""
        return self.terms_max(rows, i, alpha, (i + (self.size - 1 - i) // 3)[None, :])

    @staticmethod
    def _windows(a: np.ndarray, width: int) -> np.ndarray:
        """Read-only view of every ``width``-long window along the last axis of ``a`` (what
        ``sliding_window_view`` gives, without its per-call overhead)."""
        shape = (*a.shape[:-1], a.shape[-1] - width + 1, width)
        step = a.strides[-1]
        view = np.ndarray(shape, a.dtype, a, 0, (*a.strides[:-1], step, step))
        view.flags.writeable = False
        return view

    def _tails(self, rows: np.ndarray, i: np.ndarray, alpha: np.ndarray, width: int):
        """KS terms of each pair at its first ``width`` tail points (padded past the end)."""
        size = self.size
        win = self._windows(self.pad, width)
        r = win[rows, i]  # a copy: [P, width]
        if self.clauset:
            si = i / size
            emp = self._windows(self.steps_pad, width)[i]
            emp -= si[:, None]
            emp /= (1.0 - si)[:, None]
        else:  # t / n, and past the end of the tail (n − 1) / n: division is monotone
            n = (size - i).astype(np.float64)[:, None]  # float operands: no casting loops
            emp = np.arange(width, dtype=np.float64) / n
            np.minimum(emp, (n - 1.0) / n, out=emp)
        return _ks_terms(r, self.flat[rows * size + i][:, None], (1.0 - alpha)[:, None], emp)

    def exact(
        self, rows: np.ndarray, i: np.ndarray, alpha: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact D of each pair (all its tail points) and the position of its maximum.

        Pairs are taken longest tail first, in blocks of about ``_PAIR_BLOCK`` terms.
        """
        d = np.empty(rows.size)
        at = np.empty(rows.size, dtype=np.int64)
        order = np.argsort(i, kind="stable")
        tails = self.size - i[order]
        s = 0
        while s < order.size:
            width = int(tails[s])
            e = min(order.size, s + max(1, _PAIR_BLOCK // width))
            sel = order[s:e]
            r = self._tails(rows[sel], i[sel], alpha[sel], width)
            top = r.argmax(axis=1)
            d[sel] = r[np.arange(sel.size), top]
            at[sel] = np.minimum(i[sel] + top, self.size - 1)
            s = e
        return d, at


def scan_rows(
    rows: RowStack, cp: np.ndarray, alpha: np.ndarray, ok: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (column of the first smallest exact D among the candidates marked ``ok``, D);
    (-1, inf) for a row without one.

    ``cp`` [B, C] holds candidate indices increasing along each row, ``alpha`` their α. The
    pruning of ``scan._best``, for all rows at once: lower bounds, then rounds in which each row
    scores its most promising candidates exactly, sharpens the bounds of the rest where those
    peaked, and drops every candidate whose bound exceeds its best D by more than ``SLACK``.
    """
    with np.errstate(all="ignore"):  # overflow/underflow in the power are meaningful limits
        return _scan_rows_inner(rows, cp, alpha, ok)


def _scan_rows_inner(
    rows: RowStack, cp: np.ndarray, alpha: np.ndarray, ok: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    nrow, ncol = cp.shape
    size = rows.size
    alive = ok.copy()
    lb = np.full((nrow, ncol), np.inf)
    r0, c0 = np.nonzero(alive)
    lb[r0, c0] = rows.lower_bound(r0, cp[r0, c0], alpha[r0, c0])
    best_d = np.full(nrow, np.inf)
    best = np.full(nrow, -1, dtype=np.int64)
    m = _FIRST_EXACT_BATCH  # candidates per row scored this round (the same for every row)
    while True:
        act = np.flatnonzero(alive.any(axis=1))
        if act.size == 0:
            return best, best_d
        live = alive[act]
        if m >= ncol:
            order = np.broadcast_to(np.arange(ncol), live.shape)
        else:  # the m smallest bounds of each row, in no particular order
            order = np.argpartition(np.where(live, lb[act], np.inf), m - 1, axis=1)[:, :m]
        sel = np.take_along_axis(live, order, axis=1)
        pl, pj = np.nonzero(sel)
        prow, pcol = act[pl], order[pl, pj]
        d, at = rows.exact(prow, cp[prow, pcol], alpha[prow, pcol])
        alive[prow, pcol] = False
        dm = np.full(sel.shape, np.inf)
        dm[pl, pj] = d
        dmin = dm.min(axis=1)
        cmin = np.where(dm == dmin[:, None], order, ncol).min(axis=1)  # first column on ties
        old_d, old = best_d[act], best[act]
        better = (dmin < old_d) | ((dmin == old_d) & (cmin < old))
        best_d[act] = np.where(better, dmin, old_d)
        best[act] = np.where(better, cmin, old)
        # survivors: bound within reach of the row's best D, then sharpened where the
        # candidates scored this round peaked (neighbouring xmins peak at nearly the same λ)
        limit = best_d[act] + SLACK
        keep = alive[act] & (lb[act] <= limit[:, None])
        ql, qc = np.nonzero(keep)
        if ql.size:
            peaks = np.full(sel.shape, size - 1)
            peaks[pl, pj] = at
            per = max(1, _PAIR_BLOCK // peaks.shape[1])  # bounded [m, pairs] position blocks
            for s in range(0, ql.size, per):
                bl, bc = ql[s : s + per], qc[s : s + per]
                brow, bi = act[bl], cp[act[bl], bc]
                pos = np.maximum(peaks[bl].T, bi)
                sharp = rows.terms_max(brow, bi, alpha[brow, bc], pos)
                lb[brow, bc] = np.maximum(lb[brow, bc], sharp)
                keep[bl, bc] = lb[brow, bc] <= limit[bl]
        alive[act] = keep
        m *= _GROW
