"""Benchmarks of the daily cycle: `python -m bench`.

See bench/__main__.py for the options and docs/performance.md for the results.
"""
