#!/usr/bin/env python3
"""Build and tear down big meshes on the host; print JSON with the seconds each took.

Setup: from the first namespace to every address and route in place.
Teardown: until the kernel has destroyed every namespace and link of the run
(meshstress waits for its witness veth in the host namespace to vanish).
Targets on a 2-core machine: grid4 10x10 <= 1.0 s setup and <= 1.0 s teardown;
grid4 32x32 <= 10 s setup. Run as root: sudo .venv/bin/python benchmarks/build_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from meshstress import build
from meshstress.build import plan
from meshstress.build.state import RunState
from meshstress.doctor import has_netem
from meshstress.model import generators, topofile

HERE = Path(__file__).resolve().parent
FREIFUNK = HERE.parent.parent / "shared" / "data" / "freifunk" / "freifunk-altdorf.json"


def measure(topo, repeat: int, impair: bool) -> dict:  # type: ignore[no-untyped-def]
    rows = []
    for _ in range(repeat):
        run_id = plan.new_run_id()
        p = plan.make_plan(topo, run_id, impair=impair)
        st = RunState(run_id=run_id, topology=topo.name)
        t0 = time.monotonic()
        try:
            build.apply(p, st)
            t1 = time.monotonic()
        finally:
            t2 = time.monotonic()
            problems = build.teardown(st)
            t3 = time.monotonic()
        if problems:
            raise SystemExit(f"teardown problems: {problems}")
        rows.append((t1 - t0, t3 - t2))
    setups = sorted(r[0] for r in rows)
    teardowns = sorted(r[1] for r in rows)
    return {
        "topology": topo.name,
        "nodes": len(topo.nodes),
        "links": len(topo.links),
        "setup_s": round(setups[len(setups) // 2], 3),
        "teardown_s": round(teardowns[len(teardowns) // 2], 3),
        "setup_all_s": [round(s, 3) for s in setups],
        "teardown_all_s": [round(s, 3) for s in teardowns],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3, help="runs per topology (median reported)")
    ap.add_argument("--freifunk", default=str(FREIFUNK), help="meshnet-lab JSON to include")
    ap.add_argument("--quick", action="store_true", help="only grid4 10x10")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    topos = [generators.grid4(10, 10)]
    if not args.quick:
        topos.append(generators.grid4(32, 32))
        if Path(args.freifunk).exists():
            topos.append(topofile.load(args.freifunk))
    # Freifunk links carry loss (1 - tq): applied where the kernel has netem.
    impair = has_netem()
    results = []
    for topo in topos:
        repeat = args.repeat if len(topo.nodes) <= 200 else 1
        results.append(measure(topo, repeat, impair))
    targets = {"grid4-10x10": {"setup_s": 1.0, "teardown_s": 1.0}, "grid4-32x32": {"setup_s": 10.0}}
    for r in results:
        for key, limit in targets.get(r["topology"], {}).items():
            r.setdefault("target", {})[key] = {"limit": limit, "met": r[key] <= limit}
    out = {
        "benchmark": "build_speed",
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "impairments": "applied" if impair else "left out (no sch_netem in this kernel)",
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "results": results,
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
