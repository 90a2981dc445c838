"""Continuous power-law fits of eigenvalue tails (METHOD §3), exact and vectorised.

For sorted λ_1 ≤ … ≤ λ_N and a candidate xmin = λ_i with n = N − i + 1 tail points:
α_i = 1 + n / Σ_{j≥i} ln(λ_j/λ_i) and D_i = max |S − P| with P(λ) = 1 − (λ/λ_i)^(1−α_i).
The candidate with the smallest D wins (the first one on ties). Two modes:

* ``hill-peak``: AlphaLoRA's ``PL_Alpha_Hill`` (TempBalance/AlphaPruning lineage). Candidates are
  the λ_i (never the largest) inside a window around the peak of the log10-histogram; S is the
  empirical CDF k/n at every tail point; α ≤ 1 keeps D = 1. Values λ ≤ 0 are dropped first
  (log10 needs λ > 0; exact zeros come from rank-deficient matrices).
* ``clauset``: Clauset–Shalizi–Newman as implemented by ``powerlaw`` 1.5: candidates are the
  unique values except the largest and S is evaluated once per unique value (left of each step).
  Equal to ``powerlaw.Fit(x).power_law.alpha / .xmin / .D`` (bit for bit on every spectrum
  tested; the contract is 1e-6). Like powerlaw, λ ≤ 0 are dropped (powerlaw drops them when
  an exact 0 is present; negatives without a 0 it keeps, but they never change its answer).

Speed: α for every candidate comes from one reverse cumulative sum (O(N)). D is exact, but a
cheap lower bound (the KS terms at a few tail points: a subset of the terms whose maximum is D)
ranks the candidates; the most promising get their exact D, the positions where their maxima
fell sharpen the bounds of the rest, and the scan stops once every bound exceeds the best D.
``fit_many`` stacks spectra of equal length and runs the same pruned scan on all rows at
once in numpy (on a CPU: ~100 µs of numpy call overhead per single fit becomes a share of one
batch), or brute-force scans batched in torch on a GPU.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alphalora.errors import AlphaLoRAError

MODES = ("hill-peak", "clauset", "powerlaw")
_BLOCK = 1 << 18  # elements per 2-D work block (a few MB of float64 temporaries)
# Lower bound on D: the KS terms at tail offsets max(floor(frac·last), min) — the 2 points after
# xmin, then 1/3, 2/3 and the end of the tail. On SmolLM2's spectra this did ~3x less work than
# 32 points (fewer bound terms, about as few exact scans); the answer never depends on it.
_LB_FRAC = np.array([0.0, 0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0])[:, None]
_LB_MIN = np.array([1, 2, 0, 0, 0])[:, None]
_FIRST_EXACT = 8  # candidates scored exactly in the first round (doubling after)
_SMALL = 4096  # below this many KS terms in all, computing every D is cheaper than bounding
_SLACK = 1e-12  # absolute margin on D (in [0, 1]) before a bound may discard a candidate


@dataclass(frozen=True)
class PowerLawFit:
    """Result of one fit. ``reason`` is set (and ``alpha`` NaN) when no fit was possible.

    ``n`` counts the positive eigenvalues used; ``n_tail`` the tail points, xmin included (for
    hill-peak N − i from the candidate's own index, as the reference counts when xmin is tied);
    ``peak`` is the hill-peak histogram peak in linear units (None for other modes).
    """

    alpha: float
    xmin: float
    D: float
    n_tail: int
    n: int
    mode: str
    peak: float | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True when a fit was made (no ``reason``)."""
        return self.reason is None


def _no_fit(mode: str, n: int, reason: str, peak: float | None = None) -> PowerLawFit:
    nan = float("nan")
    return PowerLawFit(nan, nan, nan, 0, n, mode, peak=peak, reason=reason)


def _vector(eigs: Any) -> np.ndarray:
    """``eigs`` (array-like or torch tensor) as a 1-D float64 array, unsorted and unfiltered."""
    if hasattr(eigs, "detach"):  # a torch tensor, possibly on a GPU
        eigs = eigs.detach().to("cpu").double().numpy()
    try:
        x = np.asarray(eigs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise AlphaLoRAError(
            f"Eigenvalues must be numbers; could not convert {type(eigs).__name__}: {exc}"
        ) from exc
    if x.ndim == 0:
        x = x.reshape(1)
    if x.ndim != 1:
        raise AlphaLoRAError(f"Expected a 1-D array of eigenvalues, got shape {x.shape}.")
    return x


def _empty_window(n: int, lo: float, hi: float, peak: float) -> PowerLawFit:
    """Hill-peak's no-fit result when no eigenvalue lies in the candidate window."""
    return _no_fit(
        "hill-peak",
        n,
        f"no eigenvalue (other than the largest) lies in the peak "
        f"window [{lo:.6g}, {hi:.6g}] around the histogram peak {peak:.6g}.",
        peak=peak,
    )


_ALPHA_LE_1 = "every candidate in the peak window has alpha <= 1."


def _prepare(eigs: Any, mode: str) -> tuple[np.ndarray, PowerLawFit | None]:
    """Sorted positive float64 values, or a no-fit result explaining why there is nothing to fit."""
    x = _vector(eigs)
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        return x, _no_fit(
            mode,
            x.size,
            f"{bad} of {x.size} eigenvalues are NaN or infinite: the matrix is "
            "broken (check its dtype/dequantisation); no fit.",
        )
    x = np.sort(x[x > 0])
    if x.size < 2 or x[0] == x[-1]:
        return x, _no_fit(
            mode,
            x.size,
            f"fewer than 2 distinct positive eigenvalues ({x.size} positive); "
            "a power law needs at least two.",
        )
    return x, None


def _alphas(x: np.ndarray) -> np.ndarray:
    """α_i = 1 + n_i / Σ_{j≥i} ln(λ_j/λ_i) for every index of sorted ``x`` (inf where the sum is 0).

    Uses S_i = S_{i+1} + n_{i+1}·(ln λ_{i+1} − ln λ_i): a reverse cumulative sum of non-negative
    terms, so there is no cancellation (relative error ~1e-15, against powerlaw's direct sums).
    ``x`` may also be a [B, N] stack of sorted rows (same arithmetic per row).
    """
    size = x.shape[-1]
    g = np.diff(np.log(x), axis=-1)
    g *= np.arange(size - 1, 0, -1)  # n_{i+1} = N − (i + 1)
    s = np.zeros(x.shape)
    np.cumsum(g[..., ::-1], axis=-1, out=s[..., -2::-1])
    with np.errstate(divide="ignore"):
        return 1.0 + np.arange(size, 0, -1) / s


class _Problem:
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


def _scan(
    prob: _Problem, cpos: np.ndarray, alpha: np.ndarray, prune: bool = True
) -> tuple[int, float]:
    """(index into ``cpos``, D) of the first candidate with the smallest D; (-1, nan) if none.

    Hill-peak candidates with α ≤ 1 count as D = 1 (never better than a real fit). With
    ``prune``: a cheap lower bound on every D first; then, in rounds, the most promising
    candidates get their exact D, and the positions where their KS maximum fell sharpen the
    bounds of the rest (neighbouring xmins peak at nearly the same eigenvalue), until every
    remaining bound exceeds the best exact D. A candidate is dropped only when its bound
    exceeds that D by more than ``_SLACK``, so ties (the first index wins, as in powerlaw and
    the reference loop) are decided on exact values.
    """
    with np.errstate(all="ignore"):  # overflow/underflow in the power are meaningful limits
        return _scan_inner(prob, cpos, alpha, prune)


def _scan_inner(
    prob: _Problem, cpos: np.ndarray, alpha: np.ndarray, prune: bool
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


def _best(prob: _Problem, cp: np.ndarray, al: np.ndarray, prune: bool) -> tuple[int, float]:
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
        alive = np.flatnonzero(lb <= best_d + _SLACK)
        if alive.size * (prob.total - int(cp[alive].min(initial=prob.total))) <= _SMALL:
            batch = max(batch, alive.size)  # few left: scoring them beats sharpening bounds
            continue
        if alive.size:  # sharpen: the KS terms of the survivors where the scored ones peaked
            offs = np.maximum(at[:, None] - cp[alive][None, :], 0)
            lb[alive] = np.maximum(lb[alive], prob.terms_max(cp[alive], al[alive], offs)[0])
            alive = alive[lb[alive] <= best_d + _SLACK]
        batch = min(batch * 2, cols_max)
    return best, best_d


def _first_occurrences(x: np.ndarray) -> np.ndarray:
    """Index of the first element of each run of equal values in sorted ``x``."""
    return np.flatnonzero(np.r_[True, x[1:] != x[:-1]])


def _finish_clauset(x: np.ndarray, i: int, ties: bool = True) -> PowerLawFit:
    """α and D of xmin = x[i] computed exactly as ``powerlaw`` 1.5's ``Fit.power_law`` does
    (``ties=False`` promises distinct values: every index is then a first occurrence)."""
    tail = x[i:]
    n = tail.size
    with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
        s = np.sum(np.log(tail / x[i]))
        if not np.isfinite(s):  # λ_max/xmin overflows float64: powerlaw gives up, we do not
            s = np.sum(np.log(tail) - np.log(x[i]))
        alpha = 1.0 + n / s
        first = _first_occurrences(tail) if ties else np.arange(n)
        theo = 1.0 - ((tail[first] if ties else tail) / x[i]) ** (-alpha + 1.0)
        d = float(np.max(np.abs(theo - first / float(n))))
    return PowerLawFit(float(alpha), float(x[i]), d, int(n), int(x.size), "clauset")


def fit_clauset(eigs: Any, *, prune: bool = True) -> PowerLawFit:
    """Clauset fit equal to ``powerlaw`` 1.5's ``Fit(x).power_law`` (α, xmin, D), vectorised.

    ``prune=False`` computes every candidate's exact D (slower; same answer).
    """
    x, fail = _prepare(eigs, "clauset")
    if fail is not None:
        return fail
    ev = _first_occurrences(x)  # unique values: candidates and KS evaluation points
    cpos = np.arange(ev.size - 1)  # every unique value except the largest
    alpha = _alphas(x)[ev[cpos]]
    w, _ = _scan(_Problem(x, ev, clauset=True), cpos, alpha, prune=prune)
    return _finish_clauset(x, int(ev[cpos[w]]))


def _hill_window(
    x: np.ndarray, bins: int, log10_quirk: bool
) -> tuple[float, float, float, np.ndarray]:
    """Histogram peak (linear units), window bounds and candidate indices of hill-peak."""
    lg = np.log10(x)  # sorted, like x
    first, last = float(lg[0]), float(lg[-1])
    if first == last:  # distinct values, equal logs: widen as numpy.histogram does
        first, last = first - 0.5, last + 0.5
    # np.linspace(first, last, bins + 1), which numpy.histogram uses, without its overhead
    edges = np.arange(bins + 1) * ((last - first) / bins)
    edges += first
    edges[-1] = last
    # numpy.histogram's bins: edges[k] <= v < edges[k+1], the last bin closed on the right;
    # lg is sorted, so the counts are differences of insertion points
    at = np.searchsorted(lg, edges, side="left")
    at[-1] = lg.size
    peak = float(10.0 ** edges[int(np.argmax(np.diff(at)))])
    lo = float(np.log10(0.95 * peak)) if log10_quirk else 0.95 * peak
    hi = 1.5 * peak
    start = int(np.searchsorted(x, lo, side="left"))
    stop = min(int(np.searchsorted(x, hi, side="right")), x.size - 1)  # never the largest
    return peak, lo, hi, np.arange(start, max(start, stop))


def _finish_hill(x: np.ndarray, i: int, peak: float) -> PowerLawFit:
    """α and D of xmin = x[i] by the direct formulas (k/n CDF at every tail point)."""
    tail = x[i:]
    n = tail.size
    with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
        s = np.sum(np.log(tail / x[i]))
        if not np.isfinite(s):  # λ_max/xmin overflows float64: use differences of logs
            s = np.sum(np.log(tail) - np.log(x[i]))
        alpha = 1.0 + n / s
        theo = 1.0 - (tail / x[i]) ** (1.0 - alpha)
        d = float(np.max(np.abs(theo - np.arange(n) / float(n))))
    return PowerLawFit(float(alpha), float(x[i]), d, int(n), int(x.size), "hill-peak", peak=peak)


def _check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise AlphaLoRAError(f"bins must be a positive integer, got {bins!r}.")
    return int(bins)


def fit_hill_peak(
    eigs: Any, *, bins: int = 100, log10_quirk: bool = False, prune: bool = True
) -> PowerLawFit:
    """AlphaLoRA's PL_Alpha_Hill: candidates in [0.95·peak, 1.5·peak] of the log10-histogram peak.

    ``log10_quirk=True`` reproduces the reference's lower bound log10(0.95·peak) (a log value
    compared with linear eigenvalues). λ ≤ 0 are dropped before the log10 histogram.
    """
    bins = _check_bins(bins)
    x, fail = _prepare(eigs, "hill-peak")
    if fail is not None:
        return fail
    peak, lo, hi, cand = _hill_window(x, bins, log10_quirk)
    if cand.size == 0:
        return _empty_window(x.size, lo, hi, peak)
    alpha = _alphas(x)[cand]
    w, d = _scan(_Problem(x, None, clauset=False), cand, alpha, prune=prune)
    if w < 0:
        return _no_fit("hill-peak", x.size, _ALPHA_LE_1, peak=peak)
    i = int(cand[w])
    return PowerLawFit(float(alpha[w]), float(x[i]), d, x.size - i, x.size, "hill-peak", peak=peak)


def fit_powerlaw_package(eigs: Any) -> PowerLawFit:
    """The reference: ``powerlaw.Fit`` itself (slow, loops in Python), stdout/stderr silenced.

    Values ≤ 0 are dropped first, as for ``clauset``. With powerlaw ≥ 2 the alpha range is
    lifted to (1, ∞) (its default caps α at 3), which restores 1.5's answer.
    """
    x, fail = _prepare(eigs, "powerlaw")
    if fail is not None:
        return fail
    try:
        import powerlaw
    except ImportError as exc:
        raise AlphaLoRAError(
            "Mode 'powerlaw' needs the powerlaw package: pip install powerlaw==1.5 "
            "(or use mode 'clauset', which gives the same answer much faster)."
        ) from exc
    kwargs: dict[str, Any] = {}
    try:
        major = int(importlib.metadata.version("powerlaw").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        major = 1
    if major >= 2:
        kwargs["parameter_ranges"] = {"alpha": [1, None]}
    sink = io.StringIO()
    with (
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
        warnings.catch_warnings(),
        np.errstate(all="ignore"),
    ):
        warnings.simplefilter("ignore")
        fit = powerlaw.Fit(x, verbose=False, **kwargs)
        alpha, xmin, d = float(fit.power_law.alpha), float(fit.xmin), float(fit.power_law.D)
    if not np.isfinite(alpha):
        return _no_fit("powerlaw", x.size, "powerlaw.Fit returned no fit (NaN alpha).")
    return PowerLawFit(alpha, xmin, d, int(np.count_nonzero(x >= xmin)), int(x.size), "powerlaw")


def fit_power_law(eigs: Any, mode: str = "hill-peak", **kw: Any) -> PowerLawFit:
    """Fit one spectrum with ``mode`` in ``hill-peak`` (default), ``clauset`` or ``powerlaw``.

    Options go to the mode's function: ``bins``/``log10_quirk`` for hill-peak, ``prune`` for
    hill-peak and clauset.
    """
    funcs = {"hill-peak": fit_hill_peak, "clauset": fit_clauset, "powerlaw": fit_powerlaw_package}
    if mode not in funcs:
        raise AlphaLoRAError(f"Unknown fit mode {mode!r}; valid modes: {', '.join(MODES)}.")
    allowed = _OPTIONS[mode]
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise AlphaLoRAError(
            f"Bad option(s) {', '.join(unknown)} for fit mode {mode!r}; it accepts: "
            f"{', '.join(sorted(allowed)) or 'none'}."
        )
    return funcs[mode](eigs, **kw)


_OPTIONS = {
    "hill-peak": {"bins", "log10_quirk", "prune"},
    "clauset": {"prune"},
    "powerlaw": set(),
}


# --------------------------------------------------------------------------- numpy batches
# Spectra of equal length are stacked into a [B, N] array and fitted with one set of 2-D array
# operations per step, so numpy's per-call overhead (most of a ~100 µs single fit at N ≈ 500)
# is paid once per batch instead of once per spectrum. Every number is computed with the same
# element-wise arithmetic as in the single fits (same operations, same order), hence the same
# bits, the same winners and the same tie rule.

_PAIR_BLOCK = 1 << 16  # KS terms per work block: 512 KB temporaries stay in cache and get reused
_ROW_BLOCK = 1 << 15  # values per stack of spectra handled at once (B·N)
_FIRST_EXACT_BATCH = 4  # candidates per row scored exactly in the first round, then ×_GROW
_GROW = 2  # growth of the candidates scored per row and round
_AUTO_MIN_BATCH = 5  # engine="auto": smaller groups of equal length are fitted one by one


def _ks_terms(r: np.ndarray, xmin: np.ndarray, expo: np.ndarray, emp: np.ndarray) -> np.ndarray:
    """|1 − (λ/xmin)^(1−α) − S| in place over ``r`` = λ, with :meth:`_Problem.terms_max`'s
    operations in its order (hence its bits); ``expo`` = 1 − α. Callers ignore FP errors."""
    r /= xmin
    np.power(r, expo, out=r)
    np.subtract(1.0, r, out=r)
    r -= emp
    np.abs(r, out=r)
    return r


class _Rows:
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


def _batch_scan(
    rows: _Rows, cp: np.ndarray, alpha: np.ndarray, ok: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (column of the first smallest exact D among the candidates marked ``ok``, D);
    (-1, inf) for a row without one.

    ``cp`` [B, C] holds candidate indices increasing along each row, ``alpha`` their α. The
    pruning of :func:`_best`, for all rows at once: lower bounds, then rounds in which each row
    scores its most promising candidates exactly, sharpens the bounds of the rest where those
    peaked, and drops every candidate whose bound exceeds its best D by more than ``_SLACK``.
    """
    with np.errstate(all="ignore"):  # overflow/underflow in the power are meaningful limits
        return _batch_scan_inner(rows, cp, alpha, ok)


def _batch_scan_inner(
    rows: _Rows, cp: np.ndarray, alpha: np.ndarray, ok: np.ndarray
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
        limit = best_d[act] + _SLACK
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


def _row_histograms(lg: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``numpy.histogram(row, bins)`` of every sorted row of ``lg`` [B, N]: (edges, counts),
    with the edges computed as in :func:`_hill_window` and the same counts, bit for bit."""
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
        out[r] = _empty_window(size, float(lo[r]), float(hi[r]), float(peak[r]))
    sub = np.flatnonzero(ncand > 0)
    if sub.size:
        cols = np.arange(int(ncand[sub].max()))
        valid = cols < ncand[sub, None]
        cp = np.where(valid, start[sub, None] + cols, start[sub, None])
        alpha = np.take_along_axis(_alphas(xs[sub]), cp, axis=1)
        ok = valid & (alpha > 1.0)
        best, d = _batch_scan(_Rows(xs[sub], clauset=False), cp, alpha, ok)
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
                out[r] = _no_fit("hill-peak", size, _ALPHA_LE_1, peak=pk)
            else:
                out[r] = PowerLawFit(a, xmin, dist, n_tail, size, "hill-peak", peak=pk)
    return [o for o in out if o is not None]


def _clauset_rows(xs: np.ndarray) -> list[PowerLawFit]:
    """Clauset fits of a [B, N] stack of sorted positive spectra without ties (every value is
    a candidate but the largest), finished exactly as :func:`fit_clauset` does."""
    nrow, size = xs.shape
    alpha = _alphas(xs)[:, :-1]
    cp = np.broadcast_to(np.arange(size - 1), alpha.shape)
    best, _ = _batch_scan(_Rows(xs, clauset=True), cp, alpha, np.ones(alpha.shape, dtype=bool))
    return [_finish_clauset(xs[r], w, ties=False) for r, w in enumerate(best.tolist())]


def _fit_many_numpy(
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
    vecs = [_vector(e) for e in eigs_list]
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


# --------------------------------------------------------------------------- torch batches


def _torch_winners(
    xs: np.ndarray,
    cand_mask: np.ndarray,
    eval_mask: np.ndarray,
    alpha: np.ndarray,
    clauset: bool,
    device: Any,
) -> list[int]:
    """First argmin of the exact D for a [B, N] batch of sorted spectra on ``device`` (torch).

    ``cand_mask`` marks candidate indices, ``eval_mask`` the KS evaluation points; -1 where no
    candidate is usable. Brute force (no pruning): the GPU does the O(N²) work in blocks.
    """
    import torch

    b, size = xs.shape
    budget = (1 << 25) if torch.device(device).type == "cuda" else (1 << 21)  # block elements
    x = torch.as_tensor(xs, dtype=torch.float64, device=device)
    al = torch.as_tensor(alpha, dtype=torch.float64, device=device)
    cm = torch.as_tensor(cand_mask, device=device)
    em = torch.as_tensor(eval_mask, device=device)
    idx = torch.arange(size, device=device, dtype=torch.float64)
    d_all = torch.full((b, size), float("inf"), dtype=torch.float64, device=device)
    rows = max(1, budget // max(b * size, 1))
    for s in range(0, size, rows):
        e = min(size, s + rows)
        xi = x[:, s:e, None]  # [B, R, 1]
        ai = al[:, s:e, None]
        i = idx[s:e][None, :, None]
        k = idx[None, None, :]
        theo = 1.0 - torch.pow(x[:, None, :] / xi, 1.0 - ai)
        if clauset:
            fi = i / size
            emp = (k / size - fi) / (1.0 - fi)
        else:
            emp = (k - i) / (size - i)
        valid = (k >= i) & em[:, None, :]
        d = torch.where(valid, torch.abs(theo - emp), torch.zeros((), dtype=x.dtype, device=device))
        d = d.amax(dim=2)
        # hill-peak: alpha <= 1 keeps D = 1 in the reference, which never beats a real fit
        usable = cm[:, s:e] if clauset else cm[:, s:e] & (ai[..., 0] > 1.0)
        d_all[:, s:e] = torch.where(usable, d, torch.full_like(d, float("inf")))
    best = torch.argmin(d_all, dim=1)  # first minimum on ties
    finite = torch.isfinite(d_all.gather(1, best[:, None]))[:, 0]
    best = torch.where(finite, best, torch.full_like(best, -1))
    return [int(v) for v in best.cpu().tolist()]


def fit_many(
    eigs_list: Sequence[Any],
    mode: str = "hill-peak",
    device: str = "auto",
    *,
    bins: int = 100,
    log10_quirk: bool = False,
    engine: str = "auto",
) -> list[PowerLawFit]:
    """Fit many spectra, those of equal length batched; results in input order.

    ``engine``: ``numpy`` (the pruned scans of the single fits run on stacks of equal-length
    spectra, one set of 2-D array operations per step; rows with nothing to fit, and clauset
    rows with ties, go through the single fits), ``torch`` (brute-force scans, spectra of
    equal length stacked, on ``device``) or ``auto`` (torch on CUDA; on a CPU the numpy
    batches, with length groups of fewer than ``_AUTO_MIN_BATCH`` spectra fitted one by one,
    which is faster there). Same fits as :func:`fit_power_law` either way (numpy: the same
    bits; torch: to ~1e-12); ``powerlaw`` mode simply loops over the reference package.
    """
    if mode not in MODES:
        raise AlphaLoRAError(f"Unknown fit mode {mode!r}; valid modes: {', '.join(MODES)}.")
    if engine not in ("auto", "numpy", "torch"):
        raise AlphaLoRAError(f"Unknown engine {engine!r}; use 'auto', 'numpy' or 'torch'.")
    bins = _check_bins(bins)
    if mode == "powerlaw":
        return [fit_powerlaw_package(e) for e in eigs_list]
    from alphalora.spectral.spectra import resolve_device

    dev = resolve_device(device)
    if engine == "numpy":
        return _fit_many_numpy(eigs_list, mode, bins, log10_quirk, min_batch=1)
    if engine == "auto" and dev.type != "cuda":
        return _fit_many_numpy(eigs_list, mode, bins, log10_quirk, min_batch=_AUTO_MIN_BATCH)
    out: list[PowerLawFit | None] = [None] * len(eigs_list)
    groups: dict[int, list[tuple[int, np.ndarray, Any]]] = {}
    for j, eigs in enumerate(eigs_list):
        x, fail = _prepare(eigs, mode)
        if fail is not None:
            out[j] = fail
            continue
        extra: Any = None
        if mode == "hill-peak":
            peak, lo, hi, cand = _hill_window(x, bins, log10_quirk)
            if cand.size == 0:
                out[j] = _empty_window(x.size, lo, hi, peak)
                continue
            extra = (peak, cand)
        groups.setdefault(x.size, []).append((j, x, extra))
    clauset = mode == "clauset"
    for size, items in groups.items():
        per = max(1, (1 << 22) // (size * size))  # spectra per torch batch
        for s in range(0, len(items), per):
            part = items[s : s + per]
            xs = np.stack([x for _, x, _ in part])
            alpha = np.stack([_alphas(x) for _, x, _ in part])
            cand = np.zeros(xs.shape, dtype=bool)
            ev = np.zeros(xs.shape, dtype=bool)
            for r, (_, x, extra) in enumerate(part):
                if clauset:
                    ev[r, _first_occurrences(x)] = True
                    cand[r] = ev[r] & (x < x[-1])
                else:
                    ev[r] = True
                    cand[r, extra[1]] = True
            winners = _torch_winners(xs, cand, ev, alpha, clauset, dev)
            for (j, x, extra), w in zip(part, winners, strict=True):
                if clauset:
                    out[j] = _finish_clauset(x, w)
                elif w < 0:
                    out[j] = _no_fit(mode, x.size, _ALPHA_LE_1, peak=extra[0])
                else:
                    out[j] = _finish_hill(x, w, extra[0])
    return [o for o in out if o is not None]
