"""Matplotlib figures (Agg, no pyplot state): attention sparsity, accuracy and fidelity curves, and
kept tokens drawn over screenshots. Each module renders from plain data and writes PNG files."""
