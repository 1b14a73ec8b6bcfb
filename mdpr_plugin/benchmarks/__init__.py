"""Benchmarks runnable by users: ``python -m mdpr_plugin.benchmarks.evaluation`` and ``mdpr-benchmark``
(``mdpr_plugin.benchmarks.model``); see their docstrings. ``harness`` holds what they share."""
