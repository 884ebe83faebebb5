"""Routing backends: none, static, babeld, batmand, batman-adv.

    backend = get_backend(name, topo.routing_settings, source=topo.source)
    if msg := backend.missing(): raise CapabilityError(msg)
    plan = make_plan(topo, run_id, l3=backend.l3, mtu=backend.mtu)
    apply(plan, state); state.routing = backend.name
    mesh = Mesh(state); backend.start(mesh, topo)
    result = wait_converged(mesh, backend, timeout)

Every Backend has: name; l3 (make_plan puts the node /32 and neighbour host routes on
the mesh interfaces); mtu; missing(); start(mesh, topo); stop(mesh); routes(mesh, node)
-> {dst: Route(next_hop, metric)}; known(mesh, node) -> the nodes in its table.
batman-adv adds originators(mesh, node) and neighbours(mesh, node).
"""

from __future__ import annotations

from typing import Any

from meshstress.errors import InputError
from meshstress.routing.base import Backend, Route
from meshstress.routing.converge import (
    ConvergenceResult,
    Reroute,
    RouteSnapshot,
    record_routes,
    route_changes,
    snapshot,
    wait_converged,
    wait_reroute,
)
from meshstress.routing.settings import BACKEND_NAMES

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "ConvergenceResult",
    "Reroute",
    "Route",
    "RouteSnapshot",
    "get_backend",
    "record_routes",
    "route_changes",
    "snapshot",
    "wait_converged",
    "wait_reroute",
]


class NoneBackend(Backend):
    """No routing: only the builder's neighbour host routes (l3)."""

    name = "none"


def _classes() -> dict[str, type[Backend]]:
    from meshstress.routing.babeld import BabeldBackend
    from meshstress.routing.batman_adv import BatmanAdvBackend
    from meshstress.routing.batmand import BatmandBackend
    from meshstress.routing.static import StaticBackend

    return {
        "none": NoneBackend,
        "static": StaticBackend,
        "babeld": BabeldBackend,
        "batmand": BatmandBackend,
        "batman-adv": BatmanAdvBackend,
    }


def get_backend(
    name: str, settings: dict[str, Any] | None = None, source: str = "topology"
) -> Backend:
    """The backend called `name`, with validated topology-level `settings`.

    Raises InputError(source, "routing", ...) for an unknown name and
    InputError(source, "routing.<field>", ...) for a bad setting."""
    classes = _classes()
    if name not in classes:
        raise InputError(
            source, "routing", f"unknown routing {name!r} (choose {', '.join(BACKEND_NAMES)})"
        )
    return classes[name](settings or {}, source=source)
