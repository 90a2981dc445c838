"""``fit_many``'s torch engine (for GPUs): brute-force KS scans of stacked spectra of equal
length, no pruning, the O(N²) work done in blocks on the device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from alphalora.spectral.fits.clauset import finish_clauset
from alphalora.spectral.fits.hill import ALPHA_LE_1, empty_window, finish_hill, hill_window
from alphalora.spectral.fits.prepare import candidate_alphas, first_occurrences, prepare
from alphalora.spectral.fits.result import PowerLawFit, no_fit


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


def fit_many_torch(
    eigs_list: Sequence[Any], mode: str, bins: int, log10_quirk: bool, dev: Any
) -> list[PowerLawFit]:
    """``fit_many``'s torch engine: spectra with something to fit grouped by their length and
    scanned in batches on ``dev`` (a torch device); results in input order."""
    out: list[PowerLawFit | None] = [None] * len(eigs_list)
    groups: dict[int, list[tuple[int, np.ndarray, Any]]] = {}
    for j, eigs in enumerate(eigs_list):
        x, fail = prepare(eigs, mode)
        if fail is not None:
            out[j] = fail
            continue
        extra: Any = None
        if mode == "hill-peak":
            peak, lo, hi, cand = hill_window(x, bins, log10_quirk)
            if cand.size == 0:
                out[j] = empty_window(x.size, lo, hi, peak)
                continue
            extra = (peak, cand)
        groups.setdefault(x.size, []).append((j, x, extra))
    clauset = mode == "clauset"
    for size, items in groups.items():
        per = max(1, (1 << 22) // (size * size))  # spectra per torch batch
        for s in range(0, len(items), per):
            part = items[s : s + per]
            xs = np.stack([x for _, x, _ in part])
            alpha = np.stack([candidate_alphas(x) for _, x, _ in part])
            cand = np.zeros(xs.shape, dtype=bool)
            ev = np.zeros(xs.shape, dtype=bool)
            for r, (_, x, extra) in enumerate(part):
                if clauset:
                    ev[r, first_occurrences(x)] = True
                    cand[r] = ev[r] & (x < x[-1])
                else:
                    ev[r] = True
                    cand[r, extra[1]] = True
            winners = _torch_winners(xs, cand, ev, alpha, clauset, dev)
            for (j, x, extra), w in zip(part, winners, strict=True):
                if clauset:
                    out[j] = finish_clauset(x, w)
                elif w < 0:
                    out[j] = no_fit(mode, x.size, ALPHA_LE_1, peak=extra[0])
                else:
                    out[j] = finish_hill(x, w, extra[0])
    return [o for o in out if o is not None]
