"""What every fit does first: eigenvalues as a sorted positive float64 vector (or the reason
there is nothing to fit), the α of every candidate xmin, and argument checks."""

from __future__ import annotations

from typing import Any

import numpy as np

from alphalora.errors import AlphaLoRAError
from alphalora.spectral.fits.result import PowerLawFit, no_fit


def as_vector(eigs: Any) -> np.ndarray:
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


def prepare(eigs: Any, mode: str) -> tuple[np.ndarray, PowerLawFit | None]:
    """Sorted positive float64 values, or a no-fit result explaining why there is nothing to fit."""
    x = as_vector(eigs)
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        return x, no_fit(
            mode,
            x.size,
            f"{bad} of {x.size} eigenvalues are NaN or infinite: the matrix is "
            "broken (check its dtype/dequantisation); no fit.",
        )
    x = np.sort(x[x > 0])
    if x.size < 2 or x[0] == x[-1]:
        return x, no_fit(
            mode,
            x.size,
            f"fewer than 2 distinct positive eigenvalues ({x.size} positive); "
            "a power law needs at least two.",
        )
    return x, None


def candidate_alphas(x: np.ndarray) -> np.ndarray:
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


def first_occurrences(x: np.ndarray) -> np.ndarray:
    """Index of the first element of each run of equal values in sorted ``x``."""
    return np.flatnonzero(np.r_[True, x[1:] != x[:-1]])


def check_bins(bins: int) -> int:
    """``bins`` as an int, or :class:`AlphaLoRAError` unless it is a positive integer."""
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise AlphaLoRAError(f"bins must be a positive integer, got {bins!r}.")
    return int(bins)
