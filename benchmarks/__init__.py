"""Benchmarks: each ``bench_*.py`` module has ``run() -> list[Figure]``; ``make bench`` prints them all."""
