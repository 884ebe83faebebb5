#!/usr/bin/env python3
"""What starting a process inside a node's namespace costs, by method; prints JSON.

Builds the Freifunk Ulm mesh (no impairments, no routing) and starts, in every node
namespace, `sleep` and then babeld (the backend's own start_node), each way:
- entered:    meshstress's way: the calling thread enters the namespace and forks
              (netns.entered; no Python code in the child, safe with threads);
- preexec_fn: the way before: the forked child runs Python to setns, then execs
              (can deadlock in a threaded process);
- nsenter:    util-linux nsenter --net=/run/netns/NAME -- argv (one extra exec).
Each process is stopped by its recorded PID before the next method runs. A busy
thread (logging, allocating) runs throughout, as the route recorder does in a run.
Reported: per spawn, the median and p90 of the time until Popen returned (the
program has exec'd by then), their total over all nodes, and start_all_s: the whole
loop (babeld: with start_node's own work, its log file and state-file record).
Run as root: sudo .venv/bin/python benchmarks/spawn_cost.py [--topology FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from meshstress import build
from meshstress.build import netns, plan
from meshstress.build.state import RunState
from meshstress.model import topofile
from meshstress.routing import get_backend

HERE = Path(__file__).resolve().parent
ULM = HERE.parent / "tests" / "data" / "freifunk-ulm.json"


def popen_preexec(mesh: build.Mesh, node: str, argv: Any, **kw: Any) -> subprocess.Popen[Any]:
    name = mesh.ns(node)
    return subprocess.Popen(list(argv), preexec_fn=lambda: netns.enter_for_exec(name), **kw)


def popen_nsenter(mesh: build.Mesh, node: str, argv: Any, **kw: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen(["nsenter", f"--net={netns.path(mesh.ns(node))}", "--", *argv], **kw)


METHODS = {"entered": build.Mesh.popen, "preexec_fn": popen_preexec, "nsenter": popen_nsenter}


def busy(halt: threading.Event) -> None:
    log = logging.getLogger("spawn-cost-busy")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    log.setLevel(logging.DEBUG)
    while not halt.is_set():
        junk = [bytearray(256) for _ in range(50)]
        log.debug("%d", len(junk))
        time.sleep(0.001)


def stats(times: list[float]) -> dict[str, float]:
    s = sorted(times)
    return {
        "per_spawn_median_ms": round(statistics.median(s) * 1000, 3),
        "per_spawn_p90_ms": round(s[int(0.9 * (len(s) - 1))] * 1000, 3),
        "total_s": round(sum(s), 3),
    }


def measure(mesh: build.Mesh, topo: Any, method: str, program: str) -> dict[str, Any]:
    spawn = METHODS[method]
    times: list[float] = []
    procs: list[subprocess.Popen[Any]] = []

    def timed(self: build.Mesh, node: str, argv: Any, **kw: Any) -> subprocess.Popen[Any]:
        t = time.perf_counter()
        p = spawn(self, node, argv, **kw)
        times.append(time.perf_counter() - t)
        return p

    original = build.Mesh.popen
    build.Mesh.popen = timed  # type: ignore[method-assign]
    t0 = time.perf_counter()
    try:
        if program == "babeld":
            backend = get_backend("babeld", {})
            for node in mesh.nodes:
                backend.start_node(mesh, topo, node)
        else:
            for node in mesh.nodes:
                procs.append(mesh.popen(node, ["sleep", "3600"], stdin=subprocess.DEVNULL))
    finally:
        build.Mesh.popen = original  # type: ignore[method-assign]
        whole = time.perf_counter() - t0
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        build.stop_processes(mesh.state.processes)
        mesh.state.processes.clear()
        mesh.state.save()
    return {"method": method, "program": program, "spawns": len(times),
            "start_all_s": round(whole, 3), **stats(times)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--topology", default=str(ULM), help="meshnet-lab JSON or TOML")
    ap.add_argument("--programs", default="sleep,babeld", help="comma-separated: sleep,babeld")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    topo = topofile.load(args.topology)
    methods = [m for m in METHODS if m != "nsenter" or shutil.which("nsenter")]
    programs = [p for p in args.programs.split(",") if p != "babeld" or shutil.which("babeld")]
    run_id = plan.new_run_id()
    st = RunState(run_id=run_id, topology=topo.name)
    halt = threading.Event()
    thread = threading.Thread(target=busy, args=(halt,), daemon=True)
    results = []
    try:
        build.apply(plan.make_plan(topo, run_id, impair=False), st)
        mesh = build.Mesh(st)
        thread.start()
        for program in programs:
            for method in methods:
                results.append(measure(mesh, topo, method, program))
    finally:
        halt.set()
        build.teardown(st)
    by = {(r["program"], r["method"]): r for r in results}
    ratios = {
        f"{program}: preexec_fn / entered": round(
            by[(program, "preexec_fn")]["per_spawn_median_ms"]
            / by[(program, "entered")]["per_spawn_median_ms"], 2)
        for program in programs
    }  # fmt: skip
    out = {
        "benchmark": "spawn_cost",
        "topology": topo.name,
        "nodes": len(topo.nodes),
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "results": results,
        "median_ratio": ratios,
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
