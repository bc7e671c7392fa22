"""Benchmark runner: Hydra configs, cached stages, metrics, tracking and reporting."""
