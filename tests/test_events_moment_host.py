"""An event is one moment, stamped when it begins (host, root): the crash of a hub with
51 links cuts every interface in one step (one map update radio-like, one netlink
request with carrier = "lose"), the affected flows' outages begin at the event's t_rel,
and recovery counts from t_rel. No wall-clock bound here: the speed targets are in
benchmarks/event_speed.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from meshstress.build import Mesh
from meshstress.errors import MeshstressError
from meshstress.model import generators
from meshstress.routing.testing import Routed, missing_handler, routed_meshes
from meshstress.stress.events import MESH_GROUP, Event, EventRunner

pytestmark = pytest.mark.network

IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
SPOKES = 51  # the hub's links

HUB_CRASH = f"""
[scenario]
name = "hub-crash"
duration = "4s"
warmup = "0.5s"
route_interval = "1s"

[mesh]
generate = "star {SPOKES + 1}"
routing = "babeld"
settings = {{ hello_interval = "250ms" }}
converge_timeout = "60s"

[[traffic]]
name = "out"
kind = "udp"
from = "n0"
to = "n1"
rate = "1000pps"
size = 100

[[traffic]]
name = "across"
kind = "udp"
from = "n1"
to = "n2"
rate = "200pps"
size = 100

[[events]]
at = "1.5s"
action = "node-crash"
node = "n0"
for = "1.5s"
"""
INTERVAL = 0.001  # of the flow "out"
ROUNDING = 0.001  # results.json rounds times to 1 ms; two of them are compared
# recovery_s, an outage end and a t_rel: three numbers each rounded to 1 ms


def test_outage_begins_no_earlier_than_the_crash_and_recovery_counts_from_it(
    run_scenario,
) -> None:
    r = run_scenario(HUB_CRASH)
    crash, restart = r["events"]
    assert (crash["action"], restart["action"]) == ("node-crash", "node-restart")
    assert len(crash["detail"]["down"]) == SPOKES  # every link of the hub, one step
    assert len(crash["detail"]["killed"]) == 1  # and its babeld
    assert crash["detail"]["carrier"] == "keep"  # radio-like, the default
    out = r["flows"]["out"]
    # n0's sender runs on (only routing dies with the node); from the moment of the
    # crash every frame it sends is dropped at its own interfaces and counts as lost
    start, end, _ = next(o for o in out["outages"] if o[1] > crash["t_rel"])
    # A packet counts as sent when its sender stamps it, just before the send: the
    # first lost one may be stamped up to one packet interval before the crash.
    assert start >= crash["t_rel"] - INTERVAL - ROUNDING, (start, crash)
    # and it is this crash that began it: by the crash's end plus one packet
    assert start <= crash["t_rel"] + crash["took_s"] + INTERVAL + ROUNDING, (start, crash)
    # recovery counts from the crash's start (not its end) until delivery resumed
    assert crash["recovery_s"]["out"] == pytest.approx(end - crash["t_rel"], abs=0.002)
    assert end >= restart["t_rel"] - ROUNDING  # n0 drops everything until the restart
    assert restart["recovery_s"]["out"] == pytest.approx(end - restart["t_rel"], abs=0.002)
    # the flow through the hub is cut at the crash too: n1's frames for n0 are dropped
    # at n0 (with the interfaces set down they waited in n1's ARP queue and could
    # arrive after the restart, so that outage began later)
    across = r["flows"]["across"]
    cut = next(o for o in across["outages"] if o[1] > crash["t_rel"])
    assert cut[0] >= crash["t_rel"] - 0.005 - ROUNDING, (cut, crash)
    assert cut[0] <= crash["t_rel"] + crash["took_s"] + 0.005 + ROUNDING, (cut, crash)


@pytest.fixture
def routed() -> Iterator[Callable[..., Routed]]:
    with routed_meshes(missing_handler(pytest.skip, pytest.fail)) as make:
        yield make


def flags(mesh: Mesh, node: str) -> dict[str, int]:
    """{ifname: link flags} of node's mesh interfaces, read back from the kernel."""
    names = {i["ifname"] for i in mesh.state.interfaces[node]}
    return {
        link.get_attr("IFLA_IFNAME"): link["flags"]
        for link in mesh.netlink(node).get_links()
        if link.get_attr("IFLA_IFNAME") in names
    }


