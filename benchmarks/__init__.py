"""Benchmarks (run as modules, e.g. ``python -m benchmarks.portfolio_layer --help``)."""
