"""Benchmarks of the functional Transformer on the NumPy and JAX backends.

Run `python -m benchmarks --help` from the repository root; see docs/benchmarks.md for what is
measured and how FLOPs are counted. The studies behind the docs' other findings are apart, in
`benchmarks.studies`. This package file imports nothing heavy on purpose:
`python -m benchmarks` must be able to clean its environment and re-execute itself before NumPy
is imported (see `benchmarks.env_guard`).
"""
