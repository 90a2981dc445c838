"""Stage 1, analyse: model weights → eigenvalue spectra → power-law fits → per-matrix and
per-layer metrics (sources, naming, spectra, fits, metrics, analysis, cache)."""
