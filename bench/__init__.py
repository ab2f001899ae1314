"""Benchmarks of dramatiq-reliable against bare Dramatiq, same run, same brokers.

Run ``python -m bench.run --help`` from the repository root; see ``bench/README.md``.
"""
