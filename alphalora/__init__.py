"""AlphaLoRA Studio: layer-wise LoRA expert allocation from heavy-tailed spectral analysis.

The library is plain Python (no Streamlit): model sources → spectra → power-law fits →
layer table → expert allocation → MoE-LoRA fine-tune → run store. See README.md.
"""

__version__ = "0.1.0"
