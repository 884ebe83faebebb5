"""The frame the flow benchmarks share (flow_rate.py, crafted_rate.py): a static line of
nodes brought up, a mesh handle and a scratch directory for the flows while it stands, a
teardown whatever happens, and the result printed as JSON on stdout. A helper, not a
benchmark: the scripts import it from their own directory."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from meshstress import build
from meshstress.build import bringup
from meshstress.model import generators


@contextlib.contextmanager
def static_line(nodes: int) -> Iterator[tuple[build.Mesh, str]]:
    """A line of `nodes` nodes (n0 ... n{nodes-1}) with static routes, converged; yields
    the mesh and a temporary directory, and tears the line down on the way out."""
    topo = generators.line(nodes)
    topo.routing = "static"
    up = bringup.bring_up(topo, wait=True, timeout=30)
    try:
        with build.Mesh(up.state) as mesh, tempfile.TemporaryDirectory() as tmp:
            yield mesh, tmp
    finally:
        build.teardown(up.state)


def print_result(benchmark: str, seconds: float, rows: list[dict[str, Any]]) -> None:
    """The benchmark's one JSON document on stdout."""
    json.dump({"benchmark": benchmark, "seconds": seconds, "rows": rows}, sys.stdout, indent=1)
    print()
