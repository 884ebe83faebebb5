"""Observing a live mesh through the kernel's own instruments (tracepoints, counters)."""
