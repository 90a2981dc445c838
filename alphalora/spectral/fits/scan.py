"""The pruned KS scan of one spectrum: the candidate xmin with the smallest KS distance D.

D is exact, but a cheap lower bound (the KS terms at a few tail points: a subset of the terms
whose maximum is D) ranks the candidates; the most promising get their exact D, the positions
where their maxima fell sharpen the bounds of the rest, and the scan stops once every bound
exceeds the best D.
"""

from __future__ import annotations

import numpy as np

_BLOCK = 1 << 18  # elements per 2-D work block (a few MB of float64 temporaries)
# Lower bound on D: the KS terms at tail offsets max(floor(frac·last), min) — the 2 points after
# xmin, then 1/3, 2/3 and the end of the tail. On SmolLM2's spectra this did ~3x less work than
# 32 points (fewer bound terms, about as few exact scans); the answer never depends on it.
_LB_FRAC = np.array([0.0, 0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0])[:, None]
_LB_MIN = np.array([1, 2, 0, 0, 0])[:, None]
_FIRST_EXACT = 8  # candidates scored exactly in the first round (doubling after)
_SMALL = 4096  # below this many KS terms in all, computing every D is cheaper than bounding
SLACK = 1e-12  # absolute margin on D (in [0, 1]) before a bound may discard a candidate


