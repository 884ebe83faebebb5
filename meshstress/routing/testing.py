"""Bring a topology up with a routing backend, as `meshstress up` does, for tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from meshstress.build import Mesh, state, teardown
from meshstress.build.bringup import bring_up
from meshstress.errors import CapabilityError
from meshstress.model.topology import Topology
from meshstress.pytest_plugin import require_capabilities
from meshstress.routing import Backend, ConvergenceResult

Routed = tuple[Mesh, Backend, ConvergenceResult]


@contextmanager
def routed_meshes(
    on_missing: Callable[[str], Any],
) -> Iterator[Callable[..., Routed]]:
    """Yields make(topo, routing, settings=None, timeout=60) -> (mesh, backend, result).

    A missing capability calls on_missing(message) (pytest.skip, or pytest.fail when
    MESHSTRESS_REQUIRE is set). Every mesh made is closed and torn down on exit, also
    on failure; leftover namespaces raise AssertionError."""
    made: list[tuple[state.RunState, Mesh]] = []

    def make(
        topo: Topology, routing: str, settings: dict[str, Any] | None = None, timeout: float = 60
    ) -> Routed:
        topo.routing = routing
        topo.routing_settings = settings or {}
        try:
            brought = bring_up(topo, wait=True, timeout=timeout)
        except CapabilityError as exc:
            on_missing(str(exc))
            raise
        mesh = Mesh(brought.state)
        made.append((brought.state, mesh))
        return mesh, brought.backend, brought.result

    try:
        yield make
    finally:
        problems = []
        for st, mesh in made:
            mesh.close()
            problems += teardown(st, timeout=30)
        assert not problems, problems


def missing_handler(skip: Callable[[str], Any], fail: Callable[[str], Any]) -> Callable[[str], Any]:
    return fail if require_capabilities() else skip
