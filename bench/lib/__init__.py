"""Shared code of stackgen's benchmarks (trace generator, simulator, stack generator)."""