class KSProblem:
    """One spectrum prepared for KS scans: sorted ``x``, its evaluation points and CDF steps.

    ``ev`` lists the indices where the empirical CDF is evaluated (None: every index). Arrays
    are laid out [tail point, candidate] so that the max runs across contiguous rows.
    """

    def __init__(self, x: np.ndarray, ev: np.ndarray | None, clauset: bool) -> None:
        self.x, self.ev, self.clauset = x, ev, clauset
        self.total = x.size if ev is None else ev.size  # number of evaluation points
        # clauset: powerlaw's empirical CDF k/N of the whole sample (renormalised per xmin)
        self.steps = np.arange(x.size) / x.size if clauset else None

    def terms_max(
        self, cpos: np.ndarray, alpha: np.ndarray, offs: np.ndarray, where: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """max over t of |P − S| at evaluation points ``ev[cpos + offs[t]]``, per candidate,
        and (``where``) the evaluation-point position of each maximum.

        Offsets past the end are clamped to the last point, which belongs to every tail, so
        they repeat a genuine term; offset 0 is xmin itself (a zero term). Bounds and exact
        scans share this arithmetic, hence a bound never exceeds the exact D.
        """
        x, ev = self.x, self.ev
        pos = np.minimum(offs + cpos[None, :], self.total - 1)  # [T, C]
        if ev is None:  # hill-peak: (k − i) / n with n = N − i, i.e. k/n for k = 0..n−1
            k, i = pos, cpos
            emp = np.subtract(k, i, dtype=np.float64)
            emp /= x.size - i
        else:  # clauset: (k/N − i/N) / (1 − i/N), as powerlaw renormalises its CDF
            k, i = ev[pos], ev[cpos]
            si = self.steps[i]
            emp = self.steps[k]
            emp -= si
            emp /= 1.0 - si
        r = x[k]  # callers run under np.errstate(all="ignore")
        r /= x[i]
        np.power(r, 1.0 - alpha, out=r)
        np.subtract(1.0, r, out=r)
        r -= emp
        np.abs(r, out=r)
        if not where:
            return r.max(axis=0), None
        row = r.argmax(axis=0)
        cols = np.arange(r.shape[1])
        return r[row, cols], pos[row, cols]

    def exact(self, cpos: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact KS distance of each candidate (all its evaluation points) and the position
        of its maximum, in bounded blocks."""
        cols = max(1, _BLOCK // max(self.total - int(cpos.min(initial=self.total)), 1))
        if cpos.size <= cols:  # one block (the usual case)
            width = self.total - int(cpos.min(initial=self.total))
            return self.terms_max(cpos, alpha, np.arange(width)[:, None], True)  # type: ignore[return-value]
        d = np.empty(cpos.size)
        at = np.empty(cpos.size, dtype=np.int64)
        for s in range(0, cpos.size, cols):
            sl = slice(s, s + cols)
            width = self.total - int(cpos[sl].min())
            d[sl], at[sl] = self.terms_max(cpos[sl], alpha[sl], np.arange(width)[:, None], True)
        return d, at

    def lower_bound(self, cpos: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """A lower bound on each candidate's D: its KS terms at the 2 tail points after xmin
        and at 1/3, 2/3 and the end of its tail (a subset of the terms whose maximum is D)."""
        last = (self.total - 1 - cpos)[None, :]  # offset of the last point of each tail (≥ 1)
        offs = np.maximum((_LB_FRAC * last).astype(np.int64), _LB_MIN)  # clamped in terms_max
        cols = max(1, _BLOCK // offs.shape[0])
        if cpos.size <= cols:
            return self.terms_max(cpos, alpha, offs)[0]
        out = np.empty(cpos.size)
        for s in range(0, cpos.size, cols):
            sl = slice(s, s + cols)
            out[sl] = self.terms_max(cpos[sl], alpha[sl], offs[:, sl])[0]
        return out


def scan_candidates(
    prob: KSProblem, cpos: np.ndarray, alpha: np.ndarray, prune: bool = True
) -> tuple[int, float]:
    """(index into ``cpos``, D) of the first candidate with the smallest D; (-1, nan) if none.

    Hill-peak candidates with α ≤ 1 count as D = 1 (never better than a real fit). With
    ``prune``: a cheap lower bound on every D first; then, in rounds, the most promising
    candidates get their exact D, and the positions where their KS maximum fell sharpen the
    bounds of the rest (neighbouring xmins peak at nearly the same eigenvalue), until every
    remaining bound exceeds the best exact D. A candidate is dropped only when its bound
    exceeds that D by more than ``SLACK``, so ties (the first index wins, as in powerlaw and
    the reference loop) are decided on exact values.
    """
    with np.errstate(all="ignore"):  # overflow/underflow in the power are meaningful limits
        return _scan_inner(prob, cpos, alpha, prune)


def _scan_inner(
    prob: KSProblem, cpos: np.ndarray, alpha: np.ndarray, prune: bool
) -> tuple[int, float]:
    if prob.clauset or alpha.min() > 1.0:  # always so for finite positive spectra
        usable, cp, al = None, cpos, alpha
    else:
        usable = np.flatnonzero(alpha > 1.0)
        if usable.size == 0:
            return -1, float("nan")
        cp, al = cpos[usable], alpha[usable]
    w, d = _best(prob, cp, al, prune)
    return (w if usable is None else int(usable[w])), d


def _best(prob: KSProblem, cp: np.ndarray, al: np.ndarray, prune: bool) -> tuple[int, float]:
    if not prune or cp.size * (prob.total - int(cp.min())) <= _SMALL:
        d = prob.exact(cp, al)[0]
        w = int(np.argmin(d))
        return w, float(d[w])
    lb = prob.lower_bound(cp, al)  # +inf once a candidate has its exact D
    best_d, best = np.inf, -1
    batch = _FIRST_EXACT
    cols_max = max(_FIRST_EXACT, _BLOCK // max(prob.total - int(cp.min()), 1))
    alive = np.arange(cp.size)
    while alive.size:
        take = alive[np.argsort(lb[alive], kind="stable")[:batch]]
        d, at = prob.exact(cp[take], al[take])
        lb[take] = np.inf
        for j, dj in zip(take.tolist(), d.tolist(), strict=True):
            if dj < best_d or (dj == best_d and j < best):
                best_d, best = dj, j
        alive = np.flatnonzero(lb <= best_d + SLACK)
        if alive.size * (prob.total - int(cp[alive].min(initial=prob.total))) <= _SMALL:
            batch = max(batch, alive.size)  # few left: scoring them beats sharpening bounds
            continue
        if alive.size:  # sharpen: the KS terms of the survivors where the scored ones peaked
            offs = np.maximum(at[:, None] - cp[alive][None, :], 0)
            lb[alive] = np.maximum(lb[alive], prob.terms_max(cp[alive], al[alive], offs)[0])
            alive = alive[lb[alive] <= best_d + SLACK]
        batch = min(batch * 2, cols_max)
    return best, best_d
