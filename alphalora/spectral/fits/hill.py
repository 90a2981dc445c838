"""Hill-peak fits: AlphaLoRA's ``PL_Alpha_Hill`` (TempBalance/AlphaPruning lineage).

Candidates are the λ_i (never the largest) inside a window around the peak of the
log10-histogram; S is the empirical CDF k/n at every tail point; α ≤ 1 keeps D = 1. Values
λ ≤ 0 are dropped first (log10 needs λ > 0; exact zeros come from rank-deficient matrices).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alphalora.spectral.fits.prepare import candidate_alphas, check_bins, prepare
from alphalora.spectral.fits.result import PowerLawFit, no_fit
from alphalora.spectral.fits.scan import KSProblem, scan_candidates


def empty_window(n: int, lo: float, hi: float, peak: float) -> PowerLawFit:
    """Hill-peak's no-fit result when no eigenvalue lies in the candidate window."""
    return no_fit(
        "hill-peak",
        n,
        f"no eigenvalue (other than the largest) lies in the peak "
        f"window [{lo:.6g}, {hi:.6g}] around the histogram peak {peak:.6g}.",
        peak=peak,
    )


#: Hill-peak's no-fit reason when no candidate has α > 1.
ALPHA_LE_1 = "every candidate in the peak window has alpha <= 1."


def hill_window(
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


def finish_hill(x: np.ndarray, i: int, peak: float) -> PowerLawFit:
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


def fit_hill_peak(
    eigs: Any, *, bins: int = 100, log10_quirk: bool = False, prune: bool = True
) -> PowerLawFit:
    """AlphaLoRA's PL_Alpha_Hill: candidates in [0.95·peak, 1.5·peak] of the log10-histogram peak.

    ``log10_quirk=True`` reproduces the reference's lower bound log10(0.95·peak) (a log value
    compared with linear eigenvalues). λ ≤ 0 are dropped before the log10 histogram.
    """
    bins = check_bins(bins)
    x, fail = prepare(eigs, "hill-peak")
    if fail is not None:
        return fail
    peak, lo, hi, cand = hill_window(x, bins, log10_quirk)
    if cand.size == 0:
        return empty_window(x.size, lo, hi, peak)
    alpha = candidate_alphas(x)[cand]
    w, d = scan_candidates(KSProblem(x, None, clauset=False), cand, alpha, prune=prune)
    if w < 0:
        return no_fit("hill-peak", x.size, ALPHA_LE_1, peak=peak)
    i = int(cand[w])
    return PowerLawFit(float(alpha[w]), float(x[i]), d, x.size - i, x.size, "hill-peak", peak=peak)
