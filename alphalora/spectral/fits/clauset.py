"""Clauset fits: Clauset–Shalizi–Newman as implemented by ``powerlaw`` 1.5.

Candidates are the unique values except the largest and S is evaluated once per unique value
(left of each step). Equal to ``powerlaw.Fit(x).power_law.alpha / .xmin / .D`` (bit for bit on
every spectrum tested; the contract is 1e-6). Like powerlaw, λ ≤ 0 are dropped (powerlaw drops
them when an exact 0 is present; negatives without a 0 it keeps, but they never change its
answer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alphalora.spectral.fits.prepare import candidate_alphas, first_occurrences, prepare
from alphalora.spectral.fits.result import PowerLawFit
from alphalora.spectral.fits.scan import KSProblem, scan_candidates


def finish_clauset(x: np.ndarray, i: int, ties: bool = True) -> PowerLawFit:
    """α and D of xmin = x[i] computed exactly as ``powerlaw`` 1.5's ``Fit.power_law`` does
    (``ties=False`` promises distinct values: every index is then a first occurrence)."""
    tail = x[i:]
    n = tail.size
    with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
        s = np.sum(np.log(tail / x[i]))
        if not np.isfinite(s):  # λ_max/xmin overflows float64: powerlaw gives up, we do not
            s = np.sum(np.log(tail) - np.log(x[i]))
        alpha = 1.0 + n / s
        first = first_occurrences(tail) if ties else np.arange(n)
        theo = 1.0 - ((tail[first] if ties else tail) / x[i]) ** (-alpha + 1.0)
        d = float(np.max(np.abs(theo - first / float(n))))
    return PowerLawFit(float(alpha), float(x[i]), d, int(n), int(x.size), "clauset")


def fit_clauset(eigs: Any, *, prune: bool = True) -> PowerLawFit:
    """Clauset fit equal to ``powerlaw`` 1.5's ``Fit(x).power_law`` (α, xmin, D), vectorised.

    ``prune=False`` computes every candidate's exact D (slower; same answer).
    """
    x, fail = prepare(eigs, "clauset")
    if fail is not None:
        return fail
    ev = first_occurrences(x)  # unique values: candidates and KS evaluation points
    cpos = np.arange(ev.size - 1)  # every unique value except the largest
    alpha = candidate_alphas(x)[ev[cpos]]
    w, _ = scan_candidates(KSProblem(x, ev, clauset=True), cpos, alpha, prune=prune)
    return finish_clauset(x, int(ev[cpos[w]]))
