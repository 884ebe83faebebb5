#!/usr/bin/env python3
"""What does one route snapshot of a big mesh cost? Print JSON, old and new side by side.

Builds a mesh (default: Freifunk Ulm, 217 nodes, impairments left out, static routing;
`--routing babeld` runs the daemons), waits for convergence, then times in one run:
- old: `snapshot_per_node`, the algorithm before issue 12 (per node: a socket set up
  in the namespace, a route and a rule dump parsed whole, every address through
  `ipaddress`, then hop counts for every pair);
- new: `snapshot` with a KernelRouteReader kept open, as the run's route recorder does
  (one route and one rule dump per namespace over sockets opened once; a namespace whose
  dump bytes did not change is not parsed again), with 1 and 2 dumping threads:
  `first` (opens the sockets), `steady` (tables unchanged: the recorder's usual case),
  `changed` (every table treated as changed: parsed again from the message cache),
  `cold` (as changed, the message cache emptied too).
Old and new must give the same next hops and hop counts (`"identical"`: checked where
the tables held still from one old snapshot to the next, `"compared"` times).
`--profile` adds the top functions of a steady and of a changed snapshot.

`live` (with `--routing babeld`, or any daemon): the recorder's snapshots while the
tables really change, side by side with the unchanged case, one reader kept open:
- `first`: the first snapshot of each reader (it opens the sockets);
- `converging`: from the moment the daemons start, a snapshot every `--interval` s for
  `--converge-for` s (most tables change from one snapshot to the next);
- `unchanged`: after convergence, tables still (the daemons running);
- `link_changes`: a link taken down every `--change-every` s (the one before it brought
  back up), for `--changes-for` s; the daemons reroute around it;
- `all_changed`: every namespace dumped and every table parsed again (the reader's
  memory of the last dumps cleared), the worst case of one snapshot.
Three readers take turns (the order rotating): `watch`, the recorder's (a namespace
is dumped only after a notification); `dump_all` (every namespace dumped each time, the
same processing); `before` (every namespace dumped, a changed table parsed and put
through select_routes destination by destination: the reader before this work).
Per snapshot: wall seconds, the thread's CPU (`cpu_s`) and time waiting for a CPU
(`runq_s`, from /proc/thread-self/schedstat), the dumps' wall and CPU seconds (the
kernel filling them, in send/recv) against processing them (`process_s`: compare,
parse, select), and how many namespaces were dumped (`dumped`: the others sent no
notification) and had changed (`changed`). Each phase gives median, 90th percentile
and maximum, for all its snapshots and for those that saw a change (`with_changes`).
`dump_only` times the raw dump system calls of every namespace alone (no parsing).
At the end, with the links back and the tables still, the reader's snapshot must equal
the per-node one (`live_identical`). `--fifo` runs each snapshot at SCHED_FIFO, so that
it waits for no other task: what is left is the CPU it needs (a diagnostic; the run's
recorder runs at normal priority).

    sudo .venv/bin/python benchmarks/route_snapshot.py [--routing babeld] [--repeat 9]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from meshstress import build
from meshstress.build import bringup
from meshstress.model import topofile
from meshstress.routing import wait_converged
from meshstress.routing.base import KernelRouteReader, select_routes
from meshstress.routing.converge import snapshot, snapshot_per_node
from meshstress.routing.rtdump import (
    RTM_NEWROUTE,
    RTM_NEWRULE,
    iter_payloads,
    parse_route,
    parse_rule,
)
from meshstress.stress.events import EventRunner

HERE = Path(__file__).resolve().parent
# shared/ lies beside the checkout (../shared), or two levels up from a worktree
ULM = next(
    (p for d in (HERE.parent.parent, HERE.parent.parent.parent)
     if (p := d / "shared" / "data" / "freifunk" / "freifunk-ulm.json").exists()),
    HERE.parent.parent / "shared" / "data" / "freifunk" / "freifunk-ulm.json",
)  # fmt: skip


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


def sched() -> tuple[int, int]:
    """This thread's CPU and run-queue wait so far, in ns (/proc/thread-self/schedstat)."""
    with open("/proc/thread-self/schedstat") as f:
        cpu, wait, _slices = f.read().split()
    return int(cpu), int(wait)


