"""The fast route snapshot (one dump per namespace over sockets kept open, unchanged
tables reused) gives what the per-node algorithm gives, on live meshes, also after a
link cut changes the tables."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from meshstress.model import generators
from meshstress.routing.base import KernelRouteReader
from meshstress.routing.converge import RouteSnapshot, snapshot, snapshot_per_node
from meshstress.routing.static import neighbour_interfaces
from meshstress.routing.testing import Routed, missing_handler, routed_meshes

pytestmark = pytest.mark.network


@pytest.fixture
def routed() -> Iterator[Callable[..., Routed]]:
    with routed_meshes(missing_handler(pytest.skip, pytest.fail)) as make:
        yield make


def agreeing(mesh, backend, reader, tries: int = 40) -> tuple[RouteSnapshot, RouteSnapshot]:  # type: ignore[no-untyped-def]
    """(new, old) taken while the tables held still (old before and after agree)."""
    for _ in range(tries):
        a = snapshot_per_node(mesh, backend)
        new = snapshot(mesh, backend, reader)
        b = snapshot_per_node(mesh, backend)
        if a.next_hops == b.next_hops:
            return new, a
        time.sleep(0.1)
    raise AssertionError(f"the tables never held still over {tries} tries")


@pytest.mark.parametrize("routing", ["static", "babeld", "batmand"])
def test_reader_snapshot_equals_the_per_node_one_before_and_after_a_cut(routed, routing) -> None:  # type: ignore[no-untyped-def]
    settings = {"orig_interval": "200ms"} if routing == "batmand" else None
    mesh, backend, result = routed(generators.grid4(3, 3), routing, settings, timeout=90)
    assert result.converged, str(result)
    reader = backend.route_reader(mesh)
    assert isinstance(reader, KernelRouteReader)
    try:
        new, old = agreeing(mesh, backend, reader)
        assert new.next_hops == old.next_hops
        assert new.routes == old.routes
        assert len(new.next_hops) == 9 and all(len(r) == 8 for r in new.next_hops.values())
        # cut n4-n5 (the centre to a side): the tables of n4 at least change
        ipr = mesh.netlink("n4")
        ipr.link("set", index=ipr.link_lookup(ifname=neighbour_interfaces(mesh)[("n4", "n5")])[0],
                 state="down")  # fmt: skip
        selected = reader.selected
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            after, old_after = agreeing(mesh, backend, reader)
            if old_after.next_hops["n4"].get("n5") != "n5":
                break
            time.sleep(0.2)
        assert old_after.next_hops["n4"].get("n5") != "n5", "n4 still routes n5 directly"
        assert reader.selected > selected  # the changed namespaces were read again
        assert after.next_hops == old_after.next_hops
        assert after.routes == old_after.routes
        assert after.next_hops != new.next_hops
    finally:
        reader.close()
    assert reader.dumper._socks == {}


def test_reader_dumps_only_notified_namespaces_and_sees_every_change(routed) -> None:  # type: ignore[no-untyped-def]
    """With static routes the tables hold still: a second snapshot dumps nothing. A route
    deleted or added by hand is seen at the next snapshot, which dumps that namespace
    only; a link taken down, whose routes IPv4 flushes without a route notification, is
    seen too (the link notification). Each time the reader's snapshot equals the
    per-node one, i.e. what the kernel holds."""
    mesh, backend, result = routed(generators.line(4), "static")
    assert result.converged, str(result)
    reader = backend.route_reader(mesh)
    assert isinstance(reader, KernelRouteReader)
    n3 = mesh.address("n3")

    def snap() -> RouteSnapshot:
        new = snapshot(mesh, backend, reader)
        assert new.next_hops == snapshot_per_node(mesh, backend).next_hops
        return new

    try:
        first = snap()
        assert reader.cost is not None and reader.cost.dumped == 4
        assert first.next_hops["n0"]["n3"] == "n1"
        snap()
        assert (reader.cost.dumped, reader.cost.changed) == (0, 0)
        ipr = mesh.netlink("n0")
        ipr.route("del", dst=f"{n3}/32", table=254)
        gone = snap()
        assert "n3" not in gone.next_hops["n0"]
        assert (reader.cost.dumped, reader.cost.changed) == (1, 1)
        assert gone.next_hops["n1"] is first.next_hops["n1"]  # not read again
        ipr.route("add", dst=f"{n3}/32", gateway=mesh.address("n1"), priority=3, table=254)
        back = snap()
        assert back.next_hops["n0"]["n3"] == "n1"
        assert (reader.cost.dumped, reader.cost.changed) == (1, 1)
        # n1's interface to n2 down: the kernel flushes n1's routes through it
        ipr = mesh.netlink("n1")
        ifname = neighbour_interfaces(mesh)[("n1", "n2")]
        ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="down")
        cut = snap()
        assert "n2" not in cut.next_hops["n1"] and "n3" not in cut.next_hops["n1"]
        assert reader.cost.dumped <= 2  # n1, and n2 whose peer went down
        assert cut.next_hops["n0"] is back.next_hops["n0"]
    finally:
        reader.close()
    assert reader.dumper._socks == {} and reader.dumper._watchers == {}
