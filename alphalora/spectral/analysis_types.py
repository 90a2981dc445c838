"""What an analysis takes and gives: :class:`AnalysisOptions` (what to compute) and
:class:`AnalysisResult` (the per-matrix and per-layer tables, plus the spectra for plotting).
Shared by the pipeline (:mod:`~alphalora.spectral.analysis`), its on-disk cache and the app."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphalora.errors import AlphaLoRAError

FIT_MODES = ("hill-peak", "clauset")


@dataclass(frozen=True)
class AnalysisOptions:
    """What to compute. ``fit`` picks the xmin search (docs/method.md §3); ``log10_quirk``
    reproduces AlphaLoRA's hill-peak lower bound bug; ``esd_scale`` is ``"none"`` (eigenvalues
    of WᵀW: AlphaLoRA's and WeightWatcher's default) or ``"N"`` (WᵀW / N, WeightWatcher's
    ``normalize=True``)."""

    fit: str = "hill-peak"
    device: str = "auto"
    precision: str = "float64"
    include_non_block: bool = False
    log10_quirk: bool = False
    esd_scale: str = "none"
    workers: int = 0  # CPU solver threads; 0 = one per core

    def validate(self) -> None:
        """Raise :class:`AlphaLoRAError` on an unknown option value."""
        if self.fit not in FIT_MODES:
            raise AlphaLoRAError(
                f"Unknown fit mode {self.fit!r}; choose one of {', '.join(FIT_MODES)}."
            )
        if self.precision not in ("float32", "float64"):
            raise AlphaLoRAError(f"Unknown precision {self.precision!r}; use float32 or float64.")
        if self.esd_scale not in ("none", "N"):
            raise AlphaLoRAError(f"Unknown esd_scale {self.esd_scale!r}; use 'none' or 'N'.")

    def cache_key_part(self) -> dict[str, Any]:
        """The options that change the numbers (the device does not)."""
        d = asdict(self)
        d.pop("device")
        d.pop("workers")
        return d


@dataclass
class AnalysisResult:
    """The tables of one analysis, plus the spectra for plotting."""

    ref: str
    model: dict[str, Any]
    options: AnalysisOptions
    matrices: pd.DataFrame
    layers: pd.DataFrame
    eigenvalues: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    fingerprint: str = ""
    elapsed_s: float = 0.0
    device: str = "cpu"
    from_cache: bool = False
    cache_dir: Path | None = None

    @property
    def layer_alphas(self) -> list[float]:
        """Mean alpha per transformer block, in layer order (the AlphaLoRA layer score)."""
        return [float(a) for a in self.layers["alpha_mean"]]

    def summary(self) -> dict[str, Any]:
        """A few headline figures for printing or display."""
        m = self.matrices
        return {
            "model": self.model.get("name", self.ref),
            "family": self.model.get("family"),
            "layers": int(self.layers.shape[0]),
            "matrices": int(m.shape[0]),
            "parameters": self.model.get("parameters"),
            "fit": self.options.fit,
            "alpha_mean": _nan_mean(m["alpha"]) if len(m) else math.nan,
            "flagged": int((~m["reliable"]).sum()) if len(m) else 0,
            "seconds": round(self.elapsed_s, 2),
            "device": self.device,
            "from_cache": self.from_cache,
        }


def _nan_mean(values: pd.Series) -> float:
    """Mean of the finite values, NaN when there is none (every fit flagged), without numpy's
    "Mean of empty slice" warning."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    return float(finite.mean()) if finite.size else math.nan
