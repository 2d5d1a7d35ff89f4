"""End-to-end xLSTM portfolio model: encoder, heads, network, losses, checkpoints.

The portfolio layer it ends in is :class:`portfolio.layer.PortfolioLayer` (package ``portfolio``).

This package imports neither Ray nor the data pipeline; a model is built from its config alone.
"""
