#!/usr/bin/env python3
"""Measure the per-unit costs of meshstress on this host, or in the VM lab, and store
them for the capacity estimate (`meshstress run --check`, `meshstress up --dry-run`;
meshstress.model.capacity).

    sudo .venv/bin/python benchmarks/calibrate.py          # stores /var/lib/meshstress/...
    sudo .venv/bin/python benchmarks/calibrate.py --out F  # elsewhere; --no-store: print
    sudo .venv/bin/python benchmarks/calibrate.py --lab    # in the VM lab: batman-adv;
                       # stores /var/lib/meshstress/calibration-lab.json (on this host)

What it measures (a few minutes; print JSON, the stored file included):
- kernel memory per namespace and per mesh interface: MemAvailable before and after
  building `line 100` and `grid4 10x10` without routing;
- kernel memory per route: `grid4 12x12` with static routing against none;
- the route recorder: CPU per snapshot on static grid4 8x8 and 16x16 (a
  KernelRouteReader, 20 snapshots, tables unchanged: every namespace is dumped, none
  parsed), fitted per node as a + b x (nodes - 1) (`snapshot_node_core_s`,
  `snapshot_entry_core_s`); a backend with its own tables (batman-adv: genl originator dumps) gets
  its own figure from its routing grids, per node and per table entry (node x other
  node), fitted through the smallest and largest grid;
- routing, per backend (host: babeld, batmand; lab: batman-adv): on grids `--grids`
  (host 4x4 and 8x8, lab 4x4, 6x6, 8x8) at the default interval (1 s), fitted per
  interface as a + b x nodes through the first and the last (batman-adv: b x nodes +
  c x nodes x interfaces, costfit.global_list_fit); `model_cores` in each grid's row is
  the fit's figure there (a grid between the two checks it). On the host: the daemons'
  CPU (their recorded PIDs, observe.cpu) plus the kernel's softirq time above an idle
  baseline. In the lab (a private machine: nobody else uses the guest; batman-adv runs
  in the kernel, its work lands in kworkers and softirq): the guest's whole busy time,
  less this process's own, above an idle window measured just before, once the last
  mesh's teardown has settled (freed namespaces keep kworkers busy for a while). Each
  daemon's resident memory; batman-adv's kernel memory per node (MemAvailable, less
  the namespaces' figure);
- forwarding, per hop (`packet_hop_core_s`): one sender in n0 of a static `line 17`
  sends UDP at a fixed rate (--hop-pps) to n1 (1 hop) and to n16 (16 hops), in
  alternating rounds (--hop-rounds) side by side; the sender's own CPU clock per packet
  (the kernel forwards a packet across all the veths inside the sending call, in
  softirq run in the sender's context), the difference of the medians over 15 hops;
  the last node's receive counter says the packets crossed;
- a flow's own cost and a packet's ends (`flow_cores`, `packet_end_core_s`): a UDP
  flow over 1 hop at two rates (--udp-pps LOW,HIGH) and over 4 hops at the high one
  (`meshstress run`, its results' CPU breakdown: the agents' cores; lab: two rounds,
  the order turned, medians); the two 1-hop rates give the flow's own cores and the
  cost per packet, less the one hop its ends (the agents have timers and loops of
  their own: at 200 pps that is about half of what they use); `udp_check` puts the
  model next to the 4-hop runs; a flow agent's resident memory;
- meshstress's own memory (this process, before and after a 144-node mesh).
Not measured (packaged values kept, and said so in "kept"): BCC probes, uncapped TCP;
batman-adv on the host (no module: --lab), babeld and batmand in the lab unless
--backends names them.

CPU accounting: these kernels (host and lab) have no IRQ_TIME_ACCOUNTING, so softirq
work run in a process's context (a send that the kernel forwards at once) counts in that
process's system time AND in /proc/stat softirq. Per-packet costs here come from the
process's clock, without adding softirq on top.

The host is shared: every figure is a difference against a baseline taken just before,
and `host.load` says what the load average was. Repeat it on a quiet host when you can.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from meshstress import build, runner
from meshstress.build import bringup, netns
from meshstress.model import capacity, costfit, generators, scenario
from meshstress.observe.cpu import CpuMeter, measure, parse_host_stat
from meshstress.routing.converge import open_reader, snapshot

HOP_PORT = 9  # discard: a bound socket that is never read; the kernel drops when full


def say(msg: str) -> None:
    print(f"calibrate: {msg}", file=sys.stderr, flush=True)


def retried(fn: Any, *args: Any, tries: int = 3) -> Any:
    """fn(*args), again on a failure: on a shared host another user's cleanup can take
    a namespace away mid-measurement."""
    for i in range(tries):
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - said, then tried again
            if i == tries - 1:
                raise
            say(f"{fn.__name__}{args[:2]} failed ({exc}): again")
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
    if LAB:
        settle()  # the last mesh's namespaces freed first
    before = mem_available_mb()
    up = bringup.bring_up(topo, wait=routing != "none", timeout=600, impair=False)
    time.sleep(1.0)
    return before - mem_available_mb(), up


def idle(seconds: float) -> dict[str, Any]:
    """A window with no mesh: softirq cores, and (for a private machine) the busy cores
    less this process's own."""
    b = measure(list, seconds).breakdown()
    assert b is not None
    return {"softirq_cores": b["by"]["softirq"]["cpu_s"] / b["window_s"],
            "busy_cores": costfit.private_busy_cores(b)}  # fmt: skip


