"""Power-law fits: clauset equals powerlaw 1.5, hill-peak equals a plain per-candidate loop."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest

from alphalora.errors import AlphaLoRAError
from alphalora.spectral.fits import (
    PowerLawFit,
    fit_clauset,
    fit_hill_peak,
    fit_many,
    fit_power_law,
)
from alphalora.spectral.fits.dispatch import MODES

powerlaw = pytest.importorskip("powerlaw")


def _esd(w: np.ndarray) -> np.ndarray:
    return np.linalg.svd(w, compute_uv=False) ** 2


def _datasets() -> dict[str, np.ndarray]:
    """Spectra and samples of every flavour the fits meet, N from 15 to ~1500."""
    rng = np.random.default_rng(20240501)
    d = {
        "gauss_40x30": _esd(rng.standard_normal((40, 30))),
        "gauss_60x120": _esd(rng.standard_normal((60, 120))),
        "gauss_400x200": _esd(rng.standard_normal((400, 200))),
        "gauss_300x300": _esd(rng.standard_normal((300, 300))),
        "t2_100x50": _esd(rng.standard_t(2.0, (100, 50))),
        "t25_200x150": _esd(rng.standard_t(2.5, (200, 150))),
        "t3_80x160": _esd(rng.standard_t(3.0, (80, 160))),
        "pareto_15": rng.pareto(1.5, 15) + 1.0,
        "pareto_300": (rng.pareto(2.0, 300) + 1.0) * 3.7,
        "pareto_1500": rng.pareto(1.2, 1500) + 1.0,
        "ties_rounded": np.round(rng.pareto(1.5, 400) + 1.0, 1),
        "ties_integers": rng.integers(1, 30, 250).astype(float),
        "ties_top": np.r_[rng.pareto(2.0, 60) + 1.0, [50.0, 50.0, 50.0]],
        "lognormal_500": rng.lognormal(0.0, 1.5, 500),
    }
    # a rank-deficient spectrum: exact zeros next to the positive eigenvalues
    d["zeros_rank_def"] = np.r_[np.zeros(20), _esd(rng.standard_normal((60, 90)))]
    return d


DATA = _datasets()


def _powerlaw_ref(x: np.ndarray) -> tuple[float, float, float]:
    sink = io.StringIO()
    with (
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
        warnings.catch_warnings(),
        np.errstate(all="ignore"),
    ):
        warnings.simplefilter("ignore")
        f = powerlaw.Fit(x, verbose=False)
        return float(f.power_law.alpha), float(f.xmin), float(f.power_law.D)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


@pytest.mark.parametrize("name", sorted(DATA))
def test_clauset_equals_powerlaw_1_5(name):
    x = DATA[name]
    alpha, xmin, d = _powerlaw_ref(x)  # raw data: powerlaw drops the zeros itself
    fit = fit_clauset(x)
    assert fit.ok and fit.mode == "clauset"
    assert _rel(fit.alpha, alpha) <= 1e-6, (fit.alpha, alpha)
    assert _rel(fit.xmin, xmin) <= 1e-6, (fit.xmin, xmin)
    assert _rel(fit.D, d) <= 1e-6, (fit.D, d)
    positive = x[x > 0]
    assert fit.n == positive.size
    assert fit.n_tail == np.count_nonzero(positive >= fit.xmin)


@pytest.mark.parametrize("name", sorted(DATA))
def test_clauset_pruning_is_exact(name):
    x = DATA[name]
    assert fit_clauset(x) == fit_clauset(x, prune=False)


@pytest.mark.parametrize("clauset", [True, False])
def test_lower_bound_never_exceeds_exact_d(clauset):
    from alphalora.spectral.fits import prepare, scan

    for name in ("t25_200x150", "ties_rounded", "pareto_1500", "gauss_300x300"):
        x = np.sort(DATA[name][DATA[name] > 0])
        ev = prepare.first_occurrences(x) if clauset else None
        total = x.size if ev is None else ev.size
        cpos = np.arange(total - 1)
        alpha = prepare.candidate_alphas(x)[cpos if ev is None else ev[cpos]]
        prob = scan.KSProblem(x, ev, clauset)
        with np.errstate(all="ignore"):
            exact, where = prob.exact(cpos, alpha)
            bound = prob.lower_bound(cpos, alpha)
            hot = np.maximum(where[::7][:, None] - cpos[None, :], 0)
            sharp = prob.terms_max(cpos, alpha, hot)[0]
        assert np.all(bound <= exact) and np.all(sharp <= exact)
        assert np.all(where >= cpos)  # a maximum lies in its own tail


class _FakeProblem:
    """Prescribed D values, to check the pruned scan's bookkeeping and tie rule."""

    clauset = True

    def __init__(self, d: np.ndarray, shrink: np.ndarray) -> None:
        self.d, self.shrink, self.total = d, shrink, 10_000  # large: forces the pruned path

    def exact(self, cpos, alpha):
        return self.d[cpos], cpos

    def lower_bound(self, cpos, alpha):  # valid bounds whose order scrambles tied candidates
        return self.d[cpos] * self.shrink[cpos]

    def terms_max(self, cpos, alpha, offs, where=False):
        return self.d[cpos] * 0.9, None


