"""The result of a power-law fit (:class:`PowerLawFit`) and the no-fit result every mode returns
when there is nothing to fit."""

from __future__ import annotations

from dataclasses import dataclass


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


def no_fit(mode: str, n: int, reason: str, peak: float | None = None) -> PowerLawFit:
    """The result of ``mode`` when no fit was possible: NaN values and the ``reason``."""
    nan = float("nan")
    return PowerLawFit(nan, nan, nan, 0, n, mode, peak=peak, reason=reason)
