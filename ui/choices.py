"""Pure helpers for what the user chose across pages: the shared β range, short allocation
labels for titles, which runs to watch or compare by default, and which stored allocation
belongs to the current model. No Streamlit, no I/O (tested directly)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from alphalora.allocation.model import Allocation

BETA_MIN = 0.0
BETA_MAX = 10.0
BETA_STEP = 0.1
"""The β slider of the Allocation and Learn pages: one range, so both offer the same values."""

_BETA = re.compile(r"β=([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")
_ZERO_LAYERS = re.compile(r"layer\(s\) \[([0-9, ]*)\] got 0 experts")
_MAX_LISTED = 4


def display_label(allocation: Allocation) -> str:
    """The allocation's label for titles and lists: β to three significant digits (τ = 1.67
    gives β = 0.599, not 0.598802) and a long list of 0-expert layers given as a count."""

    def zero(match: re.Match[str]) -> str:
        ids = [s for s in match.group(1).replace(" ", "").split(",") if s]
        if len(ids) <= _MAX_LISTED:
            return match.group(0)
        return f"{len(ids)} layers got 0 experts"

    text = allocation.label or allocation.method
    text = _BETA.sub(lambda m: f"β={float(m.group(1)):.3g}", text)
    return _ZERO_LAYERS.sub(zero, text)


def allocation_key(kind: str, ref: str, fit: str) -> list[str]:
    """What a stored allocation is tied to: the model (kind, reference) and the fit whose
    alphas made it (a list, so it survives a JSON round trip unchanged)."""
    return [str(kind), str(ref), str(fit)]


def allocation_for(
    stored: Mapping[str, Any] | None, stored_for: Sequence[str] | None, key: Sequence[str]
) -> dict | None:
    """The stored allocation dict when it was made for ``key`` (model and fit), else None."""
    if not isinstance(stored, Mapping) or not stored or list(stored_for or []) != list(key):
        return None
    return dict(stored)


def watch_selection(
    options: Sequence[str],
    active: Sequence[str],
    previous_options: Sequence[str],
    previous: Sequence[str],
    limit: int = 4,
) -> list[str]:
    """Runs to watch: every run new to the list (just launched, or started elsewhere) joins,
    active ones first, then what the user kept; a run the user removed stays removed while it
    is listed. At most ``limit``."""
    seen = set(previous_options)
    fresh = [r for r in options if r not in seen]
    kept = [r for r in previous if r in options]
    ordered = [r for r in fresh if r in active] + [r for r in kept if r in active]
    ordered += fresh + kept
    return list(dict.fromkeys(ordered))[:limit]


def default_comparison(
    options: Sequence[str], active: Sequence[str], finished: Sequence[str], limit: int = 3
) -> list[str]:
    """Runs compared by default: running ones first (so Cancel is at hand), then completed
    ones, else the newest listed."""
    picked = [r for r in options if r in active] + [r for r in options if r in finished]
    return list(dict.fromkeys(picked or list(options)))[:limit]
