"""Stage 3, fine-tune: the MoE-LoRA layer and its injection, adapter files, tasks and scoring,
the training configuration and the training session."""
