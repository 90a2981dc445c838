"""The statistics behind every comparison: a Wilson interval for an accuracy, the exact McNemar
test and a paired bootstrap for two runs scored on the same examples, and a Student-t interval
for the mean over seeds. Pure functions of counts and 0/1 vectors, no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist

import numpy as np

from alphalora.errors import AlphaLoRAError

CONFIDENCE = 0.95
ALPHA_LEVEL = 0.05
#: Two-sided 97.5 % quantiles of Student's t for 1–30 degrees of freedom.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise AlphaLoRAError(f"confidence must be between 0 and 1; got {confidence}.")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a proportion ``correct / n`` (stays inside [0, 1] and is
    sensible at 0 or n correct, unlike the normal approximation)."""
    if isinstance(correct, bool) or isinstance(n, bool) or n < 0 or not 0 <= correct <= n:
        raise AlphaLoRAError(f"Need 0 ≤ correct ≤ n; got correct={correct}, n={n}.")
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: with ``only_a`` examples right only in run A and
    ``only_b`` right only in run B, P(as uneven a split | no difference), Binomial(n, ½)."""
    if min(only_a, only_b) < 0:
        raise AlphaLoRAError("Discordant counts must be ≥ 0.")
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


def paired_bootstrap(
    correct_a: Sequence[bool] | np.ndarray,
    correct_b: Sequence[bool] | np.ndarray,
    *,
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[float, float, float]:
    """(difference, low, high): accuracy of A minus B and its percentile interval from
    resampling the examples (the same resample for both runs, so the pairing is kept)."""
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise AlphaLoRAError("The paired bootstrap needs two equally long, non-empty 0/1 lists.")
    rng = np.random.default_rng(seed)
    diff = a - b
    idx = rng.integers(0, diff.size, size=(int(resamples), diff.size))
    means = diff[idx].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(diff.mean()), float(low), float(high)


def t_quantile(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise AlphaLoRAError(f"Student's t needs ≥ 1 degree of freedom; got {df}.")
    if df <= len(_T975):
        return _T975[df - 1]
    z = NormalDist().inv_cdf(0.975)  # Cornish–Fisher expansion, exact to 1e-4 beyond 30
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` (e.g. one accuracy per seed) with its 95 %
    Student-t interval; a single value has no spread to measure and gets (v, v, v)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        raise AlphaLoRAError("No finite values to average.")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    half = t_quantile(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class PairedComparison:
    """Two runs scored on the same examples: accuracies with Wilson intervals, the
    discordant counts, McNemar's exact p-value, a bootstrap interval of the difference."""

    n: int
    correct_a: int
    correct_b: int
    only_a: int
    only_b: int
    p_value: float
    diff_low: float
    diff_high: float

    @property
    def accuracy_a(self) -> float:
        """Accuracy of run A."""
        return self.correct_a / self.n

    @property
    def accuracy_b(self) -> float:
        """Accuracy of run B."""
        return self.correct_b / self.n

    @property
    def difference(self) -> float:
        """Accuracy of A minus accuracy of B."""
        return (self.correct_a - self.correct_b) / self.n

    @property
    def interval_a(self) -> tuple[float, float]:
        """95 % Wilson interval of A's accuracy."""
        return wilson_interval(self.correct_a, self.n)

    @property
    def interval_b(self) -> tuple[float, float]:
        """95 % Wilson interval of B's accuracy."""
        return wilson_interval(self.correct_b, self.n)

    @property
    def within_noise(self) -> bool:
        """True when the paired test cannot tell the runs apart at the 5 % level."""
        return self.p_value >= ALPHA_LEVEL

    def verdict(self, name_a: str = "A", name_b: str = "B") -> str:
        """One plain sentence: which run is better, or that the difference is within noise."""
        diff = f"{self.difference:+.3f}"
        test = (
            f"McNemar exact p = {self.p_value:.3g}, {self.only_a} vs {self.only_b} discordant "
            f"of {self.n}"
        )
        if self.within_noise:
            return f"Within noise: {name_a} − {name_b} = {diff} ({test})."
        better, worse = (name_a, name_b) if self.difference > 0 else (name_b, name_a)
        return f"{better} is better than {worse}: {name_a} − {name_b} = {diff} ({test})."

    def as_dict(self) -> dict[str, float | int | bool]:
        """JSON-ready figures."""
        lo_a, hi_a = self.interval_a
        lo_b, hi_b = self.interval_b
        return {
            "n": self.n,
            "accuracy_a": self.accuracy_a,
            "accuracy_a_low": lo_a,
            "accuracy_a_high": hi_a,
            "accuracy_b": self.accuracy_b,
            "accuracy_b_low": lo_b,
            "accuracy_b_high": hi_b,
            "difference": self.difference,
            "difference_low": self.diff_low,
            "difference_high": self.diff_high,
            "only_a": self.only_a,
            "only_b": self.only_b,
            "p_value": self.p_value,
            "within_noise": self.within_noise,
        }


def compare_correct(
    correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray
) -> PairedComparison:
    """Paired comparison of two runs from their per-example correctness, in the same order."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise AlphaLoRAError(
            f"The two runs scored different numbers of examples ({a.size} vs {b.size}); the "
            "paired test needs the same examples."
        )
    if a.size == 0:
        raise AlphaLoRAError("No examples to compare.")
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(b & ~a))
    _, low, high = paired_bootstrap(a, b)
    return PairedComparison(
        n=int(a.size),
        correct_a=int(a.sum()),
        correct_b=int(b.sum()),
        only_a=only_a,
        only_b=only_b,
        p_value=mcnemar_exact(only_a, only_b),
        diff_low=low,
        diff_high=high,
    )
