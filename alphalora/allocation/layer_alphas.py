"""Layer alphas from an ``analyze`` table: the input the allocation rules take (the mean α per
layer by default, or another layer score, see :mod:`alphalora.spectral.layer_scores`)."""

from __future__ import annotations

from typing import Any

from alphalora.spectral.layer_scores import layer_scores


def layer_alphas_from_table(
    df: Any, method: str | None = "mean", exclude_unreliable: bool = False
) -> list[float]:
    """Layer score per layer from an ``analyze`` table (one row per matrix), layers in order.

    Rows without a layer (embeddings, lm_head) are skipped and non-finite alphas ignored; every
    layer between the first and the last must have at least one finite alpha. ``method`` is
    ``mean`` (AlphaLoRA), ``median`` or ``trimmed``; ``exclude_unreliable`` drops flagged fits.
    """
    return layer_scores(df, method, exclude_unreliable)
