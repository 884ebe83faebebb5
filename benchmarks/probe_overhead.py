#!/usr/bin/env python3
"""What do the BCC probes cost? Print JSON.

TCP bulk goodput across a two-node link (static routing, no impairment) with every
probe compiled, attached and watching the mesh, and without them (the tracepoints
detached), in alternating pairs. The ratio is the median goodput with probes over the
median without; the median of the pairs' ratios is given too. Done twice: with the
veth's segmentation offloads on (the default: one 64 kB skb per probe event) and off
(one event per ~1.5 kB segment, the worst case per byte).

Needs root, BCC and kernel headers: run it in the VM lab on our hosts,
    sudo .venv/bin/meshstress lab run -- .venv/bin/python benchmarks/probe_overhead.py
(the BCC compile takes about a minute there; qemu emulates the CPU, so absolute
throughputs are far below real hardware's: read the ratio).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

from meshstress import build
from meshstress.build import bringup, impair
from meshstress.model import generators
from meshstress.observe.probes import Probes, delta, missing

SINK = r"""
import json, socket, sys, time
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
conn, _ = srv.accept()
total, first, last = 0, None, None
while chunk := conn.recv(1 << 16):
    last = time.monotonic()
    first = first or last
    total += len(chunk)
print(json.dumps({"bytes": total, "seconds": (last or 0) - (first or 0)}), flush=True)
"""

SOURCE = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
chunk, end = b"x" * (1 << 16), time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    s.sendall(chunk)
s.close()
"""


def goodput(mesh: build.Mesh, seconds: float, port: int) -> float:
    """Bulk TCP n0 -> n1 for `seconds`; bit/s as the receiver saw it (first to last byte)."""
    addr = mesh.address("n1")
    sink = mesh.popen("n1", [sys.executable, "-c", SINK, addr, str(port)],
                      stdout=subprocess.PIPE, text=True)  # fmt: skip
    mesh.record_process(sink, "n1", "benchmark")
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        mesh.run("n0", [sys.executable, "-c", SOURCE, addr, str(port), str(seconds)],
                 check=True, timeout=seconds + 120)  # fmt: skip
        out, _ = sink.communicate(timeout=120)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    got = json.loads(out.strip().splitlines()[-1])
    return float(got["bytes"] * 8 / got["seconds"]) if got["seconds"] > 0 else 0.0


def set_attached(probes: Probes, on: bool) -> None:
    """Attach or detach the probes' tracepoints, keeping the compiled program (one
    compile for the whole benchmark)."""
    bpf = probes._bpf  # the loaded BCC program
    for hook in probes.hooks.values():
        kind, _, name = hook.partition(":")
        if kind != "tracepoint":
            raise SystemExit(f"probe_overhead: {hook} is a kprobe; only tracepoints toggle")
        tp = name.encode()
        if on and tp not in bpf.tracepoint_fds:
            category, event = name.split(":")
            bpf.attach_tracepoint(tp=tp, fn_name=f"tracepoint__{category}__{event}".encode())
        elif not on and tp in bpf.tracepoint_fds:
            bpf.detach_tracepoint(tp=tp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0, help="per transfer")
    ap.add_argument("--trials", type=int, default=5, help="pairs (with, without) per mesh")
    args = ap.parse_args()
    why = missing()
    if why:
        print(f"probe_overhead: {why}", file=sys.stderr)
        return 1
    ups = []
    meshes: dict[str, build.Mesh] = {}
    probes: Probes | None = None
    out: dict[str, Any] = {"benchmark": "probe_overhead", "seconds": args.seconds,
                           "trials": args.trials, "rows": []}  # fmt: skip
    n = 0
    try:
        for offloads in ("on", "off"):  # one mesh each
            topo = generators.line(2)
            topo.routing = "static"
            ups.append(bringup.bring_up(topo, wait=True, timeout=60))
            meshes[offloads] = mesh = build.Mesh(ups[-1].state)
            if offloads == "off":
                for node in mesh.nodes:
                    for iface in mesh.state.interfaces[node]:
                        impair.disable_offloads(mesh.ethtool(node), iface["ifname"])
        probes = Probes()
        out["compile_s"] = round(probes.compile_seconds, 1)
        out["hooks"] = probes.hooks
        for offloads, mesh in meshes.items():
            probes.watch(mesh)
            got: dict[str, list[float]] = {"with": [], "without": []}
            seen = 0
            for trial in range(args.trials):
                # alternate which goes first, so a drift of the host's load evens out
                for state in ("with", "without") if trial % 2 == 0 else ("without", "with"):
                    set_attached(probes, state == "with")
                    before = probes.snapshot()
                    n += 1
                    got[state].append(goodput(mesh, args.seconds, 5400 + n))
                    d = delta(before, probes.snapshot())
                    if state == "with":
                        seen += sum(
                            c["tx_packets"] for c in d["nodes"]["n0"]["interfaces"].values()
                        )
            pairs = [w / o for w, o in zip(got["with"], got["without"], strict=True) if o]
            without, with_ = statistics.median(got["without"]), statistics.median(got["with"])
            out["rows"].append({
                "offloads": offloads,
                "goodput_bps": {k: [round(v) for v in vs] for k, vs in got.items()},
                "median_without_bps": round(without),
                "median_with_bps": round(with_),
                "ratio": round(with_ / without, 3) if without else None,
                "median_pair_ratio": round(statistics.median(pairs), 3) if pairs else None,
                "probe_tx_packets_n0_with": seen,
            })  # fmt: skip
    finally:
        if probes is not None:
            probes.close()
        for mesh in meshes.values():
            mesh.close()
        for up in ups:
            build.teardown(up.state)
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
