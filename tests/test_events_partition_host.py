"""A partition of half of Freifunk Ulm and its heal, on the host (root): read back from
the kernel, with carrier = "lose" the interfaces down after the partition are exactly
the cut links' ends, their neighbour routes are gone and no ping crosses; after the heal
exactly the same interfaces are up as before, with their routes. Radio-like (the
default) on the same mesh: exactly the cut links' ends drop, every interface stays up
and every route stays. Also: an action runs SCHED_FIFO and gives its priority back. No
timing is asserted (benchmarks/event_speed.py measures it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshstress import build
from meshstress.build import Mesh, plan
from meshstress.build.state import RunState
from meshstress.model import generators, topofile
from meshstress.model.topology import Topology
from meshstress.routing import Backend, get_backend
from meshstress.routing.testing import Routed, missing_handler, routed_meshes
from meshstress.stress.events import MESH_GROUP, Event, EventRunner, link_interfaces, partition_cuts

pytestmark = pytest.mark.network

ULM = Path(__file__).parent / "data" / "freifunk-ulm.json"
IFF_UP = 1


@pytest.fixture
def routed() -> Iterator[Callable[..., Routed]]:
    with routed_meshes(missing_handler(pytest.skip, pytest.fail)) as make:
        yield make


def half(topo: Topology) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The half of the nodes nearest the first one (breadth first), and the rest."""
    adj: dict[str, list[str]] = {n: [] for n in topo.node_names()}
    for link in topo.links:
        adj[link.a].append(link.b)
        adj[link.b].append(link.a)
    order = [topo.node_names()[0]]
    for node in order:
        order += [o for o in adj[node] if o not in order]
    order += [n for n in topo.node_names() if n not in order]
    k = len(order) // 2
    return tuple(order[:k]), tuple(order[k:])


def up_ifaces(mesh: Mesh) -> set[tuple[str, str]]:
    """(node, ifname) of every mesh interface the kernel has up, in every namespace."""
    out = set()
    for node in mesh.nodes:
        names = {i["ifname"] for i in mesh.state.interfaces.get(node, [])}
        for link in mesh.netlink(node).get_links():
            name = link.get_attr("IFLA_IFNAME")
            if name in names and link["flags"] & IFF_UP:
                out.add((node, name))
    return out


def host_routes(mesh: Mesh) -> set[tuple[str, str, str]]:
    """(node, destination, ifname) of every /32 route of scope link in every main table."""
    out = set()
    for node in mesh.nodes:
        ipr = mesh.netlink(node)
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for r in ipr.get_routes(family=socket.AF_INET, table=254):
            if r["dst_len"] == 32 and r["scope"] == 253:
                out.add((node, r.get_attr("RTA_DST"), names[r.get_attr("RTA_OIF")]))
    return out


def test_a_partition_of_half_of_ulm_and_its_heal_change_exactly_the_cut() -> None:
    topo = topofile.load(str(ULM))
    run_id = plan.new_run_id()
    st = RunState(run_id=run_id, topology=topo.name)
    try:  # routing "none": only the builder's neighbour routes; ideal (no sch_netem here)
        build.apply(plan.make_plan(topo, run_id, impair=False), st)
        with Mesh(st) as mesh:
            partition_and_heal(topo, mesh, get_backend("none"))
    finally:
        assert not build.teardown(st)


