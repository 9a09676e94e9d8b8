"""Benchmarks of hotpath, one module per family (bench_<family>.py), run through harness.py."""
