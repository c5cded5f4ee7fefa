"""Labs and micro-benchmarks, kept out of the shipped package: run each from the repository root
with `.venv/bin/python -m benchmarks.<name>` (see benchmarks/README.md). Tests import them as
`benchmarks.*` (pyproject's pytest `pythonpath` holds the root)."""
