"""VM lab: boot a stock distribution kernel under qemu and run a command inside it."""

from __future__ import annotations

import click


@click.group()
def lab() -> None:
    """Run meshstress inside a micro-VM with a stock kernel."""
