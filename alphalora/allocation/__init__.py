"""Stage 2, allocate: layer alphas → LoRA experts (or ranks) per layer, MoLA's fixed shapes,
parameter counts, published presets. Pure functions over numbers."""
