"""Bring a topology up with a routing backend, as `meshstress up` does, for tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from meshstress import plan, state
from meshstress.build import Mesh, apply, teardown
from meshstress.routing import Backend, ConvergenceResult, get_backend, wait_converged
from meshstress.topology import Topology

Routed = tuple[Mesh, Backend, ConvergenceResult]


@contextmanager
def routed_meshes(
    on_missing: Callable[[str], Any],
) -> Iterator[Callable[..., Routed]]:
    """Yields make(topo, routing, settings=None, timeout=60) -> (mesh, backend, result).

    A missing capability calls on_missing(message) (pytest.skip, or pytest.fail when
    MESHSTRESS_REQUIRE is set). Every mesh made is closed and torn down on exit, also
    on failure; leftover namespaces raise AssertionError."""
    made: list[tuple[state.RunState, Mesh | None]] = []

    def make(
        topo: Topology, routing: str, settings: dict[str, Any] | None = None, timeout: float = 60
    ) -> Routed:
        backend = get_backend(routing, settings or {})
        if msg := backend.missing():
            on_missing(msg)
        run_id = plan.new_run_id()
        st = state.RunState(run_id=run_id, topology=topo.name, routing=backend.name)
        made.append((st, None))
        p = plan.make_plan(topo, run_id, l3=backend.l3, mtu=backend.mtu)
        apply(p, st)
        mesh = Mesh(st)
        made[-1] = (st, mesh)
        backend.start(mesh, topo)
        return mesh, backend, wait_converged(mesh, backend, timeout)

    try:
        yield make
    finally:
        problems = []
        for st, mesh in made:
            if mesh is not None:
                mesh.close()
            problems += teardown(st, timeout=30)
        assert not problems, problems


def missing_handler(skip: Callable[[str], Any], fail: Callable[[str], Any]) -> Callable[[str], Any]:
    require = os.environ.get("MESHSTRESS_REQUIRE", "") not in ("", "0")
    return fail if require else skip