def test_pruned_scan_keeps_the_first_of_tied_minima():
    from alphalora.spectral.fits import scan

    rng = np.random.default_rng(3)
    for _ in range(20):
        d = rng.choice([0.2, 0.25, 0.3, 0.5, 0.9], size=200)
        prob = _FakeProblem(d, rng.uniform(0.3, 1.0, d.size))
        got, best_d = scan._best(prob, np.arange(d.size), np.full(d.size, 2.0), True)
        assert best_d == d.min() and got == int(np.argmin(d))  # argmin: the first minimum


def test_clauset_negative_values_are_dropped_like_zeros():
    x = DATA["pareto_300"]
    with_neg = np.r_[-2.0, -1e-9, x]
    assert fit_clauset(with_neg) == fit_clauset(x)
    alpha, xmin, _ = _powerlaw_ref(with_neg)  # powerlaw keeps them (no exact 0) yet agrees
    assert _rel(fit_clauset(with_neg).alpha, alpha) <= 1e-6 and fit_clauset(x).xmin == xmin


def test_powerlaw_mode_is_the_package():
    x = DATA["t25_200x150"]
    ref = fit_power_law(x, mode="powerlaw")
    ours = fit_power_law(x, mode="clauset")
    assert ref.mode == "powerlaw" and ref.ok
    assert _rel(ours.alpha, ref.alpha) <= 1e-6 and ours.xmin == ref.xmin
    assert _rel(ours.D, ref.D) <= 1e-6 and ours.n_tail == ref.n_tail


# --------------------------------------------------------------------- hill-peak reference


def _hill_loop(
    eigs, bins: int = 100, quirk: bool = False
) -> tuple[float, float, float, float, int]:
    """METHOD §3 mode 1 transcribed literally: one candidate at a time, no vectorisation.

    Returns (alpha, xmin, D, peak, n_tail); with ties n_tail = N − i counts from the candidate's
    own index, as the reference loop does."""
    lam = np.sort(np.asarray(eigs, dtype=float))
    lam = lam[lam > 0]
    size = len(lam)
    logs = np.log10(lam)
    edges = np.linspace(logs.min(), logs.max(), bins + 1)
    counts = []
    for b in range(bins):
        upper_ok = logs <= edges[b + 1] if b == bins - 1 else logs < edges[b + 1]
        counts.append(int(np.sum((logs >= edges[b]) & upper_ok)))
    fullest = counts.index(max(counts))
    peak = 10 ** edges[fullest]
    lower = np.log10(0.95 * peak) if quirk else 0.95 * peak
    upper = 1.5 * peak
    best = (2.0, None, None, None)  # (D, alpha, xmin, n)
    for i in range(size - 1):
        xmin = lam[i]
        if xmin < lower:
            continue
        if xmin > upper:
            break
        n = size - i
        tail = lam[i:]
        with np.errstate(divide="ignore"):  # a tied top gives a zero sum: alpha = inf
            alpha = 1 + n / np.sum(np.log(tail / xmin))
        d = 1.0
        if alpha > 1:
            d = np.max(np.abs(1 - (tail / xmin) ** (1 - alpha) - np.arange(n) / n))
        if d < best[0]:
            best = (d, alpha, xmin, n)
    return best[1], best[2], best[0], peak, best[3]


