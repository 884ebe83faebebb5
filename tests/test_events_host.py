"""Timed events on real meshes on the host (root): link down/up, node crash/restart,
partition/heal with static routing and babeld (and batmand's crash/restart), and
run_timeline on a live mesh. Every wait is a bounded loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from meshstress.build import Mesh, state
from meshstress.model import generators
from meshstress.model.topology import Topology
from meshstress.routing import Backend
from meshstress.routing.testing import Routed, missing_handler, routed_meshes
from meshstress.stress.events import Event, EventRunner, run_timeline

pytestmark = pytest.mark.network

FAST = {
    "static": {},
    "babeld": {"hello_interval": "250ms"},
    "batmand": {"orig_interval": "200ms"},
}


@pytest.fixture
def routed() -> Iterator[Callable[..., Routed]]:
    with routed_meshes(missing_handler(pytest.skip, pytest.fail)) as make:
        yield make


def up(routed: Callable[..., Routed], topo: Topology, routing: str) -> tuple[Mesh, Backend]:
    mesh, backend, result = routed(topo, routing, FAST[routing], timeout=40)
    assert result.converged, str(result)
    return mesh, backend


def reaches(mesh: Mesh, src: str, dst: str) -> bool:
    return mesh.ping(src, dst, count=1, wait=1).ok


def wait_reaches(mesh: Mesh, pairs: list[tuple[str, str]], timeout: float = 30.0) -> float:
    """Seconds until every pair passes a ping; fails the test after `timeout`."""
    began = time.monotonic()
    while True:
        if all(reaches(mesh, a, b) for a, b in pairs):
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            missing = [p for p in pairs if not reaches(mesh, *p)]
            pytest.fail(f"no reachability after {timeout:.0f} s: {missing}")
        time.sleep(0.2)


def if_up(mesh: Mesh, node: str, ifname: str) -> bool:
    ipr = mesh.netlink(node)
    (link,) = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])
    return bool(link["flags"] & 1)


def is_cut(runner: EventRunner, node: str, ifname: str, carrier: str) -> bool:
    """Read back from the kernel: "keep" - up and its drop slot set; "lose" - down."""
    up = if_up(runner.mesh, node, ifname)
    return up and runner.dropping(node, ifname) if carrier == "keep" else not up


def alive(pid: int, created: float) -> bool:
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - created) < 0.05 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize(
    ("routing", "carrier"), [("static", "keep"), ("static", "lose"), ("babeld", "keep"),
                             ("babeld", "lose")]
)  # fmt: skip
def test_link_down_cuts_and_link_up_restores(routed, routing: str, carrier: str) -> None:
    topo = generators.line(3)
    mesh, backend = up(routed, topo, routing)
    runner = EventRunner(mesh, backend, topo)
    assert reaches(mesh, "n0", "n2")
    rec = runner.apply(Event(0.0, "link-down", link=("n1", "n0"), carrier=carrier))
    assert rec["action"] == "link-down" and rec["target"] == "n1-n0"
    assert rec["detail"]["carrier"] == carrier
    assert sorted(rec["detail"]["down"]) == ["n0", "n1"]  # both ends of the veth pair
    for node, (ifname,) in rec["detail"]["down"].items():
        assert is_cut(runner, node, ifname, carrier)
    assert not reaches(mesh, "n0", "n2")
    assert not reaches(mesh, "n0", "n1")
    assert reaches(mesh, "n1", "n2")  # the other link is untouched
    rec = runner.apply(Event(1.0, "link-up", link=("n0", "n1")))
    assert sorted(rec["detail"]["up"]) == ["n0", "n1"]
    took = wait_reaches(mesh, [("n0", "n2"), ("n2", "n0"), ("n0", "n1")])
    print(f"\n{routing}, carrier {carrier}: line3 reachable {took:.2f} s after link-up")


@pytest.mark.parametrize(
    ("routing", "carrier"), [("babeld", "keep"), ("babeld", "lose"), ("batmand", "keep")]
)
def test_node_crash_freezes_the_daemon_before_its_interfaces_go_down(
    routed, routing: str, carrier: str
) -> None:
    """A crashed node sends nothing: its daemon must not see its own interfaces cut
    (a running babeld answers with retractions and seqno requests on the interfaces still
    up; downing a 78-link hub's interfaces takes 0.8-1.7 s)."""
    topo = generators.line(3)
    mesh, backend = up(routed, topo, routing)
    runner = EventRunner(mesh, backend, topo)
    (daemon,) = [p for p in mesh.state.processes if p.node == "n1" and p.role == routing]
    seen: list[str] = []
    real_start = runner._start

    def watching_start(*args, **kwargs):  # type: ignore[no-untyped-def]
        # the drop slot and the buffer that cut the node's interfaces are about to go out
        seen.append(psutil.Process(daemon.pid).status())
        return real_start(*args, **kwargs)

    runner._start = watching_start  # type: ignore[method-assign]
    rec = runner.apply(Event(1.0, "node-crash", node="n1", carrier=carrier))
    assert seen == [psutil.STATUS_STOPPED]
    assert rec["detail"]["killed"] == [daemon.pid] and not alive(daemon.pid, daemon.create_time)


@pytest.mark.parametrize("routing", ["babeld", "batmand"])
def test_node_crash_kills_the_daemon_and_restart_brings_a_new_one(routed, routing: str) -> None:
    topo = generators.line(3)
    mesh, backend = up(routed, topo, routing)
    runner = EventRunner(mesh, backend, topo)
    (old,) = [p for p in mesh.state.processes if p.node == "n1" and p.role == routing]
    assert alive(old.pid, old.create_time)

    rec = runner.apply(Event(2.0, "node-crash", node="n1"))  # radio-like, the default
    assert rec["target"] == "n1" and rec["detail"]["killed"] == [old.pid]
    assert not alive(old.pid, old.create_time)  # SIGKILLed, by its recorded PID
    assert not [p for p in mesh.state.processes if p.node == "n1" and p.role == routing]
    for i in mesh.state.interfaces["n1"]:
        assert is_cut(runner, "n1", i["ifname"], "keep")
    others = [p for p in mesh.state.processes if p.role == routing]
    assert len(others) == 2 and all(alive(p.pid, p.create_time) for p in others)
    assert not reaches(mesh, "n0", "n2") and not reaches(mesh, "n2", "n0")

    rec = runner.apply(Event(4.0, "node-restart", node="n1"))
    (new,) = [p for p in mesh.state.processes if p.node == "n1" and p.role == routing]
    assert rec["detail"]["started"] == [new.pid] and new.pid != old.pid
    assert alive(new.pid, new.create_time)
    saved = state.load(mesh.state.run_id)  # teardown and `clean` will find the new one
    assert saved is not None
    assert [p.pid for p in saved.processes if p.node == "n1"] == [new.pid]
    took = wait_reaches(mesh, [("n0", "n2"), ("n2", "n0")])
    print(f"\n{routing}: ends reach each other {took:.2f} s after the restart")
    assert alive(new.pid, new.create_time)  # it did not exit (stale pid file, socket)


def test_static_node_crash_and_restart(routed) -> None:
    topo = generators.line(3)
    mesh, backend = up(routed, topo, "static")
    runner = EventRunner(mesh, backend, topo)
    runner.apply(Event(0.0, "node-crash", node="n1"))
    assert not reaches(mesh, "n0", "n2")
    rec = runner.apply(Event(1.0, "node-restart", node="n1"))
    assert len(rec["detail"]["up"]) == 2
    # routes are back at once; the kernel may take up to a second (linkwatch) before an
    # interface that came up transmits, so the first echo can be lost (seen in CI)
    wait_reaches(mesh, [("n0", "n2"), ("n2", "n0")], timeout=5.0)


LEFT = ("n0", "n3", "n6")
REST = ("n1", "n2", "n4", "n5", "n7", "n8")


@pytest.mark.parametrize("routing", ["static", "babeld"])
def test_partition_and_heal_on_a_grid(routed, routing: str) -> None:
    topo = generators.grid4(3, 3)
    mesh, backend = up(routed, topo, routing)
    runner = EventRunner(mesh, backend, topo)
    # a link downed before the partition stays down after the heal
    runner.apply(Event(0.0, "link-down", link=("n4", "n5")))
    rec = runner.apply(Event(1.0, "partition", groups=(LEFT, REST)))
    assert rec["target"] == "n0,n3,n6|n1,n2,n4,n5,n7,n8"
    assert rec["detail"]["cut"] == ["n0-n1", "n3-n4", "n6-n7"]
    across = [("n0", "n1"), ("n3", "n4"), ("n6", "n8"), ("n8", "n0")]
    within = [("n0", "n6"), ("n6", "n0"), ("n1", "n8"), ("n8", "n2"), ("n2", "n7")]
    wait_reaches(mesh, within)
    for a, b in across:
        assert not reaches(mesh, a, b), (a, b)
    rec = runner.apply(Event(2.0, "heal"))
    assert rec["detail"]["restored"] == ["n0-n1", "n3-n4", "n6-n7"]
    took = wait_reaches(mesh, across + within)
    print(f"\n{routing}: grid 3x3 healed in {took:.2f} s")
    for me, other in (("n4", "n5"), ("n5", "n4")):  # not the heal's to bring back
        (ifname,) = [i["ifname"] for i in mesh.state.interfaces[me] if i["peer"] == other]
        assert is_cut(runner, me, ifname, "keep")


def test_run_timeline_on_a_live_mesh(routed) -> None:
    topo = generators.line(3)
    mesh, backend = up(routed, topo, "static")
    runner = EventRunner(mesh, backend, topo)
    events = [
        Event(0.2, "link-down", link=("n0", "n1")),
        Event(1.0, "link-up", link=("n0", "n1")),
        Event(1.2, "node-crash", node="n2"),
        Event(30.0, "node-restart", node="n2"),  # never reached: stopped before
    ]
    runner.prepare(events)  # as meshstress run does: the drop filters attached before t0
    stop = threading.Event()
    seen: list[tuple[float, float, bool]] = []  # (began, ended, reached) of each ping

    def watch() -> None:  # between the down and the up, n0 cannot reach n1
        time.sleep(0.3)
        while time.monotonic() < t0 + 0.9:
            began = time.monotonic()
            ok = mesh.ping("n0", "n1", count=1, wait=0.2).ok
            seen.append((began, time.monotonic(), ok))

    watcher = threading.Thread(target=watch)
    timer = threading.Timer(2.0, stop.set)
    t0 = time.monotonic()
    watcher.start()
    timer.start()
    try:
        records = run_timeline(runner, events, t0, stop)
    finally:
        timer.cancel()
        watcher.join()
    assert [r["action"] for r in records] == ["link-down", "link-up", "node-crash"]
    for rec, ev in zip(records, events, strict=False):
        assert rec["t"] >= t0 + ev.at  # "t" is when it began: not early
        # late_s is how long after its time the event began (how late depends on the load)
        assert abs(rec["late_s"] - (rec["t"] - (t0 + ev.at))) < 1e-6, rec
    assert [r["t"] for r in records] == sorted(r["t"] for r in records)
    down, back = records[0]["t"] + records[0]["took_s"], records[1]["t"]
    inside = [ok for began, ended, ok in seen if began >= down and ended <= back]
    assert inside and not any(inside), (down - t0, back - t0, [(b - t0, e - t0, ok)
                                                            for b, e, ok in seen])  # fmt: skip
    assert time.monotonic() < t0 + events[-1].at  # returned on `stop`, not at the 30 s event
    wait_reaches(mesh, [("n0", "n1")], timeout=5.0)  # the link came back
    assert not reaches(mesh, "n1", "n2")  # n2 crashed and was never restarted
