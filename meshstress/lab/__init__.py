"""VM lab: boot a stock distribution kernel under qemu and run a command inside it.

Python API: run_in_lab(argv, ...) -> exit code, lab_available() -> (ok, reason).
"""

from __future__ import annotations

from meshstress.lab.cli import lab
from meshstress.lab.runner import lab_available, run_in_lab

__all__ = ["lab", "lab_available", "run_in_lab"]