def settle(
    limit: float = 0.02, window: float = 5.0, most: float = 120.0, what: str = "busy_cores"
) -> list[float]:
    """Idle windows until one is quiet (`what` below `limit` cores): a torn-down mesh's
    namespaces are freed later, by kworkers and RCU callbacks in softirq. On a private
    machine (the lab) its whole busy time less ours; on a shared host its softirq
    (others' busy time never settles). The figures seen."""
    seen = []
    end = time.monotonic() + most
    while time.monotonic() < end:
        seen.append(round(idle(window)[what], 4))
        if seen[-1] < limit:
            break
    return seen


def routing_cost(
    backend: str, side: int, seconds: float, base_softirq: float, private: bool
) -> dict[str, Any]:
    """A grid's routing cost. Host: the daemons' CPU plus softirq above `base_softirq`.
    `private` (the VM lab): the guest's busy time less ours, above an idle window
    measured just before (once the last mesh's teardown has settled)."""
    settled = settle() if private else settle(0.005, 3.0, 30.0, "softirq_cores")
    idle_now = idle(10.0) if private else None
    topo = generators.grid4(side, side)
    topo.routing = backend
    mem0 = mem_available_mb()
    up = bringup.bring_up(topo, wait=True, timeout=CONVERGE_S, impair=False)
    try:
        time.sleep(10.0 if private else 2.0)  # past the first burst of updates
        mem1 = mem_available_mb()
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
        if private:
            assert idle_now is not None
            cores = costfit.lab_routing_cores(b, idle_now["busy_cores"])
        else:
            cores = daemon + softirq
        rss = []
        for rec in up.state.processes:
            if rec.role == up.backend.role:
                try:
                    rss.append(psutil.Process(rec.pid).memory_info().rss / 2**20)
                except psutil.NoSuchProcess:
                    pass
        ifaces = 2 * len(topo.links)
        mesh = build.Mesh(up.state)
        reader = open_reader(mesh, up.backend)
        try:  # the recorder: this backend's reader, 20 snapshots (5 in the lab)
            snapshot(mesh, up.backend, reader)
            t = time.thread_time()
            count = 5 if private else 20
            for _ in range(count):
                snapshot(mesh, up.backend, reader)
            per_snap = (time.thread_time() - t) / count
        finally:
            reader.close()
            mesh.close()
        return {
            "backend": backend, "nodes": len(topo.nodes), "interfaces": ifaces,
            "window_s": window, "daemon_cores": round(daemon, 4),
            "softirq_cores": round(softirq, 4), "cores": round(cores, 4),
            "idle_busy_cores": round(idle_now["busy_cores"], 4) if idle_now else None,
            "settle_busy_cores": settled, "reader": type(reader).__name__,
            "by_cores": {k: round(v["cpu_s"] / window, 4) for k, v in b["by"].items()},
            "per_iface_cores": cores / ifaces,
            "daemon_mb": round(sum(rss) / len(rss), 2) if rss else 0.0,
            "mesh_mb": round(mem0 - mem1, 1),
            "snapshot_node_core_s": per_snap / len(topo.nodes),
            "converged": bool(up.result and up.result.converged),
        }  # fmt: skip
    finally:
        build.teardown(up.state, timeout=300)


