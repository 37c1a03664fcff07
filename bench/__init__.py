"""Benchmarks that print figures against a same-run baseline (``python -m bench <name>``)."""
