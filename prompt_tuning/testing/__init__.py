"""Fixtures shared by tests and benchmarks."""