def snapshot_cpu(up: Any, count: int = 20) -> float:
    """This thread's CPU seconds per route snapshot of the mesh `up` (one warm-up, then
    `count` snapshots)."""
    mesh = build.Mesh(up.state)
    reader = open_reader(mesh, up.backend)
    try:
        snapshot(mesh, up.backend, reader)
        t = time.thread_time()
        for _ in range(count):
            snapshot(mesh, up.backend, reader)
        return (time.thread_time() - t) / count
    finally:
        reader.close()
        mesh.close()


def recorder_cost(side: int) -> dict[str, Any]:
    """The kernel table reader's CPU per snapshot on a static grid (20 snapshots, the
    tables unchanged: every namespace dumped, none parsed)."""
    topo = generators.grid4(side, side)
    topo.routing = "static"
    up = bringup.bring_up(topo, wait=True, timeout=CONVERGE_S, impair=False)
    try:
        per_snap = snapshot_cpu(up)
    finally:
        build.teardown(up.state, timeout=300)
    n = len(topo.nodes)
    return {"nodes": n, "snapshot_core_s": round(per_snap, 6), "per_node_core_s": per_snap / n}


def _rx_packets(mesh: Any, node: str) -> int:
    """Packets the node's mesh interfaces received (the kernel's counters)."""
    total = 0
    for link in mesh.netlink(node).get_links():
        if link.get_attr("IFLA_IFNAME") == "lo":
            continue
        stats = link.get_attr("IFLA_STATS64")
        total += int(stats["rx_packets"]) if stats else 0
    return total


def _host_ticks() -> Any:
    with open("/proc/stat") as f:
        return f.read()


