"""Stage 4, compare: background jobs (start, cancel, resume, reconcile) and run summaries and
comparisons read from the run store."""
