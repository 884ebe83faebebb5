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

    sudo .venv/bin/python benchmarks/route_snapshot.py [--routing babeld] [--repeat 9]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from meshstress import build
from meshstress.build import bringup
from meshstress.model import topofile
from meshstress.routing.base import KernelRouteReader
from meshstress.routing.converge import snapshot, snapshot_per_node

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


def top(fn: Any, n: int = 6) -> list[str]:
    prof = cProfile.Profile()
    prof.runcall(fn)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(n)
    lines = [ln.strip() for ln in out.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("ncalls"))
    return lines[start + 1 : start + 1 + n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("topology", nargs="?", default=str(ULM))
    ap.add_argument("--routing", default="static")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    topo = topofile.load(args.topology)
    topo.routing = args.routing
    load_before = os.getloadavg()
    up = bringup.bring_up(topo, wait=True, timeout=300, impair=False)
    out: dict[str, Any] = {
        "benchmark": "route_snapshot",
        "topology": topo.name,
        "nodes": len(topo.nodes),
        "routing": topo.routing,
        "cpus": os.cpu_count(),
        "converged": bool(up.result and up.result.converged),
    }
    mesh = build.Mesh(up.state)
    readers: list[KernelRouteReader] = []
    try:
        backend = up.backend
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
                changed.append(timed(lambda r=reader: snapshot(mesh, backend, r)))
                reader._last.clear()
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
            out["profile_changed"] = top(lambda: snapshot(mesh, backend, reader))
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
