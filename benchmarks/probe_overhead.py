#!/usr/bin/env python3
"""What do the BCC probes cost? Print JSON.

TCP bulk goodput across a two-node link (static routing, no impairment), first without
probes, then with every probe compiled, attached and watching the mesh, then without
again (the two "without" blocks bracket the "with" block, so a drift of the host's
load shows as a difference between them). The ratio is the median goodput with probes
over the median without. Done twice: with the veth's segmentation offloads on (the
default: one 64 kB skb per probe event) and off (one event per ~1.5 kB segment, the
worst case per byte).

Needs root, BCC and kernel headers: run it in the VM lab on our hosts,
    sudo .venv/bin/meshstress lab run -- .venv/bin/python benchmarks/probe_overhead.py
(the BCC compile takes about a minute there; qemu emulates the CPU, so absolute
throughputs are far below real hardware's: read the ratio).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from typing import Any

from meshstress import build, generators, hostcli, impair
from meshstress.flows import FlowSpec, start_flow
from meshstress.metrics import flow_metrics
from meshstress.probes import Probes, delta, missing


def goodput(mesh: build.Mesh, seconds: float, workdir: str, n: int) -> float:
    spec = FlowSpec(name=f"tcp{n}", kind="tcp", src="n0", dst="n1")
    t0 = time.monotonic() + 1.0
    flow = start_flow(mesh, spec, f"{workdir}/{n}", t0, seconds)
    try:
        flow.wait(timeout=seconds + 30)
    finally:
        flow.stop()
    return float(flow_metrics(flow.record(), t0)["goodput_bps"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=4.0, help="per transfer")
    ap.add_argument("--trials", type=int, default=3, help="transfers per block")
    args = ap.parse_args()
    why = missing()
    if why:
        print(f"probe_overhead: {why}", file=sys.stderr)
        return 1
    ups = []
    probes: Probes | None = None
    out: dict[str, Any] = {"benchmark": "probe_overhead", "seconds": args.seconds,
                           "trials": args.trials, "rows": []}  # fmt: skip
    blocks: dict[str, dict[str, list[float]]] = {}
    seen: dict[str, int] = {}
    n = 0
    try:
        meshes: dict[str, build.Mesh] = {}
        for offloads in ("on", "off"):  # one mesh each, so the probes compile once
            topo = generators.line(2)
            topo.routing = "static"
            ups.append(hostcli.bring_up(topo, wait=True, timeout=60))
            meshes[offloads] = mesh = build.Mesh(ups[-1].state)
            if offloads == "off":
                for node in mesh.nodes:
                    for iface in mesh.state.interfaces[node]:
                        impair.disable_offloads(mesh.ethtool(node), iface["ifname"])
            blocks[offloads] = {"without": [], "with": [], "without_after": []}
        with tempfile.TemporaryDirectory() as tmp:
            for block in ("without", "with", "without_after"):
                if block == "with":
                    probes = Probes()
                    out["compile_s"] = round(probes.compile_seconds, 1)
                    out["hooks"] = probes.hooks
                for offloads, mesh in meshes.items():
                    if probes is not None:
                        probes.watch(mesh)
                        before = probes.snapshot()
                    for _ in range(args.trials):
                        n += 1
                        blocks[offloads][block].append(goodput(mesh, args.seconds, tmp, n))
                    if probes is not None:
                        d = delta(before, probes.snapshot())
                        seen[offloads] = sum(
                            c["tx_packets"] for c in d["nodes"]["n0"]["interfaces"].values()
                        )
                if probes is not None:
                    probes.close()
                    probes = None
        for offloads, got in blocks.items():
            without = statistics.median(got["without"] + got["without_after"])
            with_ = statistics.median(got["with"])
            out["rows"].append({
                "offloads": offloads,
                "goodput_bps": {k: [round(v) for v in vs] for k, vs in got.items()},
                "median_without_bps": round(without),
                "median_with_bps": round(with_),
                "ratio": round(with_ / without, 3) if without else None,
                "probe_tx_packets_n0": seen.get(offloads),
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
