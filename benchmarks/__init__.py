"""Reproducible measurements of dynprune; each script writes JSON under ``benchmarks/results/``."""
