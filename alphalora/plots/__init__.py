"""Plotly figure builders: data in, figure out; no I/O and no Streamlit."""
