"""The fit entry points: one spectrum in a chosen mode (:func:`fit_power_law`) and many spectra
at once, batched by length on the numpy or torch engine (:func:`fit_many`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alphalora.errors import AlphaLoRAError
from alphalora.spectral.fits.batched import fit_many_numpy
from alphalora.spectral.fits.clauset import fit_clauset
from alphalora.spectral.fits.hill import fit_hill_peak
from alphalora.spectral.fits.prepare import check_bins
from alphalora.spectral.fits.reference import fit_powerlaw_package
from alphalora.spectral.fits.result import PowerLawFit
from alphalora.spectral.fits.torch_engine import fit_many_torch

MODES = ("hill-peak", "clauset", "powerlaw")
_AUTO_MIN_BATCH = 5  # engine="auto": smaller groups of equal length are fitted one by one


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
    bins = check_bins(bins)
    if mode == "powerlaw":
        return [fit_powerlaw_package(e) for e in eigs_list]
    from alphalora.spectral.spectra import resolve_device

    dev = resolve_device(device)
    if engine == "numpy":
        return fit_many_numpy(eigs_list, mode, bins, log10_quirk, min_batch=1)
    if engine == "auto" and dev.type != "cuda":
        return fit_many_numpy(eigs_list, mode, bins, log10_quirk, min_batch=_AUTO_MIN_BATCH)
    return fit_many_torch(eigs_list, mode, bins, log10_quirk, dev)
