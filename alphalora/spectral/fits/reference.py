"""Mode ``powerlaw``: the reference ``powerlaw.Fit`` itself, for comparisons (slow)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import warnings
from typing import Any

import numpy as np

from alphalora.errors import AlphaLoRAError
from alphalora.spectral.fits.prepare import prepare
from alphalora.spectral.fits.result import PowerLawFit, no_fit


def fit_powerlaw_package(eigs: Any) -> PowerLawFit:
    """The reference: ``powerlaw.Fit`` itself (slow, loops in Python), stdout/stderr silenced.

    Values ≤ 0 are dropped first, as for ``clauset``. With powerlaw ≥ 2 the alpha range is
    lifted to (1, ∞) (its default caps α at 3), which restores 1.5's answer.
    """
    x, fail = prepare(eigs, "powerlaw")
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
        return no_fit("powerlaw", x.size, "powerlaw.Fit returned no fit (NaN alpha).")
    return PowerLawFit(alpha, xmin, d, int(np.count_nonzero(x >= xmin)), int(x.size), "powerlaw")