def groups(mesh: Mesh, node: str) -> dict[str, int]:
    return {
        link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_GROUP") or 0
        for link in mesh.netlink(node).get_links()
    }


def peer_ends(mesh: Mesh, node: str) -> list[tuple[str, str]]:
    """(peer node, its ifname) facing node, for every link of node."""
    out = []
    for i in mesh.state.interfaces[node]:
        (theirs,) = [j["ifname"] for j in mesh.state.interfaces[i["peer"]] if j["peer"] == node]
        out.append((i["peer"], theirs))
    return out


def eventually(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_crash_takes_every_interface_down_and_kills_babeld(routed) -> None:
    """carrier = "lose" (then radio-like, on the same mesh)."""
    topo = generators.star(SPOKES + 1)
    mesh, backend, result = routed(topo, "babeld", {"hello_interval": "250ms"}, timeout=60)
    assert result.converged, str(result)
    runner = EventRunner(mesh, backend, topo)
    runner.prepare([Event(0, "node-crash", node="n0", carrier="lose")])
    (daemon,) = [p for p in mesh.state.processes if p.node == "n0" and p.role == "babeld"]
    assert all(f & IFF_UP for f in flags(mesh, "n0").values())
    assert mesh.ping("n1", "n2", count=1, wait=1).ok

    grouped = groups(mesh, "n0")  # prepare put the mesh interfaces in one device group
    assert {n for n, g in grouped.items() if g == MESH_GROUP} == set(flags(mesh, "n0"))
    assert grouped["lo"] != MESH_GROUP

    rec = runner.apply(Event(0, "node-crash", node="n0", carrier="lose"))  # one request
    assert rec["detail"]["carrier"] == "lose"
    assert sorted(rec["detail"]["down"]) == sorted(flags(mesh, "n0"))
    assert len(rec["detail"]["down"]) == SPOKES
    assert rec["detail"]["killed"] == [daemon.pid]
    assert not psutil.pid_exists(daemon.pid) or (
        psutil.Process(daemon.pid).create_time() != pytest.approx(daemon.create_time, abs=0.05)
    )
    down = flags(mesh, "n0")
    assert [n for n, f in down.items() if f & IFF_UP] == []  # read back: all down
    for peer, ifname in peer_ends(mesh, "n0"):  # the other ends lost their carrier
        assert not flags(mesh, peer)[ifname] & IFF_LOWER_UP, (peer, ifname)
    assert not mesh.ping("n1", "n2", count=1, wait=1).ok

    rec = runner.apply(Event(1, "node-restart", node="n0"))
    assert len(rec["detail"]["up"]) == SPOKES and len(rec["detail"]["started"]) == 1
    assert all(f & IFF_UP for f in flags(mesh, "n0").values())
    # the neighbour host routes the kernel flushed came back in the same batch
    routes = {
        r.get_attr("RTA_DST")
        for r in mesh.netlink("n0").route("dump", family=2, table=254)
        if r["scope"] == 253
    }
    assert {mesh.address(f"n{k}") for k in range(1, SPOKES + 1)} <= routes

    # radio-like on the same hub: every interface stays up, the peers keep carrier,
    # every interface of n0 drops (its filters attached now: no prepare for it)
    assert eventually(lambda: mesh.ping("n1", "n2", count=1, wait=1).ok, timeout=30)
    rec = runner.apply(Event(2, "node-crash", node="n0"))
    assert rec["detail"]["carrier"] == "keep" and len(rec["detail"]["down"]) == SPOKES
    assert all(f & IFF_UP and f & IFF_LOWER_UP for f in flags(mesh, "n0").values())
    for peer, ifname in peer_ends(mesh, "n0"):
        assert flags(mesh, peer)[ifname] & IFF_LOWER_UP, (peer, ifname)
    assert all(runner.dropping("n0", n) for n in flags(mesh, "n0"))
    assert not mesh.ping("n1", "n2", count=1, wait=1).ok
    rec = runner.apply(Event(3, "node-restart", node="n0"))
    assert len(rec["detail"]["up"]) == SPOKES and len(rec["detail"]["started"]) == 1
    assert not any(runner.dropping("n0", n) for n in flags(mesh, "n0"))
    assert eventually(lambda: mesh.ping("n1", "n2", count=1, wait=1).ok, timeout=30)
    runner.close()


def test_a_refused_change_names_the_interface_and_the_rest_still_happen(routed) -> None:
    topo = generators.star(6)
    mesh, backend, result = routed(topo, "static", timeout=30)
    assert result.converged, str(result)
    runner = EventRunner(mesh, backend, topo)
    runner.prepare([Event(0, "node-crash", node="n0", carrier="lose")])
    runner.use_groups = False  # one request per interface, in one buffer
    victim = mesh.state.interfaces["n0"][2]["ifname"]
    runner._index["n0"][victim] = 999_999  # an index no interface has
    with pytest.raises(MeshstressError, match=f"n0 link {victim}: No such device"):
        runner.apply(Event(0, "node-crash", node="n0", carrier="lose"))
    left = [n for n, f in flags(mesh, "n0").items() if f & IFF_UP]
    assert left == [victim]  # the kernel went on with the requests after the refused one


@pytest.mark.parametrize("carrier", ["keep", "lose"])
def test_a_second_partition_replaces_the_first_in_one_step(routed, carrier: str) -> None:
    topo = generators.grid4(3, 3)
    mesh, backend, result = routed(topo, "static", timeout=30)
    assert result.converged, str(result)
    runner = EventRunner(mesh, backend, topo)
    left = (("n0", "n3", "n6"), ("n1", "n2", "n4", "n5", "n7", "n8"))
    top = (("n0", "n1", "n2"), ("n3", "n4", "n5", "n6", "n7", "n8"))
    runner.apply(Event(0, "partition", groups=left, carrier=carrier))  # n0-n1, n3-n4, n6-n7
    rec = runner.apply(Event(1, "partition", groups=top, carrier=carrier))  # n0-n3, ...
    assert rec["detail"]["cut"] == ["n0-n3", "n1-n4", "n2-n5"]
    assert rec["detail"]["healed_first"] == ["n0-n1", "n3-n4", "n6-n7"]
    assert sorted(rec["detail"]["up"]) == ["n0", "n1", "n3", "n4", "n6", "n7"]

    def up(a: str, b: str) -> bool:  # read back: set up, or not dropping (radio-like)
        (ifname,) = [i["ifname"] for i in mesh.state.interfaces[a] if i["peer"] == b]
        if carrier == "keep":
            assert flags(mesh, a)[ifname] & IFF_UP  # never set down
            return not runner.dropping(a, ifname)
        return bool(flags(mesh, a)[ifname] & IFF_UP)

    for a, b in (("n0", "n1"), ("n3", "n4"), ("n6", "n7")):  # back up, both ends
        assert up(a, b) and up(b, a), (a, b)
    for a, b in (("n0", "n3"), ("n1", "n4"), ("n2", "n5")):  # down, both ends
        assert not up(a, b) and not up(b, a), (a, b)
    # the routes over the links that came back are there again: n0 reaches n1 directly
    assert mesh.ping("n0", "n1", count=3, interval=0.2, wait=2).received > 0
    assert not mesh.ping("n0", "n3", count=1, wait=1).ok
