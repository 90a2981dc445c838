"""Fine-tuning tasks: prompt → answer examples from the shipped demo data, user JSONL/CSV/JSON
files or Hugging Face datasets, split into train and eval (:mod:`.load` picks the source)."""
