"""Experiments: commands whose numbers BENCHMARKS.md records."""
