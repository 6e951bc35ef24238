"""Benchmarks (not tests): see BENCHMARKS.md for the commands and results."""
