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
``fit_many`` runs brute-force scans batched in torch on a GPU.
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


def _prepare(eigs: Any, mode: str) -> tuple[np.ndarray, PowerLawFit | None]:
    """Sorted positive float64 values, or a no-fit result explaining why there is nothing to fit."""
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
    """
    size = x.size
    g = np.diff(np.log(x))
    g *= np.arange(size - 1, 0, -1)  # n_{i+1} = N − (i + 1)
    s = np.zeros(size)
    np.cumsum(g[::-1], out=s[-2::-1])
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


def _finish_clauset(x: np.ndarray, i: int) -> PowerLawFit:
    """α and D of xmin = x[i] computed exactly as ``powerlaw`` 1.5's ``Fit.power_law`` does."""
    tail = x[i:]
    n = tail.size
    with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
        s = np.sum(np.log(tail / x[i]))
        if not np.isfinite(s):  # λ_max/xmin overflows float64: powerlaw gives up, we do not
            s = np.sum(np.log(tail) - np.log(x[i]))
        alpha = 1.0 + n / s
        first = _first_occurrences(tail)
        theo = 1.0 - (tail[first] / x[i]) ** (-alpha + 1.0)
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
        return _no_fit(
            "hill-peak",
            x.size,
            f"no eigenvalue (other than the largest) lies in the peak "
            f"window [{lo:.6g}, {hi:.6g}] around the histogram peak {peak:.6g}.",
            peak=peak,
        )
    alpha = _alphas(x)[cand]
    w, d = _scan(_Problem(x, None, clauset=False), cand, alpha, prune=prune)
    if w < 0:
        return _no_fit(
            "hill-peak", x.size, "every candidate in the peak window has alpha <= 1.", peak=peak
        )
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
    """Fit many spectra; on a GPU the candidate scans run batched in torch.

    ``engine``: ``numpy`` (the pruned per-spectrum fits), ``torch`` (brute-force scans,
    spectra of equal length stacked, on ``device``) or ``auto`` (torch on CUDA, else numpy:
    on a CPU the pruned numpy scan is the faster one). Same answers as :func:`fit_power_law`
    to ~1e-12 either way; ``powerlaw`` mode simply loops over the reference package.
    """
    if mode not in MODES:
        raise AlphaLoRAError(f"Unknown fit mode {mode!r}; valid modes: {', '.join(MODES)}.")
    if engine not in ("auto", "numpy", "torch"):
        raise AlphaLoRAError(f"Unknown engine {engine!r}; use 'auto', 'numpy' or 'torch'.")
    bins = _check_bins(bins)
    if mode == "powerlaw":
        return [fit_powerlaw_package(e) for e in eigs_list]
    from alphalora.spectra import resolve_device

    dev = resolve_device(device)
    if engine == "numpy" or (engine == "auto" and dev.type != "cuda"):
        if mode == "clauset":
            return [fit_clauset(e) for e in eigs_list]
        return [fit_hill_peak(e, bins=bins, log10_quirk=log10_quirk) for e in eigs_list]
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
                out[j] = _no_fit(
                    mode,
                    x.size,
                    f"no eigenvalue (other than the largest) lies in the peak "
                    f"window [{lo:.6g}, {hi:.6g}] around the histogram peak {peak:.6g}.",
                    peak=peak,
                )
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
                    out[j] = _no_fit(
                        mode,
                        x.size,
                        "every candidate in the peak window has alpha <= 1.",
                        peak=extra[0],
                    )
                else:
                    out[j] = _finish_hill(x, w, extra[0])
    return [o for o in out if o is not None]
