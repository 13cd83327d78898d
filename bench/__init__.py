"""Benchmarks: each prints its figures against a baseline measured in the same run.

Run from the repository root as modules, so `tests.peers` (the real peers) imports:

    .venv/bin/python -m bench.uplink --help
"""
