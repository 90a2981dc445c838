"""AlphaLoRA Studio: layer-wise LoRA expert allocation from heavy-tailed spectral analysis.

The library is plain Python (no Streamlit), one package per stage of the data flow:
``spectral`` (model → spectra → power-law fits → layer table), ``allocation`` (layer alphas →
experts per layer), ``finetune`` (MoE-LoRA training) and ``runs`` (jobs and comparisons), over
the run store in ``store``. The main entry points are importable from here::

    import alphalora
    result = alphalora.analyze("embedded")                    # AnalysisResult
    plan = alphalora.allocate(result.layer_alphas, budget=150)  # Allocation
    summary = alphalora.train("demo-cpu")                     # a fine-tune, recorded
    alphalora.RunStore().list_runs()

They are loaded on first use, so ``import alphalora`` stays cheap (no torch import).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_ENTRY_POINTS = {
    "analyze": "alphalora.spectral.analysis",
    "AnalysisOptions": "alphalora.spectral.analysis_types",
    "allocate": "alphalora.allocation.allocate",
    "Allocation": "alphalora.allocation.model",
    "train": "alphalora.finetune.train",
    "RunStore": "alphalora.store.run_store",
    "AlphaLoRAError": "alphalora.errors",
}
__all__ = [
    "AlphaLoRAError",
    "AnalysisOptions",
    "Allocation",
    "RunStore",
    "__version__",
    "allocate",
    "analyze",
    "train",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from alphalora.allocation.allocate import allocate
    from alphalora.allocation.model import Allocation
    from alphalora.errors import AlphaLoRAError
    from alphalora.finetune.train import train
    from alphalora.spectral.analysis import analyze
    from alphalora.spectral.analysis_types import AnalysisOptions
    from alphalora.store.run_store import RunStore


def __getattr__(name: str) -> Any:
    """Load an entry point on first access (PEP 562)."""
    module = _ENTRY_POINTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alphalora' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
