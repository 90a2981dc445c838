"""Mean α per layer from an ``analyze`` table: the input the allocation rules take."""

from __future__ import annotations

from typing import Any

import numpy as np

from alphalora.errors import AlphaLoRAError


def layer_alphas_from_table(df: Any) -> list[float]:
    """Mean alpha per layer from an ``analyze`` table (one row per matrix), layers in order.

    Rows without a layer (embeddings, lm_head) are skipped and non-finite alphas ignored; every
    layer between the first and the last must have at least one finite alpha.
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        df = pd.DataFrame(df)
    missing = [c for c in ("layer", "alpha") if c not in df.columns]
    if missing:
        raise AlphaLoRAError(
            f"The analysis table lacks column(s) {missing}; expected an `analyze` output with "
            "one row per matrix and columns name, layer, kind, alpha."
        )
    layer = pd.to_numeric(df["layer"], errors="coerce")
    alpha = pd.to_numeric(df["alpha"], errors="coerce").astype(float)
    rows = layer.notna()
    if not rows.any():
        raise AlphaLoRAError("The analysis table has no rows with a layer index.")
    layer = layer[rows]
    if not np.all(np.equal(np.mod(layer.to_numpy(dtype=float), 1), 0)):
        raise AlphaLoRAError("The analysis table's layer column must hold whole numbers.")
    layer = layer.astype(np.int64)
    alpha = alpha[rows].where(np.isfinite(alpha[rows]))
    means = alpha.groupby(layer).mean().sort_index()
    expected = range(int(means.index.min()), int(means.index.max()) + 1)
    gaps = sorted(set(expected) - set(int(i) for i in means.index))
    if gaps:
        raise AlphaLoRAError(f"The analysis table has no rows for layer(s) {gaps}.")
    empty = [int(i) for i, v in means.items() if not np.isfinite(v)]
    if empty:
        raise AlphaLoRAError(
            f"Layer(s) {empty} have no finite alpha in the analysis table; re-run the analysis "
            "for them (or check the fit warnings)."
        )
    return [float(v) for v in means.to_numpy()]
