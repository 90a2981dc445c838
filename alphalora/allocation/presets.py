"""Published numbers that let the app and CLI show the papers' setting without a download."""

from __future__ import annotations

from typing import Any

from alphalora.allocation.params import module_shapes_from_config
from alphalora.errors import AlphaLoRAError

# Llama-2-7B layer-mean alphas, layers 0 → 31, from the `hill-peak` fit (PL_Alpha_Hill) as cached
# by AlphaPruning (Lu et al., haiquanlu/AlphaPruning) and used by AlphaLoRA (Qing et al., EMNLP
# 2024, arXiv 2410.10054). Listed in docs/method.md ("Published numbers").
LLAMA2_7B_LAYER_ALPHAS: tuple[float, ...] = (
    2.136, 2.706, 3.123, 3.124, 3.142, 3.133, 3.013, 3.072,
    2.808, 2.910, 2.714, 2.676, 2.844, 3.013, 3.052, 3.121,
    3.439, 3.688, 3.976, 3.805, 4.334, 4.274, 4.197, 4.121,
    4.195, 4.093, 3.699, 4.244, 4.158, 4.085, 4.278, 3.483,
)  # fmt: skip

# AlphaLoRA's published expert counts for Mistral-7B-v0.1, T = 160, β = 2.5, official mode
# (Qing et al. 2024, peijunallin/alphalora `run_all.sh`); top-k is 1 where n = 1, else 2.
MISTRAL_7B_PUBLISHED_ALLOCATION: tuple[int, ...] = (
    1, 3, 5, 4, 4, 5, 4, 4, 3, 3, 2, 2, 2, 2, 3, 4,
    9, 4, 8, 7, 8, 7, 8, 7, 9, 8, 6, 10, 6, 7, 3, 2,
)  # fmt: skip

LLAMA2_7B_CONFIG: dict[str, int] = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "num_hidden_layers": 32,
}
MISTRAL_7B_CONFIG: dict[str, int] = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
}

LLAMA2_7B_MODULE_SHAPES: dict[str, tuple[int, int]] = module_shapes_from_config(LLAMA2_7B_CONFIG)
MISTRAL_7B_MODULE_SHAPES: dict[str, tuple[int, int]] = module_shapes_from_config(MISTRAL_7B_CONFIG)

PAPER_BUDGET = 160
PAPER_BETA = 2.5


def paper_preset() -> dict[str, Any]:
    """The AlphaLoRA paper's Llama-2-7B setting: layer alphas, shapes, budget and β."""
    return {
        "name": "llama2-7b",
        "model_id": "meta-llama/Llama-2-7b-hf",
        "description": (
            "Llama-2-7B layer-mean alphas (hill-peak fit, AlphaPruning's cache) as used by "
            "AlphaLoRA: 32 layers, all 7 projections, budget 160 experts, β = 2.5."
        ),
        "family": "llama",
        "alphas": list(LLAMA2_7B_LAYER_ALPHAS),
        "n_layers": len(LLAMA2_7B_LAYER_ALPHAS),
        "module_shapes": dict(LLAMA2_7B_MODULE_SHAPES),
        "budget": PAPER_BUDGET,
        "beta": PAPER_BETA,
        "fit": "hill-peak",
    }


PRESETS = {"llama2-7b": paper_preset}


def get_preset(name: str) -> dict[str, Any]:
    """A preset by name (``llama2-7b``)."""
    key = name.strip().lower().replace("_", "-")
    if key in ("llama-2-7b", "llama2", "paper"):
        key = "llama2-7b"
    if key not in PRESETS:
        raise AlphaLoRAError(f"Unknown preset {name!r}; available: {', '.join(PRESETS)}.")
    return PRESETS[key]()
