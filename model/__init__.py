"""End-to-end xLSTM portfolio model: encoder, heads, portfolio layer, losses.

This package imports neither Ray nor the data pipeline; a model is built from its config alone.
"""