@pytest.mark.parametrize("quirk", [False, True])
@pytest.mark.parametrize("name", sorted(DATA))
def test_hill_peak_equals_plain_loop(name, quirk):
    x = DATA[name]
    alpha, xmin, d, peak, n_tail = _hill_loop(x, quirk=quirk)
    fit = fit_hill_peak(x, log10_quirk=quirk)
    assert fit.ok and fit.mode == "hill-peak"
    assert fit.peak == pytest.approx(peak, rel=1e-12)
    assert fit.xmin == pytest.approx(xmin, rel=1e-10)
    assert fit.alpha == pytest.approx(alpha, rel=1e-10)
    assert fit.D == pytest.approx(d, rel=1e-10)
    assert fit.n_tail == n_tail
    assert fit == fit_hill_peak(x, log10_quirk=quirk, prune=False)


def test_hill_peak_other_bin_counts():
    x = DATA["t25_200x150"]
    for bins in (10, 37, 250):
        alpha, xmin, d, _, _ = _hill_loop(x, bins=bins)
        fit = fit_hill_peak(x, bins=bins)
        assert (fit.alpha, fit.xmin, fit.D) == pytest.approx((alpha, xmin, d), rel=1e-10)


def test_log10_quirk_changes_the_answer():
    """With a peak well above 1, log10(0.95·peak) admits candidates far below the peak."""
    x = _esd(np.random.default_rng(0).standard_normal((120, 60)))
    plain, quirk = fit_hill_peak(x), fit_hill_peak(x, log10_quirk=True)
    ref_plain, ref_quirk = _hill_loop(x), _hill_loop(x, quirk=True)
    assert plain.xmin == pytest.approx(ref_plain[1], rel=1e-12)
    assert quirk.xmin == pytest.approx(ref_quirk[1], rel=1e-12)
    assert quirk.xmin < 0.95 * quirk.peak <= plain.xmin
    assert abs(quirk.alpha - plain.alpha) > 0.1


# --------------------------------------------------------------------------- sanity, edges


def test_gaussian_alpha_larger_than_student_t():
    """Gaussian ESDs (Marchenko–Pastur, no power law) fit far larger α than Student-t ones.

    Single fits are noisy (hill-peak especially), so compare medians over 8 matrices."""
    rng = np.random.default_rng(7)
    gauss = [_esd(rng.standard_normal((400, 200))) for _ in range(8)]
    heavy = [_esd(rng.standard_t(2.5, (400, 200))) for _ in range(8)]
    med = {
        mode: (
            np.median([fit_power_law(x, mode=mode).alpha for x in gauss]),
            np.median([fit_power_law(x, mode=mode).alpha for x in heavy]),
        )
        for mode in ("clauset", "hill-peak")
    }
    assert med["clauset"][0] > 1.5 * med["clauset"][1] and med["clauset"][0] > 5.0, med
    assert med["clauset"][1] < 4.5, med
    assert med["hill-peak"][0] > 1.3 * med["hill-peak"][1], med


