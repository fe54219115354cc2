"""Lanes benchmarks: each figure beside bare RQ's, measured on the same machine in the same run.

`python -m bench` (or `make bench`) runs them all; see `bench/README.md`.
"""
