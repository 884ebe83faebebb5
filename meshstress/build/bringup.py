"""Bring a mesh up: build it from its plan, start routing, wait for convergence.

    up = bring_up(topology, wait=True, timeout=60)   # -> Up(state, info, backend, result)

Shared by `meshstress up`, the runner and the pytest plugin; on any failure or
interrupt everything built so far is torn down before the error propagates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from meshstress import build
from meshstress.build import netns, plan, state
from meshstress.build.impair import needs as qdisc_needs
from meshstress.doctor import missing_qdiscs
from meshstress.errors import CapabilityError, MeshstressError
from meshstress.model.topology import Topology


@dataclass
class Up:
    """A mesh that `bring_up` built: its state, a summary, its routing backend, and the
    convergence result (None when it did not wait)."""

    state: state.RunState
    info: dict[str, Any]
    backend: Any  # meshstress.routing.Backend
    result: Any  # meshstress.routing.ConvergenceResult | None


def bring_up(
    topo: Topology,
    run_id: str | None = None,
    *,
    wait: bool | None = None,
    timeout: float = 120.0,
    say: Any = None,
    impair: bool = True,
) -> Up:
    """Build the mesh and start routing; wait for convergence if `wait` (by default:
    unless routing is "none"). On any failure or interrupt, undo everything."""
    say = say or (lambda msg: None)
    run_id = run_id or plan.new_run_id()
    if state.load(run_id) is not None or any(
        n.startswith(plan.run_prefix(run_id)) for n in netns.list_names()
    ):
        raise MeshstressError(f"run {run_id!r} exists already; `meshstress down --run {run_id}`")
    from meshstress.routing import get_backend, wait_converged

    backend = get_backend(topo.routing, topo.routing_settings, source=topo.source)
    backend.node_settings(topo)  # per-node settings are input too: validate before building
    missing = backend.missing()
    if missing:
        raise CapabilityError(f"routing {topo.routing}: {missing}")
    if wait is None:
        wait = backend.name != "none"
    p = plan.make_plan(topo, run_id, l3=backend.l3, mtu=backend.mtu, impair=impair)
    impaired = p.impaired()
    if impaired:
        needed: set[str] = set().union(*(qdisc_needs(end.egress) for end in impaired))
        lacking = missing_qdiscs(needed)
        if lacking:
            users = sum(1 for end in impaired if qdisc_needs(end.egress) & set(lacking))
            raise CapabilityError(
                f"{topo.source}: {users} impaired interfaces need the "
                f"{', '.join(lacking)} qdisc{'s' if len(lacking) > 1 else ''}, but this "
                "kernel has no "
                f"{', '.join('sch_' + k for k in lacking)}: run it in the VM lab "
                "(meshstress lab run -- meshstress up ...), or pass --ideal to build "
                "without impairments"
            )
    result = None
    st = state.RunState(run_id=run_id, topology=topo.name, source=topo.source, routing=topo.routing)
    info: dict[str, Any] = {
        "run": run_id,
        "nodes": len(topo.nodes),
        "links": len(topo.links),
        "segments": len(topo.segments),
        "routing": topo.routing,
        "impaired_interfaces": len(impaired),
    }
    try:
        with build.sigterm_as_interrupt():
            t0 = time.monotonic()
            phases: dict[str, float] = {}
            build.apply(p, st, progress=say, phases=phases)
            info["setup_s"] = round(time.monotonic() - t0, 3)
            info["setup_phases_s"] = phases
            mesh = build.Mesh(st)
            try:
                t1 = time.monotonic()
                backend.start(mesh, topo)
                st.save()
                if wait:
                    result = wait_converged(mesh, backend, timeout)
                    info["converged"] = result.converged
                    info["convergence_s"] = round(result.seconds, 3)
                    if not result.converged:
                        info["missing_pairs"] = len(result.missing_pairs)
                info["routing_start_s"] = round(time.monotonic() - t1, 3)
            finally:
                mesh.close()
    except BaseException:
        say("interrupted or failed: tearing down what was built")
        build.teardown(st, timeout=30)
        raise
    return Up(st, info, backend, result)
