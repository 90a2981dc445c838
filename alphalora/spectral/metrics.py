"""Per-matrix quality metrics from an eigenvalue spectrum and its power-law fit (pure).

The figures are the ones WeightWatcher users expect (docs/method.md §3, last paragraph), computed
in AlphaLoRA's convention (no 1/N factor on WᵀW) unless ``esd_scale`` says otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from alphalora.spectral.fits.result import PowerLawFit

#: Below this many eigenvalues in the fitted tail the alpha is statistically meaningless.
MIN_TAIL = 10
#: Alphas outside this range are flagged: below it the fit is degenerate, above it the
#: spectrum is effectively random (Marchenko–Pastur) and alpha loses resolution.
ALPHA_RANGE = (1.5, 20.0)
#: A KS distance above this means the power law does not describe the tail.
MAX_D = 0.2
#: Fewer eigenvalues than this and we do not even try a fit.
MIN_EIGENVALUES = 2


@dataclass(frozen=True)
class MatrixProblem:
    """Why a matrix could not be fitted at all (NaN/Inf, all zeros, too few eigenvalues)."""

    reason: str


def check_matrix(shape: tuple[int, int], finite: bool, all_zero: bool) -> MatrixProblem | None:
    """Return the reason a matrix has no meaningful spectrum, or None when it is fine."""
    if not finite:
        return MatrixProblem("contains NaN or Inf values; the spectrum is undefined")
    if min(shape) < MIN_EIGENVALUES:
        return MatrixProblem(
            f"shape {shape[0]}×{shape[1]} gives {min(shape)} eigenvalue(s); at least "
            f"{MIN_EIGENVALUES} are needed for a fit"
        )
    if all_zero:
        return MatrixProblem("all-zero matrix: every eigenvalue is 0")
    return None


def spectrum_metrics(eigs: np.ndarray, fit: PowerLawFit, *, scale: float = 1.0) -> dict[str, float]:
    """Metrics from eigenvalues of WᵀW (ascending) and their fit.

    ``scale`` multiplies the eigenvalues first (1 for AlphaLoRA's and WeightWatcher's default
    convention, 1/N for WeightWatcher's ``normalize=True``); alpha, D and n_tail do not depend
    on it.
    """
    lam = np.asarray(eigs, dtype=np.float64) * scale
    lam_max = float(lam[-1]) if lam.size else math.nan
    total = float(lam.sum()) if lam.size else math.nan
    log_lam_max = math.log10(lam_max) if lam_max > 0 else math.nan
    alpha = fit.alpha
    return {
        "alpha": alpha,
        "xmin": fit.xmin * scale if np.isfinite(fit.xmin) else math.nan,
        "D": fit.D,
        "n_tail": int(fit.n_tail),
        "n_eigs": int(lam.size),
        "lambda_max": lam_max,
        "log_spectral_norm": log_lam_max,
        "log_norm": math.log10(total) if total > 0 else math.nan,
        "alpha_weighted": alpha * log_lam_max if np.isfinite(alpha) else math.nan,
        "stable_rank": total / lam_max if lam_max > 0 else math.nan,
    }


def reliability_warning(fit: PowerLawFit, n_eigs: int) -> str:
    """A human-readable list of reasons the fit is unreliable ('' when it is fine)."""
    reasons = []
    if fit.reason:
        return fit.reason
    if n_eigs < MIN_TAIL:
        reasons.append(f"only {n_eigs} eigenvalues")
    if fit.n_tail < MIN_TAIL:
        reasons.append(f"tail of {fit.n_tail} eigenvalues (< {MIN_TAIL})")
    lo, hi = ALPHA_RANGE
    if np.isfinite(fit.alpha) and not lo <= fit.alpha <= hi:
        reasons.append(f"alpha {fit.alpha:.2f} outside [{lo:g}, {hi:g}]")
    if np.isfinite(fit.D) and fit.D > MAX_D:
        reasons.append(f"KS distance {fit.D:.2f} > {MAX_D:g}")
    return "; ".join(reasons)
