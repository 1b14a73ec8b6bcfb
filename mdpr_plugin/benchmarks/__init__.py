"""Benchmarks runnable by users: ``python -m mdpr_plugin.benchmarks.evaluation`` (see its docstring)."""
