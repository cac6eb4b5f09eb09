"""Benchmarks: `python -m bench` (or `make bench`) prints figures against baselines measured
in the same run and writes bench/results.json."""