def partition_and_heal(topo: Topology, mesh: Mesh, backend: Backend) -> None:
    groups = half(topo)
    cut = partition_cuts(topo, groups)
    assert len(cut) > 200  # a realistic cut: hundreds of links
    ends = {e for a, b in cut for e in link_interfaces(mesh.state.interfaces, a, b)}
    # a node at the cut whose interfaces are in the crash group (a crash is prepared
    # but not applied), with one of its links inside its group downed before the cut:
    # its buffer must set only the cut interfaces, and the heal must leave that one down
    cut_nodes = {n for link in cut for n in link}
    inner = {(a, b) for link in topo.links for a, b in [(link.a, link.b)]} - set(cut)
    hub = max(
        (n for n in cut_nodes if any(n in link for link in inner)),
        key=lambda n: sum(n in (link.a, link.b) for link in topo.links),
    )
    downed = next(link for link in topo.links if hub in (link.a, link.b)
                  and (link.a, link.b) in inner)  # fmt: skip
    downed_ends = set(link_interfaces(mesh.state.interfaces, downed.a, downed.b))
    runner = EventRunner(mesh, backend, topo)
    partition = Event(1, "partition", groups=groups, carrier="lose")
    radio = Event(3, "partition", groups=groups)  # carrier "keep", the default
    runner.prepare([Event(0, "link-down", link=(downed.a, downed.b), carrier="lose"),
                    partition, Event(2, "heal"), radio,
                    Event(9, "node-crash", node=hub, carrier="lose")])  # fmt: skip
    hub_groups = {link.get_attr("IFLA_GROUP") for link in mesh.netlink(hub).get_links()
                  if link.get_attr("IFLA_IFNAME") != "lo"}  # fmt: skip
    assert hub_groups == {MESH_GROUP}  # so its crash would be one group request
    runner.apply(Event(0, "link-down", link=(downed.a, downed.b), carrier="lose"))
    all_ifaces = {(n, i["ifname"]) for n in mesh.nodes for i in mesh.state.interfaces[n]}
    before_up = up_ifaces(mesh)
    assert before_up == all_ifaces - downed_ends
    before_routes = host_routes(mesh)
    assert before_routes, "the builder's neighbour routes"

    rec = runner.apply(partition)
    assert up_ifaces(mesh) == before_up - ends  # exactly the cut went down
    reported = {(n, i) for n, names in rec["detail"]["down"].items() for i in names}
    assert reported == ends
    routes = host_routes(mesh)
    assert not {r for r in routes if (r[0], r[2]) in ends}  # withdrawn over the cut
    assert routes == {r for r in before_routes if (r[0], r[2]) not in ends}  # the rest stay
    for a, b in cut[:3]:  # neighbours across the cut no longer reach each other
        assert mesh.ping(a, b, count=1, wait=1).received == 0, (a, b)
    for a, b in sorted(inner - {(downed.a, downed.b)})[:3]:  # within a group they do
        assert mesh.ping(a, b, count=2, interval=0.2, wait=2).received > 0, (a, b)

    rec = runner.apply(Event(2, "heal"))
    assert up_ifaces(mesh) == before_up  # exactly these: the downed link stays down
    reported = {(n, i) for n, names in rec["detail"]["up"].items() for i in names}
    assert reported == ends
    assert host_routes(mesh) == before_routes  # every neighbour route over the cut is back
    for a, b in cut[:3]:
        assert mesh.ping(a, b, count=3, interval=0.2, wait=2).received > 0, (a, b)

    def dropping() -> set[tuple[str, str]]:
        return {(n, i) for n, i in all_ifaces if runner.dropping(n, i)}

    assert dropping() == set()
    rec = runner.apply(radio)
    assert rec["detail"]["carrier"] == "keep"
    assert dropping() == ends  # exactly the cut drops
    assert up_ifaces(mesh) == before_up  # nothing set down
    assert host_routes(mesh) == before_routes  # nothing flushed
    reported = {(n, i) for n, names in rec["detail"]["down"].items() for i in names}
    assert reported == ends
    for a, b in cut[:3]:
        assert mesh.ping(a, b, count=1, wait=1).received == 0, (a, b)
    for a, b in sorted(inner - {(downed.a, downed.b)})[:3]:
        assert mesh.ping(a, b, count=2, interval=0.2, wait=2).received > 0, (a, b)
    rec = runner.apply(Event(4, "heal"))
    assert rec["detail"]["carrier"] == "keep" and dropping() == set()
    reported = {(n, i) for n, names in rec["detail"]["up"].items() for i in names}
    assert reported == ends
    for a, b in cut[:3]:
        assert mesh.ping(a, b, count=3, interval=0.2, wait=2).received > 0, (a, b)
    runner.close()


def scheduler(tid: int) -> int:
    """The scheduling policy of thread `tid` of this process (field 41 of its stat)."""
    stat = Path(f"/proc/{os.getpid()}/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[38])


def test_an_action_runs_sched_fifo_and_gives_it_back(routed) -> None:
    topo = generators.line(2)
    mesh, backend, result = routed(topo, "static", timeout=30)
    assert result.converged, str(result)
    runner = EventRunner(mesh, backend, topo)
    seen: dict[str, Any] = {}
    heal = runner._heal

    def watched(event: Event) -> dict[str, Any]:
        seen["policy"] = os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK
        seen["main"] = scheduler(os.getpid())  # ours only: not the process's other threads
        child = subprocess.run(  # a process started meanwhile (a daemon) is not real-time
            [sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        seen["child"] = int(child.stdout)
        return heal(event)

    runner._heal = watched  # type: ignore[method-assign]

    def work() -> None:
        runner.apply(Event(0, "heal"))
        seen["after"] = os.sched_getscheduler(0)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert seen["policy"] == os.SCHED_FIFO
    assert seen["main"] == os.SCHED_OTHER
    assert seen["child"] == os.SCHED_OTHER
    assert seen["after"] == os.SCHED_OTHER  # given back
    runner.realtime = False
    runner.apply(Event(0, "heal"))
    assert seen["policy"] == os.SCHED_OTHER
