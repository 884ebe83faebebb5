"""Judging results: does the mesh meet what the scenario asks of it.

`curves`: one metric over a stress sweep (issue 9) and the degradation checks on it:
floor/ceiling, no cliff, monotone within confidence intervals, the knee. docs/degradation.md.
"""
