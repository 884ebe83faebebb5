"""Timed events that need the lab's kernel (batman-adv, netem):
`meshstress lab run --timeout 900 -- env MESHSTRESS_REQUIRE=1 .venv/bin/python -m pytest
-m kernel tests/test_events_kernel.py`. Emulated and slow: few, lean tests; bounded waits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from meshstress.build import Mesh
from meshstress.model import generators
from meshstress.model.topology import Impairment
from meshstress.routing.batman_adv import MESHIF, BatmanAdvBackend
from meshstress.routing.testing import Routed, missing_handler, routed_meshes
from meshstress.stress.events import Event, EventRunner

IFF_UP, IFF_LOWER_UP = 0x1, 0x10000


@pytest.fixture
def routed() -> Iterator[Callable[..., Routed]]:
    with routed_meshes(missing_handler(pytest.skip, pytest.fail)) as make:
        yield make


def reaches(mesh: Mesh, src: str, dst: str) -> bool:
    return mesh.ping(src, dst, count=1, wait=1).ok


def wait_reaches(mesh: Mesh, pairs: list[tuple[str, str]], timeout: float) -> float:
    began = time.monotonic()
    while not all(reaches(mesh, a, b) for a, b in pairs):
        if time.monotonic() - began > timeout:
            pytest.fail(f"{pairs}: no reachability after {timeout:.0f} s")
        time.sleep(0.3)
    return time.monotonic() - began


def meshif_index(mesh: Mesh, node: str) -> int | None:
    found = mesh.netlink(node).link_lookup(ifname=MESHIF)
    return int(found[0]) if found else None


@pytest.mark.kernel("batman-adv")
def test_batman_adv_node_crash_and_restart(routed) -> None:
    topo = generators.line(3)
    # BATMAN_V: BATMAN_IV ignores the restarted node's new sequence numbers until 30 s
    # after its last seqno reset (BATADV_RESET_PROTECTION_MS), see docs/events.md
    settings = {"algorithm": "BATMAN_V", "orig_interval": "200ms"}
    mesh, backend, result = routed(topo, "batman-adv", settings, timeout=90)
    assert isinstance(backend, BatmanAdvBackend)
    assert result.converged, str(result)
    runner = EventRunner(mesh, backend, topo)
    old = meshif_index(mesh, "n1")
    assert old is not None
    (link,) = mesh.netlink("n1").get_links(old)
    mac = link.get_attr("IFLA_ADDRESS")

    rec = runner.apply(Event(1.0, "node-crash", node="n1"))  # radio-like, the default
    assert rec["detail"]["carrier"] == "keep"
    assert len(rec["detail"]["down"]) == 2  # both of n1's hard interfaces
    assert meshif_index(mesh, "n1") is None  # bat0, and its originator table, are gone
    # the hard interfaces stay up with carrier (the neighbours' ends too) and drop every
    # frame: the clsact + cls_bpf filter on this kernel
    for node, peer in (("n1", "n0"), ("n1", "n2"), ("n0", "n1"), ("n2", "n1")):
        (ifname,) = [i["ifname"] for i in mesh.state.interfaces[node] if i["peer"] == peer]
        (link,) = mesh.netlink(node).get_links(mesh.netlink(node).link_lookup(ifname=ifname)[0])
        assert link["flags"] & IFF_UP and link["flags"] & IFF_LOWER_UP, (node, ifname)
        assert runner.dropping(node, ifname) == (node == "n1"), (node, ifname)
    assert not reaches(mesh, "n0", "n2") and not reaches(mesh, "n2", "n0")

    rec = runner.apply(Event(3.0, "node-restart", node="n1"))
    new = meshif_index(mesh, "n1")
    assert new is not None and new != old  # a new bat0, with the old MAC
    (link,) = mesh.netlink("n1").get_links(new)
    assert link.get_attr("IFLA_ADDRESS") == mac
    took = wait_reaches(mesh, [("n0", "n2"), ("n2", "n0"), ("n0", "n1")], timeout=90)
    print(f"\nbatman-adv line3: ends reach each other {took:.1f} s after n1 restarted")
    owners = backend.mac_owners(mesh)
    assert backend.routes(mesh, "n0")["n2"].next_hop == "n1", owners


@pytest.mark.kernel("netem")
def test_impair_event_changes_the_rtt(routed) -> None:
    topo = generators.line(2)
    mesh, backend, result = routed(topo, "static", timeout=30)
    runner = EventRunner(mesh, backend, topo)

    def rtt() -> float:
        r = mesh.ping("n0", "n1", count=3, interval=0.2, wait=2)
        assert r.ok and r.rtt_min_ms is not None, r
        return r.rtt_min_ms

    before = rtt()
    assert before < 40.0, before
    rec = runner.apply(Event(0.0, "impair", link=("n0", "n1"), ab=Impairment(delay=0.05)))
    assert set(rec["detail"]) == {"n0->n1"}
    one_way = rtt()
    assert 49.0 <= one_way < 50.0 + 40.0, one_way  # 50 ms once per round trip
    both = Impairment(delay=0.05)
    runner.apply(Event(1.0, "impair", link=("n1", "n0"), ab=both, ba=both))
    round_trip = rtt()
    assert 99.0 <= round_trip < 100.0 + 40.0, round_trip
    runner.apply(Event(2.0, "impair", link=("n0", "n1"), ab=Impairment(), ba=Impairment()))
    after = rtt()
    assert after < 40.0, after
    print(f"\nimpair: rtt {before:.2f} -> {one_way:.2f} -> {round_trip:.2f} -> {after:.2f} ms")
