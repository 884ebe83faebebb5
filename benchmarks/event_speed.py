#!/usr/bin/env python3
"""How long events take to act on the host; print JSON with each event's took_s.

Cases: the crash and restart of the hub of a star with 78 links, and on the Freifunk Ulm
map (217 nodes, 447 links) the crash of node 104 (78 links) and a partition and heal
that split the map in two (the cut is as large as a city's map gives). Routing "none":
the figures are the interface changes themselves (the routing's own work on a crash or
heal comes on top: babeld's daemon is killed in the same step; static routes are
reinstalled after a heal).

With --contend, a thread in this process parses link dumps of every node without pause,
as the route recorder of `meshstress run` does: every blocking call of the event thread
then waits for the GIL. "one_call_each_s" is the old way (one netlink round trip per
interface), measured on the same mesh for comparison.

"took_s" is the whole action (the backend's work included: reaping a killed daemon,
starting one); "links_s" is how long after its start the kernel had made every
interface change (and a crash had signalled its daemons). A crash downs its node's
interfaces with one request for their device group; "per_interface_requests_links_s" is
the same crash with one request per interface (in one buffer all the same), and
"one_call_each_s" the old way, one round trip per interface.

Each case runs `--repeat` times at the runner's default (the action's thread SCHED_FIFO)
and as many times, interleaved, at the thread's own priority ("normal_priority_took_s"),
so both meet the same host load; medians and maxima. "ulm_side_by_side" puts the Ulm
crash next to the largest partition and its heal. "loadavg_before"/"_after" are the
host's load averages; --load N adds N busy-loop processes of our own meanwhile.

--carrier keep (the default, radio-like: a cut is a drop slot set in a BPF map, the
interfaces keep carrier; their filters are attached by prepare, before the timing) or
lose (the interfaces set down, as before 30 Nov 2026): every case with that mode. The
old-way comparisons (one_call_each_s, per_interface_requests_links_s) are interface
changes, so only with lose.

Targets: a crash of 78 links <= 0.05 s; a partition or heal of any size <= 0.1 s.
Run as root: sudo .venv/bin/python benchmarks/event_speed.py [--carrier lose] [--contend]
[--load N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from meshstress import build
from meshstress.build import Mesh, bringup, plan
from meshstress.build.state import RunState
from meshstress.model import generators, topofile
from meshstress.model.topology import Topology
from meshstress.routing import get_backend
from meshstress.stress.events import Event, EventRunner

HERE = Path(__file__).resolve().parent
ULM = HERE.parent / "tests" / "data" / "freifunk-ulm.json"
TARGETS = {"node-crash": 0.05, "node-restart": 0.1, "partition": 0.1, "heal": 0.1}


def bfs_split(topo: Topology, share: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Two groups: the `share` of the nodes nearest the first one (breadth first), the
    rest. The cut grows with the share: on Freifunk Ulm 0.5 cuts 238 of 447 links."""
    adj: dict[str, list[str]] = {n: [] for n in topo.node_names()}
    for link in topo.links:
        adj[link.a].append(link.b)
        adj[link.b].append(link.a)
    first = topo.node_names()[0]
    order, seen = [first], {first}
    for node in order:
        for other in adj[node]:
            if other not in seen:
                seen.add(other)
                order.append(other)
    order += [n for n in topo.node_names() if n not in seen]
    k = max(1, int(len(order) * share))
    return tuple(order[:k]), tuple(order[k:])


def is_up(mesh: Mesh, node: str) -> dict[str, bool]:
    names = {i["ifname"] for i in mesh.state.interfaces[node]}
    return {
        link.get_attr("IFLA_IFNAME"): bool(link["flags"] & 1)
        for link in mesh.netlink(node).get_links()
        if link.get_attr("IFLA_IFNAME") in names
    }


def one_call_each(mesh: Mesh, node: str, up: bool) -> float:
    """The old way: one netlink request (and its ack) per interface."""
    ipr = mesh.netlink(node)
    index = {link.get_attr("IFLA_IFNAME"): link["index"] for link in ipr.get_links()}
    t = time.monotonic()
    for i in mesh.state.interfaces[node]:
        ipr.link("set", index=index[i["ifname"]], state="up" if up else "down")
    return time.monotonic() - t