FIFO = {"on": False}  # --fifo: each snapshot runs SCHED_FIFO (a diagnostic, see main)


def timed_snapshot(mesh: Any, backend: Any, reader: KernelRouteReader) -> dict[str, Any]:
    if FIFO["on"]:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    try:
        s0 = sched()
        t = time.perf_counter()
        snapshot(mesh, backend, reader)
        wall = time.perf_counter() - t
        s1 = sched()
    finally:
        if FIFO["on"]:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    c = reader.cost
    assert c is not None
    return {
        "s": wall,
        "cpu_s": (s1[0] - s0[0]) / 1e9,
        "runq_s": (s1[1] - s0[1]) / 1e9,
        "dump_s": c.dump_s,
        "dump_cpu_s": c.dump_cpu_s,
        "process_s": c.process_s,
        "process_cpu_s": c.process_cpu_s,
        "dumped": c.dumped,
        "changed": c.changed,
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """median, 90th percentile and maximum of each figure over `rows`."""
    if not rows:
        return {"snapshots": 0}
    out: dict[str, Any] = {"snapshots": len(rows)}
    for key in rows[0]:
        xs = sorted(r[key] for r in rows)
        p90 = xs[min(len(xs) - 1, int(0.9 * len(xs)))]
        digits = 0 if key in ("dumped", "changed") else 4
        out[key] = {
            "median": round(statistics.median(xs), digits),
            "p90": round(p90, digits),
            "max": round(xs[-1], digits),
        }
    return out


def phase(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = summary(rows)
    out["with_changes"] = summary([r for r in rows if r["changed"]])
    return out


def snapshots_for(
    mesh: Any, backend: Any, readers: dict[str, KernelRouteReader], seconds: float,
    interval: float, each: Any = None,
) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """Every `interval` s for `seconds` s a snapshot through each reader, one after the
    other (the order rotating); each(t) before, if given."""
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in readers}
    names = list(readers)
    t0 = time.monotonic()
    while (now := time.monotonic()) - t0 < seconds:
        if each is not None:
            each(now - t0)
        for name in names:
            rows[name].append(timed_snapshot(mesh, backend, readers[name]))
        names = names[1:] + names[:1]
        time.sleep(max(0.0, interval - (time.monotonic() - now)))
    return rows


def dump_only(reader: KernelRouteReader, repeat: int) -> dict[str, Any]:
    """The raw dumps of every namespace, nothing parsed: wall and thread CPU seconds."""
    dumper = reader.dumper
    walls, cpus = [], []
    for _ in range(repeat):
        s0 = sched()
        t = time.perf_counter()
        for key in reader.nodes:
            dumper.dump_one(key)
        walls.append(time.perf_counter() - t)
        cpus.append((sched()[0] - s0[0]) / 1e9)
    return {"s": med(walls), "cpu_s": med(cpus), "namespaces": len(reader.nodes)}


class BeforeReader(KernelRouteReader):
    """The reader as it was before the live work of issue 12: every namespace dumped each
    time, a changed one parsed into KRoutes (cached per message) and put through
    select_routes destination by destination."""

    def __init__(self, mesh: Any) -> None:
        super().__init__(mesh, watch=False)
        self._kroutes: dict[bytes, Any] = {}

    def _row(self, node: str, raw_routes: bytes, raw_rules: bytes) -> dict[str, str | None]:
        cache = self._kroutes
        routes = []
        for p in iter_payloads(raw_routes, RTM_NEWROUTE, 1):
            r = cache.get(p)
            if r is None:
                r = cache[p] = parse_route(p)
            routes.append(r)
        rules = sorted(
            (parse_rule(p) for p in iter_payloads(raw_rules, RTM_NEWRULE, 2)),
            key=lambda r: r.priority,
        )
        chosen = select_routes(routes, rules, self.owners, self.me[node])
        return {dst: r.next_hop for dst, r in chosen.items()}


def live(
    mesh: Any, backend: Any, topo: Any, args: argparse.Namespace, started: float
) -> dict[str, Any]:
    """The live phases (see the module's docstring); the daemons started at `started`.
    Three readers side by side: `watch` (the recorder's: only notified namespaces
    dumped), `dump_all` (every namespace dumped each time) and `before` (BeforeReader)."""
    out: dict[str, Any] = {}
    readers = {
        "watch": KernelRouteReader(mesh),
        "dump_all": KernelRouteReader(mesh, watch=False),
        "before": BeforeReader(mesh),
    }
    reader = readers["watch"]

    def phases(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        return {name: phase(r) for name, r in rows.items()}

    try:
        # the first snapshot opens each reader's sockets (a setns per socket): apart
        out["first"] = {
            name: {k: round(v, 4) for k, v in timed_snapshot(mesh, backend, r).items()}
            for name, r in readers.items()
        }
        rows = snapshots_for(mesh, backend, readers, args.converge_for, args.interval)
        out["converging"] = phases(rows)
        result = wait_converged(mesh, backend, timeout=300)
        out["converged_after_s"] = round(time.monotonic() - started, 2)
        out["converged"] = result.converged
        time.sleep(2.0)
        rows = {name: [] for name in readers}
        for _ in range(args.repeat * 3):
            for name, r in readers.items():
                rows[name].append(timed_snapshot(mesh, backend, r))
        out["unchanged"] = phases(rows)
        runner = EventRunner(mesh, backend, topo)
        runner.realtime = False
        rng = random.Random(12)
        links = [(link.a, link.b) for link in topo.links]
        state: dict[str, Any] = {"next": 0.0, "down": None, "cuts": 0}

        def change(t: float) -> None:
            if t < state["next"]:
                return
            cut = rng.choice(links)
            runner.set_links(down=[cut], up=[state["down"]] if state["down"] else [])
            state.update(next=t + args.change_every, down=cut, cuts=state["cuts"] + 1)

        rows = snapshots_for(
            mesh, backend, readers, args.changes_for, args.interval, each=change
        )
        out["link_changes"] = phases(rows)
        out["links_cut"] = state["cuts"]
        if state["down"]:
            runner.set_links(up=[state["down"]])
        all_rows = []
        for _ in range(args.repeat):
            reader._last.clear()
            reader.dumper._raw.clear()
            all_rows.append(timed_snapshot(mesh, backend, reader))
        out["all_changed"] = phase(all_rows)
        out["dump_only"] = dump_only(reader, args.repeat)
        # the links are back: once the tables hold still, reader == per-node reference
        wait_converged(mesh, backend, timeout=120)
        same: bool | None = None
        for _ in range(40):
            a = snapshot_per_node(mesh, backend)
            new = snapshot(mesh, backend, reader)
            b = snapshot_per_node(mesh, backend)
            if a.next_hops == b.next_hops:
                same = new.next_hops == a.next_hops and new.routes == a.routes
                break
            time.sleep(0.5)
        out["live_identical"] = same
        out["reader_selected_reused"] = [reader.selected, reader.reused]
    finally:
        for r in readers.values():
            r.close()
    return out


def top(fn: Any, n: int = 6) -> list[str]:
    prof = cProfile.Profile()
    prof.runcall(fn)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(n)
    lines = [ln.strip() for ln in out.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("ncalls"))
    return lines[start + 1 : start + 1 + n]


def compare(
    mesh: Any, backend: Any, args: argparse.Namespace, readers: list[KernelRouteReader]
) -> dict[str, Any]:
    """Old (per node) against new (a reader kept open, 1 and 2 dumping threads)."""
    out: dict[str, Any] = {}
    old_s, rows = [], {}
    for workers in (1, 2):
        reader = KernelRouteReader(mesh, workers=workers)
        readers.append(reader)
        first = timed(lambda r=reader: snapshot(mesh, backend, r))
        steady, changed, cold = [], [], []
        for _ in range(args.repeat):
            old_s.append(timed(lambda: snapshot_per_node(mesh, backend)))
            steady.append(timed(lambda r=reader: snapshot(mesh, backend, r)))
            reader._last.clear()
            reader.dumper._raw.clear()  # dumped again, not only parsed again
            changed.append(timed(lambda r=reader: snapshot(mesh, backend, r)))
            reader._last.clear()
            reader.dumper._raw.clear()
            reader._parsed.clear()
            cold.append(timed(lambda r=reader: snapshot(mesh, backend, r)))
        # identical: old, new, old again; where the tables held still between the
        # two old snapshots (daemons keep changing them), new must equal old
        compared = differed = 0
        for _ in range(args.repeat):
            a = snapshot_per_node(mesh, backend)
            new = snapshot(mesh, backend, reader)
            b = snapshot_per_node(mesh, backend)
            if a.next_hops == b.next_hops:
                compared += 1
                differed += new.next_hops != a.next_hops or new.routes != a.routes
        rows[f"new_workers_{workers}"] = {
            "first_s": round(first, 4),
            "steady_s": med(steady),
            "changed_s": med(changed),
            "cold_s": med(cold),
            "compared": compared,
            "identical": compared > 0 and differed == 0,
        }
    out["old_s"] = med(old_s)
    out.update(rows)
    best = min(rows["new_workers_1"]["steady_s"], rows["new_workers_2"]["steady_s"])
    out["speedup_steady"] = round(out["old_s"] / best, 1)
    out["target"] = {"steady_s": 0.1, "met": best <= 0.1}
    if args.profile:
        reader = readers[0]
        out["profile_old"] = top(lambda: snapshot_per_node(mesh, backend))
        out["profile_steady"] = top(lambda: snapshot(mesh, backend, reader))
        reader._last.clear()
        reader.dumper._raw.clear()
        out["profile_changed"] = top(lambda: snapshot(mesh, backend, reader))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("topology", nargs="?", default=str(ULM))
    ap.add_argument("--routing", default="static")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-live", action="store_true", help="skip the live phases")
    ap.add_argument("--no-compare", action="store_true", help="skip old against new")
    ap.add_argument("--interval", type=float, default=0.5, help="live: seconds between snapshots")
    ap.add_argument("--converge-for", type=float, default=15.0, help="live: seconds")
    ap.add_argument("--changes-for", type=float, default=30.0, help="live: seconds")
    ap.add_argument("--change-every", type=float, default=2.0, help="live: seconds")
    ap.add_argument(
        "--fifo",
        action="store_true",
        help="live: each snapshot at SCHED_FIFO, so it waits for no other task (shows "
        "what is left once the run queue is out of the way: the CPU it needs)",
    )
    args = ap.parse_args()
    FIFO["on"] = args.fifo
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    topo = topofile.load(args.topology)
    topo.routing = args.routing
    load_before = os.getloadavg()
    with_live = not args.no_live and args.routing != "static"
    started = time.monotonic()
    up = bringup.bring_up(topo, wait=not with_live, timeout=300, impair=False)
    out: dict[str, Any] = {
        "benchmark": "route_snapshot",
        "topology": topo.name,
        "nodes": len(topo.nodes),
        "routing": topo.routing,
        "cpus": os.cpu_count(),
        "converged": bool(up.result and up.result.converged),
        "fifo": args.fifo,
    }
    mesh = build.Mesh(up.state)
    readers: list[KernelRouteReader] = []
    try:
        backend = up.backend
        if with_live:
            out["live"] = live(mesh, backend, topo, args, started)
            out["converged"] = out["live"]["converged"]
            print(json.dumps(out["live"]), file=sys.stderr)
        if not args.no_compare:
            out.update(compare(mesh, backend, args, readers))
        if "live" in out:
            worst = [
                out["live"][k]["watch"]["with_changes"] for k in ("converging", "link_changes")
            ]
            medians = [w["s"]["median"] for w in worst if w["snapshots"]]
            out["live_target"] = {
                "with_changes_median_s_at_most": 0.1,
                "medians_s": medians,
                "met": bool(medians) and max(medians) <= 0.1,
            }
    finally:
        for r in readers:
            r.close()
        mesh.close()
        build.teardown(up.state, timeout=120)
    out["loadavg_before"] = [round(x, 2) for x in load_before]
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
