"""`meshstress topo ...`: generate and summarise topology files."""

from __future__ import annotations

import click


@click.group()
def topo() -> None:
    """Generate and inspect topology files."""