class Contender(threading.Thread):
    """Parses every node's link dump in a loop (GIL holder, like the route recorder)."""

    def __init__(self, st: RunState) -> None:
        super().__init__(daemon=True)
        self.st, self.halt, self.rounds = st, threading.Event(), 0

    def run(self) -> None:
        with Mesh(self.st) as mesh:
            while not self.halt.is_set():
                for node in mesh.nodes:
                    mesh.netlink(node).get_links()
                self.rounds += 1


def median(values: list[float]) -> float:
    return statistics.median(values)


def measure(
    topo: Topology,
    cases: list[list[Event]],
    repeat: int,
    contend: bool,
    routing: str = "none",
    compare_priority: bool = True,
    carrier: str = "keep",
) -> list[Any]:
    rows: list[dict[str, Any]] = []
    contender = None
    st: RunState | None = None
    if routing == "none":
        run_id = plan.new_run_id()
        st = RunState(run_id=run_id, topology=topo.name)
        backend = get_backend("none")
    try:
        if routing == "none":
            build.apply(plan.make_plan(topo, run_id, impair=False), st)
        else:
            topo.routing, topo.routing_settings = routing, {}
            up = bringup.bring_up(topo, wait=True, timeout=180, impair=False)
            st, backend = up.state, up.backend
        mesh = Mesh(st)
        runner = EventRunner(mesh, backend, topo)
        cases = [[replace(ev, carrier=carrier) for ev in case] for case in cases]
        t = time.monotonic()
        runner.prepare([ev for case in cases for ev in case])
        prepare_s = time.monotonic() - t
        if contend:
            contender = Contender(st)
            contender.start()
        for case in cases:
            took: dict[str, list[float]] = {}
            links: dict[str, list[float]] = {}
            normal: dict[str, list[float]] = {}
            changed: dict[str, int] = {}
            # SCHED_FIFO (the runner's default) and, interleaved, the thread's own
            # priority: both under the same host load
            for k in range(repeat * (2 if compare_priority else 1)):
                runner.realtime = k % 2 == 0 or not compare_priority
                for ev in case:
                    rec = runner.apply(ev)
                    if not runner.realtime:
                        normal.setdefault(ev.action, []).append(rec["took_s"])
                        time.sleep(0.2)
                        continue
                    took.setdefault(ev.action, []).append(rec["took_s"])
                    d = rec["detail"]
                    links.setdefault(ev.action, []).append(d["links_s"])
                    changed[ev.action] = (
                        sum(len(v) for key in ("down", "up") for v in (d.get(key) or {}).values())
                        if isinstance(d.get("down", d.get("up")), dict)
                        else len(d.get("down") or d.get("up") or [])
                    )
                    if ev.action == "node-crash" and carrier == "lose":  # read back: all down
                        assert not any(is_up(mesh, ev.node or "").values())
                    if ev.action == "node-crash" and carrier == "keep":  # up, all dropping
                        node = ev.node or ""
                        assert all(is_up(mesh, node).values())
                        assert all(runner.dropping(node, n) for n in is_up(mesh, node))
                    time.sleep(0.2)
            runner.realtime = True
            for action, values in took.items():
                values.sort()
                done = sorted(links[action])
                row = {
                    "topology": topo.name,
                    "routing": routing,
                    "carrier": carrier,
                    "prepare_s": round(prepare_s, 3),
                    "action": action,
                    "target": case[0].node or f"{len((case[0].groups or [()])[0])} nodes apart",
                    "interfaces": changed[action],
                    "took_s": round(median(values), 4),
                    "took_max_s": round(values[-1], 4),
                    "took_all_s": [round(v, 4) for v in values],
                    "links_s": round(median(done), 4),
                    "target_s": TARGETS.get(action),
                }
                if action in normal:
                    plain = sorted(normal[action])
                    row["normal_priority_took_s"] = round(median(plain), 4)
                    row["normal_priority_took_max_s"] = round(plain[-1], 4)
                rows.append(row)
            node = case[0].node
            if node is not None and carrier == "lose":  # the same crash, the old way
                old = []
                for _ in range(repeat):
                    old.append(one_call_each(mesh, node, up=False))
                    one_call_each(mesh, node, up=True)
                    time.sleep(0.2)
                rows[-2]["one_call_each_s"] = round(median(old), 4)
                # one buffer, but one request per interface instead of the group's one
                runner.use_groups = False
                each = []
                for _ in range(repeat):
                    each.append(runner.apply(case[0])["detail"]["links_s"])
                    runner.apply(case[1])
                    time.sleep(0.2)
                runner.use_groups = True
                rows[-2]["per_interface_requests_links_s"] = round(median(each), 4)
        if contender is not None:
            contender.halt.set()
            contender.join()
        runner.close()
        mesh.close()
    finally:
        problems = build.teardown(st) if st is not None else []  # bring_up undoes itself
        if problems:
            raise SystemExit(f"teardown problems: {problems}")
    return rows


