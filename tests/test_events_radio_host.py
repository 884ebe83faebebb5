"""A crash or a link out of range acts like radio, not like an unplugged cable (host,
root): with the default carrier mode ("keep") the dead node's interfaces and its
neighbours' keep carrier, every frame through the dead node's interfaces is dropped, and
the packets sent meanwhile are lost, not delivered after the restart. With carrier =
"lose" (the old way, interfaces set down) the neighbours lose carrier, their ARP entry
for the dead node goes, and the packets sent meanwhile wait in its unresolved queue and
arrive late. All against what the flow actually sent and received; no wall-clock bound.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sweep_scenarios import cbr_line

from meshstress import runner
from meshstress.build import Mesh
from meshstress.model import generators, scenario
from meshstress.pytest_plugin import require_capabilities
from meshstress.routing.testing import Routed, missing_handler, routed_meshes
from meshstress.stress.events import Event, EventRunner

pytestmark = pytest.mark.network

IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
NUD_INCOMPLETE, NUD_FAILED = 0x01, 0x20
PPS = 100
MARGIN = 0.1  # packets sent this close to the crash or the restart are not judged

LINE_CRASH = (
    cbr_line("line-crash", rate=f"{PPS}pps", size=100, head='duration = "5s"\nwarmup = "0.5s"\n')
    + """
[[events]]
at = "1.5s"
action = "node-crash"
node = "n1"
for = "2s"
CARRIER
"""
)


def bpf_map_fds() -> int:
    """How many BPF maps this process holds open."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:bpf-map":
                n += 1
        except OSError:
            pass
    return n


def link_view(mesh: Mesh, node: str) -> dict[str, tuple[int, str]]:
    """{ifname: (flags, operstate)} of node's mesh interfaces, read from the kernel."""
    names = {i["ifname"] for i in mesh.state.interfaces[node]}
    return {
        link.get_attr("IFLA_IFNAME"): (link["flags"], link.get_attr("IFLA_OPERSTATE"))
        for link in mesh.netlink(node).get_links()
        if link.get_attr("IFLA_IFNAME") in names
    }


def neighbour_states(mesh: Mesh, node: str, address: str) -> list[int]:
    """NUD states of node's IPv4 neighbour entries for `address` (none: flushed)."""
    return [
        n["state"]
        for n in mesh.netlink(node).get_neighbours(family=2)
        if n.get_attr("NDA_DST") == address
    ]


def run_with_records(text: str, out: Path, seen: dict[str, Any], monkeypatch) -> dict[str, Any]:
    """runner.run on the scenario text; `seen` gains the flow records ("records", "t0")
    and, read from the kernel right after the crash action, the link state of the
    crashed node and of the neighbours' ends facing it, and the neighbours' ARP state."""
    sc = scenario.loads(text, "<line-crash>", base=Path.cwd())
    missing = runner.missing_here(sc)
    if missing:
        msg = f"missing capability {'; '.join(missing)}"
        if require_capabilities():
            pytest.fail(f"MESHSTRESS_REQUIRE is set and {msg}", pytrace=False)
        pytest.skip(msg)
    real = EventRunner._node_crash

    def crash_and_look(self: EventRunner, event: Event) -> dict[str, Any]:
        detail = real(self, event)
        node = event.node or ""
        mesh = self.mesh
        seen["crashed"] = link_view(mesh, node)
        seen["peers"] = {}
        seen["arp"] = {}
        for i in mesh.state.interfaces[node]:
            peer = i["peer"]
            (theirs,) = [j["ifname"] for j in mesh.state.interfaces[peer] if j["peer"] == node]
            seen["peers"][(peer, theirs)] = link_view(mesh, peer)[theirs]
            seen["arp"][peer] = neighbour_states(mesh, peer, mesh.address(node))
        return detail

    monkeypatch.setattr(EventRunner, "_node_crash", crash_and_look)
    keep: dict[str, Any] = {}
    r = runner.run(sc, out, keep=keep)
    seen.update(keep)
    return r


