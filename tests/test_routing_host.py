"""Routing backends on the host (root): pings cross two hops, babeld reroutes around a
cut link, and a clean stop leaves no routing process."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from meshstress.build import Mesh, state, teardown
from meshstress.model import generators
from meshstress.routing import snapshot, wait_reroute
from meshstress.routing.probe import ping_pairs
from meshstress.routing.static import neighbour_interfaces
from meshstress.routing.testing import Routed, missing_handler, routed_meshes

pytestmark = pytest.mark.network


@pytest.fixture
def routed() -> Iterator[Callable[..., Routed]]:
    """Bring a topology up with a backend as `meshstress up` does; tear down in finally."""
    with routed_meshes(missing_handler(pytest.skip, pytest.fail)) as make:
        yield make


def ping_ttl(mesh: Mesh, src: str, dst: str) -> int | None:
    """TTL of the reply to a ping from src to dst (None: no reply)."""
    r = mesh.ping(src, dst, wait=2)
    return r.ttl if r.ok else None


def alive(pids: list[tuple[int, float]]) -> list[int]:
    out = []
    for pid, created in pids:
        try:
            if abs(psutil.Process(pid).create_time() - created) < 0.05:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.parametrize("routing", ["static", "babeld", "batmand"])
def test_line_ends_reach_each_other_over_two_hops(routed, routing: str) -> None:
    mesh, backend, result = routed(generators.line(3), routing, timeout=40)
    assert result.converged, str(result)
    print(f"\n{routing}: line3 {result}")
    # the route from each end to the other goes through the middle node
    assert backend.routes(mesh, "n0")["n2"].next_hop == "n1"
    assert backend.routes(mesh, "n2")["n0"].next_hop == "n1"
    # the reply crossed one router: n2 answers with TTL 64, n1 forwards it once
    assert ping_ttl(mesh, "n0", "n2") == 63
    assert ping_ttl(mesh, "n2", "n0") == 63


@pytest.mark.parametrize("routing", ["babeld", "batmand"])
def test_stop_leaves_no_routing_process(routed, routing: str) -> None:
    mesh, backend, result = routed(generators.line(3), routing, timeout=40)
    assert result.converged, str(result)
    records = [p for p in mesh.state.processes if p.role == backend.role]
    assert len(records) == 3 and {r.node for r in records} == {"n0", "n1", "n2"}
    pids = [(r.pid, r.create_time) for r in records]
    assert len(alive(pids)) == 3
    for r in records:  # each daemon runs inside its node's namespace
        assert os.readlink(f"/proc/{r.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    backend.stop(mesh)
    assert alive(pids) == []
    assert not [p for p in mesh.state.processes if p.role == backend.role]
    saved = state.load(mesh.state.run_id)
    assert saved is not None
    assert not [p for p in saved.processes if p.role == backend.role]


def test_teardown_stops_the_daemons_too(routed) -> None:
    mesh, backend, result = routed(generators.line(2), "babeld", timeout=30)
    pids = [(p.pid, p.create_time) for p in mesh.state.processes]
    assert len(alive(pids)) == 2
    mesh.close()
    assert teardown(mesh.state, timeout=30) == []
    assert alive(pids) == []


def test_static_stop_removes_its_routes(routed) -> None:
    mesh, backend, result = routed(generators.grid4(3, 3), "static")
    assert result.converged and result.sweep_pairs == 72
    assert backend.routes(mesh, "n0")["n8"].metric == 4  # priority = hops
    backend.stop(mesh)
    left = backend.routes(mesh, "n0")
    assert set(left) == {"n1", "n3"}  # only the builder's neighbour routes remain
    assert ping_pairs(mesh, [("n0", "n8")], timeout=0.5) == {("n0", "n8")}


def test_without_routing_the_ends_never_converge(routed) -> None:
    mesh, backend, result = routed(generators.line(3), "none", timeout=1.5)
    assert not result.converged
    assert set(result.missing_pairs) == {("n0", "n2"), ("n2", "n0")}


@pytest.mark.parametrize("where", ["first", "middle"])
@pytest.mark.parametrize("routing", ["babeld", "batmand"])
def test_grid_reroutes_around_a_cut_link(routed, routing: str, where: str) -> None:
    """Cut a link of the active n0 -> n8 path (its veth set down at the upstream end):
    the hop-by-hop path must avoid it and pings cross again, in a few seconds."""
    settings = {"orig_interval": "200ms"} if routing == "batmand" else None
    mesh, backend, result = routed(generators.grid4(3, 3), routing, settings, timeout=60)
    assert result.converged, str(result)
    print(f"\n{routing}: grid 3x3 {result}")
    src, dst = "n0", "n8"
    # Converged means every pair reaches; a daemon may take a few more hellos to settle
    # on a shortest path, so wait (bounded) for the 4-hop corner-to-corner path.
    deadline = time.monotonic() + 20
    before = snapshot(mesh, backend).path(src, dst)
    while (before is None or len(before) != 5) and time.monotonic() < deadline:
        time.sleep(0.2)
        before = snapshot(mesh, backend).path(src, dst)
    assert before is not None and len(before) == 5, before  # 4 hops, corner to corner
    i = 0 if where == "first" else 1
    a, b = before[i], before[i + 1]
    ipr = mesh.netlink(a)
    index = ipr.link_lookup(ifname=neighbour_interfaces(mesh)[(a, b)])[0]
    cut = time.monotonic()
    ipr.link("set", index=index, state="down")
    rr = wait_reroute(mesh, backend, src, dst, (a, b), cut, before)
    assert rr.seconds is not None, f"no reroute around {a}-{b} within 30 s (path {rr.after})"
    print(f"{routing}: reroute after cutting {a}-{b} ({where} link of {before}): {rr.seconds:.2f} s")
    assert rr.after is not None and len(rr.after) - 1 >= 4  # corner to corner: 4 hops at least
    ttl = ping_ttl(mesh, src, dst)
    assert ttl is not None and ttl <= 64 - 3  # the reply crossed 3 routers or more
