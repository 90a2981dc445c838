"""Continuous power-law fits of eigenvalue tails (docs/method.md §3), exact and vectorised.

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
``fit_many`` stacks spectra of equal length and runs the same pruned scan on all rows at
once in numpy (on a CPU: ~100 µs of numpy call overhead per single fit becomes a share of one
batch), or brute-force scans batched in torch on a GPU.

Modules: :mod:`.result` (:class:`PowerLawFit`), :mod:`.prepare` (input checks, α of every
candidate), :mod:`.scan` (the pruned KS scan of one spectrum), :mod:`.hill` and :mod:`.clauset`
(the two modes), :mod:`.reference` (mode ``powerlaw``: the powerlaw package itself),
:mod:`.batch_scan` and :mod:`.batched` (``fit_many``'s numpy engine), :mod:`.torch_engine`
(its GPU engine) and :mod:`.dispatch` (:func:`fit_power_law`, :func:`fit_many`). The public
entry points are re-exported here for the app, the benchmarks and the tests; library code
imports them from their defining modules.
"""

from alphalora.spectral.fits.clauset import fit_clauset
from alphalora.spectral.fits.dispatch import fit_many, fit_power_law
from alphalora.spectral.fits.hill import fit_hill_peak
from alphalora.spectral.fits.result import PowerLawFit

__all__ = ["PowerLawFit", "fit_clauset", "fit_hill_peak", "fit_many", "fit_power_law"]