def busy_loops(n: int, seconds: float) -> list[subprocess.Popen[bytes]]:
    """n processes that keep a CPU busy for at most `seconds` (a loaded host, on
    purpose); stopped by PID in main's finally."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def side_by_side(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Freifunk Ulm: the crash of 104 and the largest partition and its heal, median and
    max of took_s, at SCHED_FIFO and at normal priority, from the same run."""
    ulm = [r for r in rows if r["topology"] == "freifunk-ulm"]
    largest = max((r["interfaces"] for r in ulm if r["action"] == "partition"), default=0)
    out: dict[str, Any] = {}
    for r in ulm:
        if r["action"] in ("node-crash", "partition", "heal") and (
            r["action"] == "node-crash" or r["interfaces"] == largest
        ):
            out[r["action"]] = {
                "interfaces": r["interfaces"],
                "took_s": r["took_s"],
                "took_max_s": r["took_max_s"],
                "normal_priority_took_s": r.get("normal_priority_took_s"),
                "normal_priority_took_max_s": r.get("normal_priority_took_max_s"),
                "target_s": r["target_s"],
            }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=7, help="runs per case (median reported)")
    ap.add_argument("--contend", action="store_true", help="a GIL-holding thread runs meanwhile")
    ap.add_argument(
        "--load", type=int, default=0, help="this many busy-loop processes run meanwhile"
    )
    ap.add_argument("--ulm", default=str(ULM), help="meshnet-lab JSON of Freifunk Ulm")
    ap.add_argument("--quick", action="store_true", help="only the star")
    ap.add_argument(
        "--routing",
        default="none",
        help="routing of the meshes (babeld: its daemons are "
        "killed and restarted too; the mesh must converge first)",
    )
    ap.add_argument(
        "--carrier",
        choices=("keep", "lose"),
        default="keep",
        help="how every cut is made (keep: radio-like, a drop slot; lose: interfaces down)",
    )
    ap.add_argument(
        "--no-compare-priority",
        dest="compare_priority",
        action="store_false",
        help="skip the runs at the thread's own priority (normal_priority_took_s)",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    hogs = busy_loops(args.load, 600.0)
    try:
        star = generators.star(79)
        crash = [Event(0, "node-crash", node="n0"), Event(0, "node-restart", node="n0")]
        rows = measure(star, [crash], args.repeat, args.contend, args.routing,
                       args.compare_priority, args.carrier)  # fmt: skip
        if not args.quick and Path(args.ulm).exists():
            ulm = topofile.load(args.ulm)
            cases = [[Event(0, "node-crash", node="104"), Event(0, "node-restart", node="104")]]
            for share in (0.05, 0.2, 0.5):
                groups = bfs_split(ulm, share)
                cases.append([Event(0, "partition", groups=groups), Event(0, "heal")])
            rows += measure(ulm, cases, args.repeat, args.contend, args.routing,
                            args.compare_priority, args.carrier)  # fmt: skip
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    for r in rows:
        if r["target_s"] is not None:
            r["met"] = r["took_s"] <= r["target_s"]
    out = {
        "contend": args.contend,
        "load_processes": args.load,
        "routing": args.routing,
        "carrier": args.carrier,
        "repeat": args.repeat,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "ulm_side_by_side": side_by_side(rows),
        "results": rows,
    }
    print(json.dumps(out, indent=1))
    return 0 if all(r.get("met", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
