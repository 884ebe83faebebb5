#!/usr/bin/env python3
"""Measure the per-unit costs of meshstress on this host and store them for the capacity
estimate (`meshstress run --check`, `meshstress up --dry-run`; meshstress.model.capacity).

    sudo .venv/bin/python benchmarks/calibrate.py          # stores /var/lib/meshstress/...
    sudo .venv/bin/python benchmarks/calibrate.py --out F  # elsewhere; --no-store: print

What it measures (a few minutes; print JSON, the stored file included):
- kernel memory per namespace and per mesh interface: MemAvailable before and after
  building `line 100` and `grid4 10x10` without routing;
- kernel memory per route: `grid4 12x12` with static routing against none;
- the route recorder: CPU per node per snapshot (a KernelRouteReader on that grid);
- routing, per backend (babeld, batmand): CPU of the daemons (their recorded PIDs,
  observe.cpu) plus the kernel's softirq time above the idle baseline, on `grid4 4x4`
  and `grid4 8x8` at the default interval (1 s), fitted per interface as
  a + b x nodes; each daemon's resident memory;
- traffic: a UDP flow of 2000 pps over 1 hop and over 4 hops (`meshstress run`, its
  results' CPU breakdown): the agents' CPU per packet (its ends) and the softirq per
  packet and hop; a flow agent's resident memory;
- meshstress's own memory (this process, before and after a 144-node mesh).
Not measured here (packaged values kept, and said so in "kept"): batman-adv (no module
on our hosts: measure it in the VM lab), BCC probes, uncapped TCP.

The host is shared: every figure is a difference against a baseline taken just before,
and `host.load` says what the load average was. Repeat it on a quiet host when you can.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from meshstress import build, runner
from meshstress.build import bringup
from meshstress.model import capacity, generators, scenario
from meshstress.observe.cpu import CpuMeter, measure
from meshstress.routing.base import KernelRouteReader
from meshstress.routing.converge import snapshot


def retried(fn: Any, *args: Any, tries: int = 3) -> Any:
    """fn(*args), again on a failure: on a shared host another user's cleanup can take
    a namespace away mid-measurement."""
    for i in range(tries):
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - said, then tried again
            if i == tries - 1:
                raise
            print(f"calibrate: {fn.__name__}{args[:2]} failed ({exc}): again", file=sys.stderr)
    raise AssertionError("unreachable")


def mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no MemAvailable")


def build_mem(topo: Any, routing: str) -> tuple[float, Any]:
    """MB that building `topo` with `routing` took from MemAvailable; the Up (torn down
    by the caller)."""
    topo.routing = routing
    before = mem_available_mb()
    up = bringup.bring_up(topo, wait=routing != "none", timeout=300, impair=False)
    time.sleep(1.0)
    return before - mem_available_mb(), up


def softirq_cores(seconds: float = 4.0) -> float:
    m = measure(list, seconds)
    b = m.breakdown()
    return float(b["by"]["softirq"]["cpu_s"] / b["window_s"]) if b else 0.0


def routing_cost(backend: str, side: int, seconds: float, base_softirq: float) -> dict[str, Any]:
    topo = generators.grid4(side, side)
    topo.routing = backend
    up = bringup.bring_up(topo, wait=True, timeout=300, impair=False)
    try:
        time.sleep(2.0)  # past the first burst of updates
        meter = CpuMeter(lambda: up.state.processes, recorder_tid=threading.get_native_id())
        meter.sample()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.5)
            meter.sample()
        b = meter.breakdown()
        assert b is not None
        window = b["window_s"]
        daemon = b["by"]["routing"]["cpu_s"] / window
        softirq = max(0.0, b["by"]["softirq"]["cpu_s"] / window - base_softirq)
        rss = []
        for rec in up.state.processes:
            if rec.role == up.backend.role:
                try:
                    rss.append(psutil.Process(rec.pid).memory_info().rss / 2**20)
                except psutil.NoSuchProcess:
                    pass
        ifaces = 2 * len(topo.links)
        return {
            "nodes": len(topo.nodes), "interfaces": ifaces, "window_s": window,
            "daemon_cores": round(daemon, 4), "softirq_cores": round(softirq, 4),
            "per_iface_cores": (daemon + softirq) / ifaces,
            "daemon_mb": round(sum(rss) / len(rss), 2) if rss else 0.0,
            "converged": bool(up.result and up.result.converged),
        }  # fmt: skip
    finally:
        build.teardown(up.state, timeout=120)


UDP = """
[scenario]
name = "calibrate-udp"
duration = "6s"
warmup = "0.5s"
route_interval = "1s"
[mesh]
generate = "line {n}"
routing = "static"
[[traffic]]
name = "cbr"
kind = "udp"
from = "n0"
to = "n{last}"
rate = "{pps}pps"
[verdict]
max_saturated_share = "100%"
max_softnet_drops = 1000000000
"""


def udp_cost(hops: int, pps: int, base_softirq: float, tmp: Path) -> dict[str, Any]:
    sc = scenario.loads(UDP.format(n=hops + 1, last=hops, pps=pps), f"<udp {hops}>", base=tmp)
    r = runner.run(sc, tmp / f"udp{hops}")
    cpu = r["run"]["host"]["cpu_by"]
    window = cpu["window_s"]
    sent = r["flows"]["cbr"]["sent"]
    traffic = cpu["by"]["traffic"]["cpu_s"]
    softirq = max(0.0, cpu["by"]["softirq"]["cpu_s"] - base_softirq * window)
    return {
        "hops": hops, "pps": pps, "sent": sent, "window_s": window,
        "traffic_cpu_s": traffic, "softirq_cpu_s": round(softirq, 3),
        "end_core_s": traffic / max(1, sent), "kernel_core_s": softirq / max(1, sent),
        "recorder_cpu_s": cpu["by"]["recorder"]["cpu_s"],
        "snapshots": r["routing"]["snapshots"],
    }  # fmt: skip


def agent_mb() -> float:
    p = subprocess.Popen([sys.executable, "-c",
                          "import meshstress.traffic.agent, time; time.sleep(5)"])  # fmt: skip
    try:
        time.sleep(2.0)
        return float(psutil.Process(p.pid).memory_info().rss / 2**20)
    finally:
        p.kill()
        p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=capacity.STORED)
    ap.add_argument("--no-store", action="store_true")
    ap.add_argument("--seconds", type=float, default=10.0, help="routing measurement window")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    load0 = os.getloadavg()
    base = capacity.packaged_default()
    costs = dict(base.costs)
    routing = {k: dict(v) for k, v in base.routing.items()}
    raw: dict[str, Any] = {}
    base_softirq = softirq_cores()
    raw["softirq_baseline_cores"] = round(base_softirq, 4)

    # namespaces and interfaces
    mem_line, up = retried(build_mem, generators.line(100), "none")
    build.teardown(up.state, timeout=120)
    mem_grid, up = retried(build_mem, generators.grid4(10, 10), "none")
    build.teardown(up.state, timeout=120)
    per_if = max(0.0, (mem_grid - mem_line) / (2 * (180 - 99)))
    per_ns = max(0.0, (mem_line - 2 * 99 * per_if) / 100)
    raw["memory"] = {"line100_mb": round(mem_line, 1), "grid10_mb": round(mem_grid, 1)}
    costs["namespace_mb"], costs["interface_mb"] = round(per_ns, 4), round(per_if, 4)

    # routes, recorder, meshstress's own memory
    rss0 = psutil.Process().memory_info().rss / 2**20
    mem_none, up = retried(build_mem, generators.grid4(12, 12), "none")
    build.teardown(up.state, timeout=120)
    mem_static, up = retried(build_mem, generators.grid4(12, 12), "static")
    try:
        rss1 = psutil.Process().memory_info().rss / 2**20
        routes = 144 * 143
        costs["route_kb"] = round(max(0.0, (mem_static - mem_none) * 1024 / routes), 4)
        mesh = build.Mesh(up.state)
        reader = KernelRouteReader(mesh)
        try:
            snapshot(mesh, up.backend, reader)
            t = time.thread_time()
            for _ in range(20):
                snapshot(mesh, up.backend, reader)
            per_snap = (time.thread_time() - t) / 20
        finally:
            reader.close()
            mesh.close()
    finally:
        build.teardown(up.state, timeout=120)
    costs["snapshot_node_core_s"] = round(per_snap / 144, 8)
    costs["meshstress_node_mb"] = round(max(0.0, (rss1 - rss0) / 144), 4)
    costs["meshstress_mb"] = round(rss0, 1)
    raw["routes"] = {"grid12_none_mb": round(mem_none, 1), "grid12_static_mb": round(mem_static, 1),
                     "snapshot_s_cpu_144_nodes": round(per_snap, 5)}  # fmt: skip

    # routing daemons
    for backend in ("babeld", "batmand"):
        small = retried(routing_cost, backend, 4, args.seconds, base_softirq)
        big = retried(routing_cost, backend, 8, args.seconds, base_softirq)
        raw[backend] = [small, big]
        b = (big["per_iface_cores"] - small["per_iface_cores"]) / (big["nodes"] - small["nodes"])
        b = max(0.0, b)
        a = max(0.0, small["per_iface_cores"] - b * small["nodes"])
        routing[backend] = {
            "interval_s": 1.0, "iface_cores": round(a, 7), "iface_node_cores": round(b, 9),
            "daemon_mb": max(small["daemon_mb"], big["daemon_mb"]),
        }  # fmt: skip

    # traffic
    with tempfile.TemporaryDirectory(prefix="meshstress-calibrate-") as tmp:
        one = retried(udp_cost, 1, 2000, base_softirq, Path(tmp))
        four = retried(udp_cost, 4, 2000, base_softirq, Path(tmp))
    raw["udp"] = [one, four]
    hop = max(0.0, (four["kernel_core_s"] - one["kernel_core_s"]) / 3)
    end = (one["end_core_s"] + four["end_core_s"]) / 2 + max(0.0, one["kernel_core_s"] - hop)
    costs["packet_hop_core_s"] = round(hop, 9)
    costs["packet_end_core_s"] = round(end, 9)
    costs["agent_mb"] = round(agent_mb(), 1)

    # a memory figure at 0 was a difference lost in other users' churn (MemAvailable is
    # the whole host's): keep the packaged value, and say so
    kept = ["tcp_bulk_cores", "probe_packet_share", "probe_mb", "routing.batman-adv",
            "routing.static"]  # fmt: skip
    for key in ("namespace_mb", "interface_mb", "route_kb", "meshstress_node_mb"):
        if costs[key] <= 0:
            costs[key] = base.costs[key]
            kept.append(key)
    measured = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    cal = capacity.Calibration(
        costs, routing, f"{measured} by benchmarks/calibrate.py",
        {"cpus": os.cpu_count(), "kernel": os.uname().release,
         "load": [round(x, 2) for x in load0], "load_after": [round(x, 2) for x in os.getloadavg()],
         "kept": kept},
    )  # fmt: skip
    out: dict[str, Any] = {"benchmark": "calibrate", "raw": raw, "calibration": cal.to_json()}
    if not args.no_store:
        out["stored"] = capacity.store_calibration(cal, args.out)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