def judged(records: Any, t0: float, r: dict[str, Any]) -> dict[str, Any]:
    """The flow's packets sent while n1 was down (MARGIN inside the crash), and what
    became of them."""
    crash, restart = r["events"]
    assert (crash["action"], restart["action"]) == ("node-crash", "node-restart")
    down, back = t0 + crash["t_rel"], t0 + restart["t_rel"]
    rec = records["cbr"]
    inside = {seq for seq, t in rec.sent if down + MARGIN <= t <= back - MARGIN}
    got = {seq: t_recv for seq, _, t_recv in rec.received}
    arrived = {seq: got[seq] for seq in inside if seq in got}
    after = [seq for seq, t in rec.sent if t > back + 1.0]
    return {
        "crash": crash,
        "restart": restart,
        "down": down,
        "back": back,
        "inside": inside,
        "arrived": arrived,
        "late_s": sorted(t - back for t in arrived.values()),
        "after": after,
        "after_arrived": [seq for seq in after if seq in got],
    }


def test_a_radio_like_crash_loses_what_is_sent_meanwhile_and_keeps_carrier(
    tmp_path: Path, monkeypatch
) -> None:
    maps_before = bpf_map_fds()
    seen: dict[str, Any] = {}
    r = run_with_records(LINE_CRASH.replace("CARRIER", ""), tmp_path / "run", seen, monkeypatch)
    j = judged(seen["records"], seen["t0"], r)
    assert j["crash"]["detail"]["carrier"] == "keep"  # the default, recorded
    assert j["restart"]["detail"]["carrier"] == "keep"
    assert j["crash"]["detail"]["down"]  # the node's interfaces stopped carrying frames
    # the flow sent through the crash: about 2 s x 100 pps, minus the margins
    assert len(j["inside"]) >= PPS, len(j["inside"])
    # and none of what it sent while n1 was down arrived, not even after the restart
    assert j["arrived"] == {}, (len(j["arrived"]), j["late_s"][-5:])
    # delivery came back after the restart
    assert j["after"] and j["after_arrived"], j["after"][:5]
    # one outage, from the crash until the restart
    out = r["flows"]["cbr"]["outages"]
    start, end, _ = next(o for o in out if o[1] > j["crash"]["t_rel"])
    assert start <= j["crash"]["t_rel"] + MARGIN and end >= j["restart"]["t_rel"] - 0.002, out
    # read back right after the crash: every interface up with carrier, the neighbours'
    # ends too, and their ARP entry for n1 still there (not flushed, not unresolved)
    for ifname, (flags, oper) in seen["crashed"].items():
        assert flags & IFF_UP and flags & IFF_LOWER_UP and oper == "UP", (ifname, flags, oper)
    assert len(seen["peers"]) == 2
    for end_, (flags, oper) in seen["peers"].items():
        assert flags & IFF_UP and flags & IFF_LOWER_UP and oper == "UP", (end_, flags, oper)
    assert seen["arp"]["n0"], seen["arp"]  # n0 sends to n1: it had resolved it
    assert not [s for s in seen["arp"]["n0"] if s & (NUD_INCOMPLETE | NUD_FAILED)], seen["arp"]
    # the drop map went with the run (fds only, nothing pinned)
    assert bpf_map_fds() == maps_before
    print(
        f"\nkeep: {len(j['inside'])} sent while n1 was down, {len(j['arrived'])} arrived; "
        f"outage {end - start:.3f} s for a crash of "
        f"{j['restart']['t_rel'] - j['crash']['t_rel']:.3f} s"
    )


def test_the_old_way_holds_the_packets_and_delivers_them_late(tmp_path: Path, monkeypatch) -> None:
    """carrier = "lose" documents the distortion that "keep" removes: the neighbour loses
    carrier, and the packets sent during the crash reach n2 after the restart."""
    seen: dict[str, Any] = {}
    text = LINE_CRASH.replace("CARRIER", 'carrier = "lose"')
    r = run_with_records(text, tmp_path / "run", seen, monkeypatch)
    j = judged(seen["records"], seen["t0"], r)
    assert j["crash"]["detail"]["carrier"] == "lose"
    assert len(j["inside"]) >= PPS, len(j["inside"])
    for ifname, (flags, _) in seen["crashed"].items():
        assert not flags & IFF_UP, ifname
    for end_, (flags, _) in seen["peers"].items():
        assert flags & IFF_UP and not flags & IFF_LOWER_UP, (end_, flags)  # no carrier
    # (the neighbours' ARP entries for n1 go when linkwatch handles the carrier loss,
    # up to a second later: not read here)
    # packets sent while n1 was down arrived after it came back: late, not lost
    assert j["arrived"], "no packet sent during the crash arrived"
    assert min(j["arrived"].values()) >= j["back"], j["late_s"][:3]
    print(
        f"\nlose: {len(j['inside'])} sent while n1 was down, {len(j['arrived'])} arrived "
        f"after the restart, up to {j['late_s'][-1]:.3f} s after it"
    )