EDGE_CASES = {
    "empty": np.array([]),
    "one": np.array([3.0]),
    "all_equal": np.full(10, 2.5),
    "zeros_and_one_value": np.array([0.0, 0.0, 1.0, 1.0]),
    "all_zero": np.zeros(5),
    "negative": np.array([-1.0, -2.0]),
    "nan": np.array([1.0, np.nan, 3.0, 4.0]),
    "inf": np.array([1.0, 2.0, np.inf]),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_degenerate_inputs_give_a_reason_not_an_exception(name, mode):
    fit = fit_power_law(EDGE_CASES[name], mode=mode)
    assert isinstance(fit, PowerLawFit)
    assert not fit.ok and fit.reason and np.isnan(fit.alpha)
    assert fit.mode == mode


@pytest.mark.parametrize("mode", ["clauset", "hill-peak"])
def test_extreme_values_do_not_crash(mode):
    values = [
        np.array([1e-300, 1e-200, 1e-100, 1.0, 1e100, 1e200, 1e300]),
        np.array([5e-324, 1e-310, 1.0, 2.0, 1e308]),
        np.array([1.0, 1.0 + 2e-16, 1.0 + 4e-16]),
        np.array([1.0, 2.0]),
    ]
    for x in values:
        fit = fit_power_law(x, mode=mode)
        assert isinstance(fit, PowerLawFit)
        if fit.ok:
            assert fit.alpha > 1.0 and 0.0 <= fit.D <= 1.0 and fit.xmin in x


def test_two_values_match_powerlaw():
    x = np.array([1.0, 2.0])
    alpha, xmin, d = _powerlaw_ref(x)
    fit = fit_clauset(x)
    assert (fit.alpha, fit.xmin, fit.D) == pytest.approx((alpha, xmin, d), rel=1e-12)


def test_dispatcher_errors_and_inputs():
    with pytest.raises(AlphaLoRAError, match="hill-peak, clauset, powerlaw"):
        fit_power_law([1.0, 2.0, 3.0], mode="wweight")
    with pytest.raises(AlphaLoRAError, match="Bad option"):
        fit_power_law([1.0, 2.0, 3.0], mode="clauset", bins=10)
    with pytest.raises(AlphaLoRAError, match="1-D"):
        fit_power_law(np.ones((3, 3)))
    with pytest.raises(AlphaLoRAError, match="bins"):
        fit_hill_peak([1.0, 2.0, 3.0], bins=0)
    torch = pytest.importorskip("torch")
    x = DATA["pareto_300"]
    assert fit_clauset(torch.tensor(x)) == fit_clauset(x)
    assert fit_hill_peak(list(x)) == fit_hill_peak(x)


def test_fit_is_frozen():
    fit = fit_clauset(DATA["pareto_15"])
    with pytest.raises(AttributeError):
        fit.alpha = 2.0  # type: ignore[misc]


# ------------------------------------------------------------------------------ torch batch


@pytest.mark.parametrize("quirk", [False, True])
def test_fit_many_torch_on_cpu_equals_numpy(quirk):
    """The brute-force torch scan (the GPU engine), run on the CPU, picks the same fits."""
    names = ["gauss_40x30", "t2_100x50", "ties_rounded", "ties_top", "zeros_rank_def"]
    spectra = [DATA[n] for n in names] + [DATA["t2_100x50"] * 3.0, EDGE_CASES["one"]]
    for mode in ("clauset", "hill-peak"):
        kw = {"log10_quirk": quirk} if mode == "hill-peak" else {}
        single = [fit_power_law(x, mode=mode, **kw) for x in spectra]
        for engine in ("torch", "numpy", "auto"):
            many = fit_many(spectra, mode=mode, device="cpu", log10_quirk=quirk, engine=engine)
            assert len(many) == len(single)
            for a, b in zip(many, single, strict=True):
                if b.ok:
                    assert a.xmin == b.xmin and a.n_tail == b.n_tail and a.peak == b.peak
                    assert a.alpha == pytest.approx(b.alpha, rel=1e-12)
                    assert a.D == pytest.approx(b.D, rel=1e-12)
                else:
                    assert not a.ok and a.reason == b.reason


def test_fit_many_options():
    assert fit_many([], mode="clauset", device="cpu") == []
    ref = fit_many([DATA["pareto_15"]], mode="powerlaw")[0]
    assert ref.mode == "powerlaw" and ref.ok
    with pytest.raises(AlphaLoRAError, match="engine"):
        fit_many([DATA["pareto_15"]], engine="jax")
    with pytest.raises(AlphaLoRAError, match="valid modes"):
        fit_many([DATA["pareto_15"]], mode="ww")


@pytest.mark.gpu
def test_fit_many_cuda_equals_numpy():
    spectra = [DATA[n] for n in sorted(DATA)]
    for mode in ("clauset", "hill-peak"):
        many = fit_many(spectra, mode=mode, device="cuda")
        for a, x in zip(many, spectra, strict=True):
            b = fit_power_law(x, mode=mode)
            assert a.xmin == b.xmin and a.n_tail == b.n_tail
            assert a.alpha == pytest.approx(b.alpha, rel=1e-9)
            assert a.D == pytest.approx(b.D, rel=1e-9)


# ----------------------------------------------------------------------------- numpy batch


def _same_fit(a: PowerLawFit, b: PowerLawFit) -> bool:
    """Equal fits: the same candidate (xmin, n_tail, peak) and α, D to 1e-12 (NaN == NaN)."""

    def close(u: float, v: float) -> bool:
        return (np.isnan(u) and np.isnan(v)) or abs(u - v) <= 1e-12 * max(abs(v), 1e-300)

    return (
        close(a.alpha, b.alpha)
        and close(a.D, b.D)
        and (a.xmin == b.xmin or (np.isnan(a.xmin) and np.isnan(b.xmin)))
        and (a.n_tail, a.n, a.mode, a.peak, a.reason) == (b.n_tail, b.n, b.mode, b.peak, b.reason)
    )


def _batch_spectra() -> list[np.ndarray]:
    """Mixed lengths (several per length, so that rows really stack), ties, zeros that change
    a spectrum's effective length, tiny and degenerate spectra, in a shuffled order."""
    rng = np.random.default_rng(11)
    out = [_esd(rng.standard_normal((60, 40))) for _ in range(4)]  # N = 40
    out += [_esd(rng.standard_t(2.5, (90, 50))) * 10.0 ** rng.uniform(-3, 3) for _ in range(5)]
    out += [np.round(rng.pareto(1.5, 50) + 1.0, 1) for _ in range(3)]  # N = 50 with ties
    out += [rng.integers(1, 9, 40).astype(float)]  # N = 40, heavy ties
    # 10 zeros / negatives dropped: effective N = 40, stacked with the rows above
    out += [np.r_[np.zeros(7), [-1e-9, -3.0, 0.0], _esd(rng.standard_normal((70, 40)))]]
    out += [np.r_[np.zeros(3), _esd(rng.standard_t(3.0, (80, 37)))]]  # N = 37 alone
    out += [DATA[n] for n in ("pareto_15", "ties_top", "zeros_rank_def", "lognormal_500")]
    out += [np.array([1.0, 2.0]), np.array([3.0, 1.0, 2.0]), np.array([1.0, 3e20, 3.1e20])]
    out += [np.array([1e-300, 1e-200, 1e-100, 1.0, 1e100, 1e200, 1e300])]
    out += [np.array([5e-324, 1e-310, 1.0, 2.0, 1e308]), np.array([1.0, 1.0 + 2e-16, 1.0 + 4e-16])]
    out += [EDGE_CASES[n] for n in sorted(EDGE_CASES)]
    return [out[k] for k in rng.permutation(len(out))]


@pytest.mark.parametrize("quirk", [False, True])
def test_numpy_batch_equals_single_hill_peak(quirk):
    spectra = _batch_spectra()
    single = [fit_hill_peak(x, log10_quirk=quirk) for x in spectra]
    assert any(not f.ok and "peak window" in f.reason for f in single)  # the empty-window case
    many = fit_many(spectra, "hill-peak", device="cpu", log10_quirk=quirk, engine="numpy")
    assert len(many) == len(spectra)
    for k, (a, b) in enumerate(zip(many, single, strict=True)):  # order preserved
        assert _same_fit(a, b), (k, a, b)
    assert sum(f.ok for f in many) >= 20


def test_numpy_batch_equals_single_clauset():
    """Rows without ties are fitted batched, rows with ties by the single fit: same fits."""
    spectra = _batch_spectra()
    many = fit_many(spectra, "clauset", device="cpu", engine="numpy")
    for k, (a, x) in enumerate(zip(many, spectra, strict=True)):
        assert _same_fit(a, fit_clauset(x)), (k, a)


@pytest.mark.parametrize("mode", ["hill-peak", "clauset"])
def test_numpy_batch_in_small_blocks(monkeypatch, mode):
    """Tiny work blocks (many row stacks, many pair blocks, chunked sharpening) and a first
    round of one candidate per row change the work, never the fits."""
    from alphalora.spectral.fits import batch_scan, batched

    spectra = _batch_spectra()
    ref = fit_many(spectra, mode, device="cpu", engine="numpy")
    monkeypatch.setattr(batched, "_ROW_BLOCK", 100)
    monkeypatch.setattr(batch_scan, "_PAIR_BLOCK", 64)
    monkeypatch.setattr(batch_scan, "_FIRST_EXACT_BATCH", 1)
    small = fit_many(spectra, mode, device="cpu", engine="numpy")
    for a, b in zip(small, ref, strict=True):
        assert _same_fit(a, b)


def test_numpy_batch_auto_engine_and_inputs():
    """engine='auto' on a CPU mixes batched groups and single fits; tensors and lists work."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    group = [_esd(rng.standard_t(2.5, (70, 45))) for _ in range(7)]
    spectra = [*group, DATA["pareto_300"], torch.tensor(DATA["t2_100x50"]), list(group[0])]
    auto = fit_many(spectra, "hill-peak", device="cpu")
    for a, x in zip(auto, spectra, strict=True):
        assert _same_fit(a, fit_hill_peak(x))
    with pytest.raises(AlphaLoRAError, match="1-D"):
        fit_many([group[0], np.ones((3, 3))], "hill-peak", device="cpu", engine="numpy")


class _FakeRows:
    """Prescribed D per (row, candidate), to check the batched scan's bookkeeping and ties."""

    def __init__(self, d: np.ndarray, shrink: np.ndarray) -> None:
        self.d, self.shrink, self.size = d, shrink, 10_000

    def lower_bound(self, rows, i, alpha):  # valid bounds whose order scrambles ties
        return self.d[rows, i] * self.shrink[rows, i]

    def exact(self, rows, i, alpha):
        return self.d[rows, i], i

    def terms_max(self, rows, i, alpha, pos):
        return self.d[rows, i] * 0.9


def test_batched_scan_keeps_the_first_of_tied_minima():
    from alphalora.spectral.fits import batch_scan

    rng = np.random.default_rng(4)
    d = rng.choice([0.2, 0.25, 0.3, 0.5, 0.9], size=(30, 150))
    ok = rng.random(d.shape) < 0.8
    ok[3] = False  # a row without candidates
    cp = np.broadcast_to(np.arange(d.shape[1]), d.shape)
    rows = _FakeRows(d, rng.uniform(0.3, 1.0, d.shape))
    best, best_d = batch_scan.scan_rows(rows, cp, np.full(d.shape, 2.0), ok)
    masked = np.where(ok, d, np.inf)
    assert best[3] == -1 and np.isinf(best_d[3])
    rest = np.r_[0:3, 4 : d.shape[0]]
    assert np.array_equal(best[rest], masked[rest].argmin(axis=1))  # argmin: the first one
    assert np.array_equal(best_d[rest], masked[rest].min(axis=1))


def test_row_histograms_equal_numpy_histogram():
    """Values exactly on bin edges (where a width-based guess goes wrong), ties, equal logs."""
    from alphalora.spectral.fits import batched

    rng = np.random.default_rng(9)
    rows = []
    for _ in range(300):
        first, last = sorted(rng.uniform(-40, 40, 2))
        bins = int(rng.integers(1, 120))
        edges = np.arange(bins + 1) * ((last - first) / bins) + first
        edges[-1] = last
        rows.append(
            (bins, np.sort(np.r_[edges, rng.choice(edges, 30), rng.uniform(first, last, 20)]))
        )
    rows.append((10, np.full(8, 0.25)))  # one value: numpy widens the range by ±0.5
    for bins, lg in rows:
        stack = np.stack([lg, lg])  # two rows: the row offsets work
        edges, counts = batched._row_histograms(stack, bins)
        ref_counts, ref_edges = np.histogram(lg, bins=bins)
        assert np.array_equal(counts[0], ref_counts) and np.array_equal(counts[1], ref_counts)
        assert np.allclose(edges[0], ref_edges, rtol=0, atol=1e-12 * (1 + np.abs(ref_edges).max()))


@pytest.mark.parametrize("mode", ["hill-peak", "clauset"])
def test_numpy_batch_values_on_the_window_bounds(mode):
    """Eigenvalues exactly at 0.95·peak and 1.5·peak are candidates, batched as single."""
    from alphalora.spectral.fits import hill

    rng = np.random.default_rng(12)
    spectra = []
    while len(spectra) < 6:
        x = np.sort(_esd(rng.standard_normal((80, 60))))
        peak = hill.hill_window(x, 100, False)[0]
        y = np.sort(np.r_[x, 0.95 * peak, 1.5 * peak])
        peak_y, _, _, cand = hill.hill_window(y, 100, False)
        if peak_y == peak and y[-1] > 1.5 * peak:
            assert y[cand[0]] == 0.95 * peak and y[cand[-1]] == 1.5 * peak
            spectra.append(y)
    single = [fit_power_law(y, mode=mode) for y in spectra]
    many = fit_many(spectra, mode, device="cpu", engine="numpy")
    for a, b in zip(many, single, strict=True):
        assert _same_fit(a, b)