def _send_paced(sock: socket.socket, dst: str, pps: int, seconds: float) -> tuple[int, float]:
    """Send `pps` x `seconds` small datagrams to dst at that rate, in batches every 10 ms;
    (sent, this thread's CPU seconds meanwhile)."""
    payload = b"m" * 64
    total = int(pps * seconds)
    per_tick = max(1, pps // 100)
    sent = 0
    t0 = time.thread_time()
    due = time.monotonic()
    while sent < total:
        for _ in range(min(per_tick, total - sent)):
            sock.sendto(payload, (dst, HOP_PORT))
            sent += 1
        due += 0.01
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return sent, time.thread_time() - t0


def hop_cost(far: int, pps: int, seconds: float, rounds: int) -> dict[str, Any]:
    """Per-hop forwarding cost: one sender in n0 of a static `line far+1`, to n1 and to
    n`far` in alternating rounds at the same rate; its CPU clock per packet (the kernel
    forwards inside the sending call), and the host's softirq ticks for reference."""
    topo = generators.line(far + 1)
    topo.routing = "static"
    up = bringup.bring_up(topo, wait=True, timeout=600, impair=False)
    socks: list[socket.socket] = []
    try:
        mesh = build.Mesh(up.state)
        near_node, far_node = "n1", f"n{far}"
        for node in (near_node, far_node):
            with netns.entered(mesh.ns(node)):
                r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                r.bind(("0.0.0.0", HOP_PORT))
                socks.append(r)
        with netns.entered(mesh.ns("n0")):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        socks.append(tx)
        dsts = {1: mesh.address(near_node), far: mesh.address(far_node)}
        for dst in dsts.values():  # neighbours resolved, caches warm
            _send_paced(tx, dst, 1000, 0.2)
        got: dict[int, list[float]] = {1: [], far: []}
        softirq: dict[int, list[float]] = {1: [], far: []}
        crossed: dict[int, list[float]] = {1: [], far: []}
        for i in range(rounds):
            for hops in (1, far) if i % 2 == 0 else (far, 1):
                node = near_node if hops == 1 else far_node
                rx0, st0 = _rx_packets(mesh, node), parse_host_stat(_host_ticks())
                sent, cpu = _send_paced(tx, dsts[hops], pps, seconds)
                st1 = parse_host_stat(_host_ticks())
                time.sleep(0.05)
                rx1 = _rx_packets(mesh, node)
                got[hops].append(cpu / sent)
                tick = 1.0 / os.sysconf("SC_CLK_TCK")
                softirq[hops].append((st1.interrupts - st0.interrupts) * tick / sent)
                crossed[hops].append((rx1 - rx0) / sent)
        mesh.close()
    finally:
        for s_ in socks:
            s_.close()
        build.teardown(up.state, timeout=300)
    hop = costfit.per_hop(got[1], got[far], 1, far)
    return {
        "far_hops": far, "pps": pps, "seconds": seconds, "rounds": rounds,
        "sender_core_s_1hop": [round(x, 8) for x in got[1]],
        f"sender_core_s_{far}hop": [round(x, 8) for x in got[far]],
        "softirq_core_s_1hop": [round(x, 8) for x in softirq[1]],
        f"softirq_core_s_{far}hop": [round(x, 8) for x in softirq[far]],
        "crossed_share": {1: min(crossed[1]), far: min(crossed[far])},
        "hop_core_s": hop,
        "hop_core_s_from_softirq": costfit.per_hop(softirq[1], softirq[far], 1, far),
    }  # fmt: skip


UDP = """
[scenario]
name = "calibrate-udp"
duration = "{seconds}s"
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


def udp_cost(hops: int, pps: int, seconds: float, base_softirq: float, tmp: Path) -> dict[str, Any]:
    text = UDP.format(n=hops + 1, last=hops, pps=pps, seconds=seconds)
    sc = scenario.loads(text, f"<udp {hops}>", base=tmp)
    r = runner.run(sc, tmp / f"udp{hops}-{os.urandom(3).hex()}")
    cpu = r["run"]["host"]["cpu_by"]
    window = cpu["window_s"]
    sent = r["flows"]["cbr"]["sent"]
    traffic = cpu["by"]["traffic"]["cpu_s"]
    softirq = max(0.0, cpu["by"]["softirq"]["cpu_s"] - base_softirq * window)
    return {
        "hops": hops, "pps": pps, "sent": sent, "window_s": window,
        "traffic_cpu_s": traffic, "softirq_cpu_s": round(softirq, 3),
        "agents_core_s": traffic / max(1, sent), "softirq_core_s": softirq / max(1, sent),
        "agents_cores": traffic / window,
        "recorder_cpu_s": cpu["by"]["recorder"]["cpu_s"],
        "snapshots": r["routing"]["snapshots"],
    }  # fmt: skip


def agent_mb() -> float:
    p = subprocess.Popen([sys.executable, "-c",
                          "import meshstress.traffic.agent, time; time.sleep(30)"])  # fmt: skip
    try:
        time.sleep(2.0 if not LAB else 10.0)
        return float(psutil.Process(p.pid).memory_info().rss / 2**20)
    finally:
        p.kill()
        p.wait()


LAB = False  # this process runs inside the VM lab (--in-lab)
CONVERGE_S = 120.0  # --converge-timeout: a routing grid that has not converged is measured anyway
HOST_BACKENDS = "babeld,batmand"
LAB_BACKENDS = "batman-adv"


def measure_all(args: Any) -> dict[str, Any]:
    """Every measurement of this place (host, or the lab's guest); the JSON to print."""
    private = args.in_lab
    load0 = os.getloadavg()
    base = capacity.packaged_default("lab" if private else "host")
    costs = dict(base.costs)
    routing = {k: dict(v) for k, v in base.routing.items()}
    raw: dict[str, Any] = {"where": "lab" if private else "host"}
    base_idle = idle(4.0 if not private else 10.0)
    base_softirq = base_idle["softirq_cores"]
    raw["idle"] = {k: round(v, 4) for k, v in base_idle.items()}
    kept = ["tcp_bulk_cores", "probe_packet_share", "probe_mb"]

    if not args.skip_memory:
        say("memory: line 100 and grid4 10x10 without routing")
        mem_line, up = retried(build_mem, generators.line(100), "none")
        build.teardown(up.state, timeout=300)
        mem_grid, up = retried(build_mem, generators.grid4(10, 10), "none")
        build.teardown(up.state, timeout=300)
        per_if = max(0.0, (mem_grid - mem_line) / (2 * (180 - 99)))
        per_ns = max(0.0, (mem_line - 2 * 99 * per_if) / 100)
        raw["memory"] = {"line100_mb": round(mem_line, 1), "grid10_mb": round(mem_grid, 1)}
        costs["namespace_mb"], costs["interface_mb"] = round(per_ns, 4), round(per_if, 4)

        say("routes, recorder, meshstress's memory: grid4 12x12, none and static")
        rss0 = psutil.Process().memory_info().rss / 2**20
        mem_none, up = retried(build_mem, generators.grid4(12, 12), "none")
        build.teardown(up.state, timeout=300)
        mem_static, up = retried(build_mem, generators.grid4(12, 12), "static")
        try:
            rss1 = psutil.Process().memory_info().rss / 2**20
            routes = 144 * 143
            costs["route_kb"] = round(max(0.0, (mem_static - mem_none) * 1024 / routes), 4)
            per_snap = snapshot_cpu(up)
        finally:
            build.teardown(up.state, timeout=300)
        costs["meshstress_node_mb"] = round(max(0.0, (rss1 - rss0) / 144), 4)
        costs["meshstress_mb"] = round(rss0, 1)
        raw["routes"] = {"grid12_none_mb": round(mem_none, 1),
                         "grid12_static_mb": round(mem_static, 1),
                         "snapshot_s_cpu_144_nodes": round(per_snap, 5)}  # fmt: skip
    else:
        kept += ["namespace_mb", "interface_mb", "route_kb", "meshstress_mb",
                 "meshstress_node_mb"]  # fmt: skip

    # the recorder (kernel tables): per node and per table entry, two static grids
    sides = [int(x) for x in args.recorder_grids.split(",")]
    say(f"recorder: static grid4 {sides[0]}x{sides[0]} and {sides[1]}x{sides[1]}")
    small_r, big_r = (retried(recorder_cost, g) for g in sides)
    raw["recorder"] = [small_r, big_r]
    node_s, entry_s = costfit.per_interface_fit(  # per node: a + b x (nodes - 1)
        (small_r["nodes"] - 1, small_r["per_node_core_s"]),
        (big_r["nodes"] - 1, big_r["per_node_core_s"]),
    )
    costs["snapshot_node_core_s"] = round(node_s, 8)
    costs["snapshot_entry_core_s"] = round(entry_s, 10)

    # routing
    backends = [b for b in (args.backends or "").split(",") if b]
    grids = [int(x) for x in args.grids.split(",")]
    for backend in backends:
        say(f"routing {backend}: grid4 {', '.join(f'{g}x{g}' for g in grids)}")
        rows = [retried(routing_cost, backend, g, args.seconds, base_softirq, private)
                for g in grids]  # fmt: skip
        raw[backend] = rows
        small, big = rows[0], rows[-1]  # the fit; a grid between them checks it
        c = 0.0
        if backend == "batman-adv":  # per OGM a walk of the global interface list
            a, (b, c) = (
                0.0,
                costfit.global_list_fit(
                    (small["nodes"], small["interfaces"], small["cores"]),
                    (big["nodes"], big["interfaces"], big["cores"]),
                ),
            )
        else:
            a, b = costfit.per_interface_fit(
                (small["nodes"], small["per_iface_cores"]),
                (big["nodes"], big["per_iface_cores"]),
            )
        for r in rows:
            n_, i_ = r["nodes"], r["interfaces"]
            r["model_cores"] = round(i_ * (a + b * n_ + c * n_ * i_), 4)
        mem_mb = max(small["daemon_mb"], big["daemon_mb"])
        if backend == "batman-adv":  # no daemon: the kernel's memory per node
            per_node = big["mesh_mb"] / big["nodes"] - costs["namespace_mb"]
            per_node -= costs["interface_mb"] * big["interfaces"] / big["nodes"]
            mem_mb = round(max(0.0, per_node), 3)
        routing[backend] = {
            "interval_s": 1.0, "iface_cores": round(a, 7), "iface_node_cores": round(b, 9),
            "daemon_mb": mem_mb,
        }  # fmt: skip
        if c:
            routing[backend]["iface_node_iface_cores"] = float(f"{c:.4g}")
        if big["reader"] != "KernelRouteReader":  # its own tables, read entry by entry
            node_s, entry_s = costfit.per_interface_fit(  # per node: a + b x (nodes - 1)
                (small["nodes"] - 1, small["snapshot_node_core_s"]),
                (big["nodes"] - 1, big["snapshot_node_core_s"]),
            )
            routing[backend]["snapshot_node_core_s"] = round(node_s, 8)
            routing[backend]["snapshot_entry_core_s"] = round(entry_s, 9)
    if private:  # the lab's file holds what was measured there, never the host's figures
        routing = {k: v for k, v in routing.items() if k in backends or k == "static"}
    kept += [f"routing.{k}" for k in routing if k not in backends and k != "static"]

    # forwarding per hop, side by side, then the ends of a packet
    say(f"per hop: line {args.hop_far + 1}, 1 hop against {args.hop_far}, "
        f"{args.hop_pps} pps, {args.hop_rounds} rounds")  # fmt: skip
    hop = retried(hop_cost, args.hop_far, args.hop_pps, args.hop_seconds, args.hop_rounds)
    raw["hop"] = hop
    if hop["hop_core_s"] <= 0:
        kept.append("packet_hop_core_s")  # lost in noise: keep the packaged figure
    else:
        costs["packet_hop_core_s"] = round(hop["hop_core_s"], 9)
    low, high = (int(x) for x in args.udp_pps.split(","))
    say(f"udp: {low} and {high} pps over 1 hop, {high} over 4, {args.udp_rounds} rounds")
    kinds = [(1, low), (1, high), (4, high)]
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="meshstress-calibrate-") as tmp:
        for i in range(args.udp_rounds):  # side by side, the order turned each round
            for hops, pps in kinds if i % 2 == 0 else kinds[::-1]:
                if private:
                    settle()
                runs[(hops, pps)].append(retried(udp_cost, hops, pps, args.udp_seconds,
                                                 base_softirq, Path(tmp)))  # fmt: skip
    raw["udp"] = [r for k in kinds for r in runs[k]]
    hop_s = costs["packet_hop_core_s"]

    def cores(k: tuple[int, int]) -> float:
        return statistics.median(r["agents_cores"] for r in runs[k])

    # the agents' cores = a flow's own + pps x (ends + hops): two rates over one hop
    flow, per_packet = costfit.flow_fit((low, cores((1, low))), (high, cores((1, high))))
    end = costfit.packet_end(per_packet, hop_s)
    costs["flow_cores"] = round(flow, 6)
    costs["packet_end_core_s"] = round(end, 9)
    raw["udp_check"] = {  # the model against the 4-hop runs
        "model_4hop_cores": round(flow + high * (end + 4 * hop_s), 5),
        "measured_4hop_cores": round(cores((4, high)), 5),
    }
    costs["agent_mb"] = round(agent_mb(), 1)

    # a memory figure at 0 was a difference lost in other users' churn (MemAvailable is
    # the whole host's): keep the packaged value, and say so
    for key in ("namespace_mb", "interface_mb", "route_kb", "meshstress_node_mb"):
        if costs[key] <= 0:
            costs[key] = base.costs[key]
            kept.append(key)
    measured = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    host: dict[str, Any] = {
        "where": "lab" if private else "host", "cpus": os.cpu_count(),
        "kernel": os.uname().release, "load": [round(x, 2) for x in load0],
        "load_after": [round(x, 2) for x in os.getloadavg()], "kept": sorted(set(kept)),
    }  # fmt: skip
    if private:
        host["mem_available_mb"] = round(mem_available_mb(), 0)
    what = "in the VM lab (emulated) " if private else ""
    cal = capacity.Calibration(costs, routing, f"{measured} by benchmarks/calibrate.py {what}",
                               host)  # fmt: skip
    return {"benchmark": "calibrate", "raw": raw, "calibration": cal.to_json()}


def in_lab(args: Any, passed: list[str]) -> dict[str, Any]:
    """Boot the VM lab running this script with --in-lab; its JSON (stdout) back."""
    from meshstress.lab import run_in_lab

    argv = [sys.executable, os.path.abspath(__file__), "--in-lab", *passed]
    out = io.BytesIO()
    say(f"booting the VM lab: {' '.join(argv[1:])}")
    rc = run_in_lab(argv, cwd=os.getcwd(), timeout=args.lab_timeout, share=False, stdout=out,
                    say=say)  # fmt: skip
    text = out.getvalue().decode("utf-8", "replace")
    if rc != 0:
        sys.stderr.write(text)
        raise SystemExit(f"calibrate: the lab run failed (exit {rc})")
    return dict(json.loads(text))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--out", default=None,
                    help="where to store [default: /var/lib/meshstress/calibration.json, "
                         "with --lab calibration-lab.json]")  # fmt: skip
    ap.add_argument("--no-store", action="store_true")
    ap.add_argument(
        "--lab",
        action="store_true",
        help="measure inside the VM lab (batman-adv), store as the lab's costs",
    )
    ap.add_argument("--in-lab", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--lab-timeout", type=float, default=3600.0)
    ap.add_argument("--backends", default=None,
                    help=f"routing backends, '' for none "
                         f"[default: {HOST_BACKENDS}; --lab {LAB_BACKENDS}]")  # fmt: skip
    ap.add_argument("--grids", default=None,
                    help="routing grids (side), the first and last fitted, others checked "
                         "[default: 4,8; lab 4,6,8]")  # fmt: skip
    ap.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="routing measurement window [default: 10, lab 30]",
    )
    ap.add_argument("--converge-timeout", type=float, default=None,
                    help="routing grids: measure after this many seconds even when not "
                         "converged (said in the row) [default: 120, lab 300]")  # fmt: skip
    ap.add_argument(
        "--skip-memory",
        action="store_true",
        help="keep the packaged memory and recorder figures (faster)",
    )
    ap.add_argument(
        "--recorder-grids",
        default=None,
        help="static grids for the recorder's cost [default: 8,16; lab 4,8]",
    )
    ap.add_argument("--hop-far", type=int, default=16, help="hops of the far node")
    ap.add_argument("--hop-pps", type=int, default=None, help="[default: 4000, lab 500]")
    ap.add_argument("--hop-seconds", type=float, default=2.0)
    ap.add_argument("--hop-rounds", type=int, default=6)
    ap.add_argument(
        "--udp-pps",
        default=None,
        help="LOW,HIGH: the two rates of the flow [default: 200,2000; lab 20,200]",
    )
    ap.add_argument("--udp-seconds", type=float, default=None, help="[default: 6, lab 15]")
    ap.add_argument("--udp-rounds", type=int, default=None, help="[default: 1, lab 2]")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    global LAB, CONVERGE_S
    LAB = lab = args.lab or args.in_lab
    CONVERGE_S = args.converge_timeout or (300.0 if lab else 120.0)
    if args.backends is None:  # "": no routing grids
        args.backends = LAB_BACKENDS if lab else HOST_BACKENDS
    args.seconds = args.seconds or (30.0 if lab else 10.0)
    args.grids = args.grids or ("4,6,8" if lab else "4,8")
    args.recorder_grids = args.recorder_grids or ("4,8" if lab else "8,16")
    args.udp_rounds = args.udp_rounds or (2 if lab else 1)
    args.hop_pps = args.hop_pps or (500 if lab else 4000)
    args.udp_pps = args.udp_pps or ("20,200" if lab else "200,2000")
    args.udp_seconds = args.udp_seconds or (15.0 if lab else 6.0)
    if args.lab and not args.in_lab:
        passed = [a for a in sys.argv[1:] if a not in ("--lab", "--no-store")]
        drop = {"--out", "--lab-timeout"}
        passed = [a for i, a in enumerate(passed)
                  if a not in drop and (i == 0 or passed[i - 1] not in drop)]  # fmt: skip
        out = in_lab(args, [*passed, "--no-store"])
    else:
        out = measure_all(args)
    if not args.no_store and not args.in_lab:
        cal = capacity.parse_calibration(json.dumps(out["calibration"]), "<measured>")
        where = "lab" if args.lab else "host"
        out["stored"] = capacity.store_calibration(cal, args.out or capacity.stored_path(where))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