# --- link-down and restart at the EventRunner, both modes ------------------------------


@pytest.fixture
def routed() -> Iterator[Callable[..., Routed]]:
    with routed_meshes(missing_handler(pytest.skip, pytest.fail)) as make:
        yield make


def facing(mesh: Mesh, node: str, peer: str) -> str:
    (ifname,) = [i["ifname"] for i in mesh.state.interfaces[node] if i["peer"] == peer]
    return ifname


def test_a_radio_like_link_down_drops_both_ways_and_keeps_carrier(routed) -> None:
    topo = generators.line(3)
    mesh, backend, result = routed(topo, "static", timeout=30)
    assert result.converged, str(result)
    runner_ = EventRunner(mesh, backend, topo)
    down = Event(0, "link-down", link=("n0", "n1"))
    runner_.prepare([down])
    ends = [("n0", facing(mesh, "n0", "n1")), ("n1", facing(mesh, "n1", "n0"))]
    try:
        assert mesh.ping("n0", "n1", count=1, wait=1).ok
        # a fresh veth says UP once linkwatch has run (a while, under the lab's emulation)
        deadline = time.monotonic() + 30
        while any(link_view(mesh, a)[i][1] != "UP" for a, i in ends):
            assert time.monotonic() < deadline, [link_view(mesh, a)[i] for a, i in ends]
            time.sleep(0.1)
        rec = runner_.apply(down)
        assert rec["detail"]["carrier"] == "keep"
        assert sorted(rec["detail"]["down"]) == ["n0", "n1"]
        for a, b in (("n0", "n1"), ("n1", "n0")):
            ifname = facing(mesh, a, b)
            flags, oper = link_view(mesh, a)[ifname]
            assert flags & IFF_UP and flags & IFF_LOWER_UP and oper == "UP", (a, flags, oper)
            assert runner_.dropping(a, ifname)
        assert not runner_.dropping("n1", facing(mesh, "n1", "n2"))  # the other link
        assert not mesh.ping("n0", "n1", count=2, interval=0.2, wait=1).received
        assert not mesh.ping("n1", "n0", count=2, interval=0.2, wait=1).received
        assert mesh.ping("n1", "n2", count=1, wait=1).ok
        rec = runner_.apply(Event(1, "link-up", link=("n0", "n1")))
        assert rec["detail"]["carrier"] == "keep" and sorted(rec["detail"]["up"]) == ["n0", "n1"]
        assert not runner_.dropping("n0", facing(mesh, "n0", "n1"))
        assert mesh.ping("n0", "n2", count=3, interval=0.2, wait=2).received
    finally:
        runner_.close()


def test_modes_mix_a_lose_link_down_inside_a_keep_crash(routed) -> None:
    """Each cause keeps its mode: a link set down ("lose") while its node is crashed
    radio-like stays down after the restart, and the rest of the node carries again."""
    topo = generators.line(3)
    mesh, backend, result = routed(topo, "static", timeout=30)
    assert result.converged, str(result)
    runner_ = EventRunner(mesh, backend, topo)
    try:
        runner_.apply(Event(0, "node-crash", node="n1"))  # not prepared: attached now
        i10, i12 = facing(mesh, "n1", "n0"), facing(mesh, "n1", "n2")
        assert runner_.dropping("n1", i10) and runner_.dropping("n1", i12)
        runner_.apply(Event(1, "link-down", link=("n0", "n1"), carrier="lose"))
        assert not link_view(mesh, "n1")[i10][0] & IFF_UP
        rec = runner_.apply(Event(2, "node-restart", node="n1"))
        assert rec["detail"]["up"] == [i12] and rec["detail"]["carrier"] == "keep"
        assert not runner_.dropping("n1", i12) and not runner_.dropping("n1", i10)
        assert not link_view(mesh, "n1")[i10][0] & IFF_UP  # still down: its own cause
        assert mesh.ping("n1", "n2", count=3, interval=0.2, wait=2).received
        assert not mesh.ping("n0", "n1", count=1, wait=1).ok
        rec = runner_.apply(Event(3, "link-up", link=("n0", "n1")))
        assert rec["detail"]["carrier"] == "lose"
        assert link_view(mesh, "n1")[i10][0] & IFF_UP
    finally:
        runner_.close()
