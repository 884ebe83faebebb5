#!/usr/bin/env python3
"""What packet rate holds for crafted frames? Print JSON.

On a static 2-node line (n0 - n1), n0 sends the same ttl1 frame for a few seconds at each
asked rate, two ways side by side in one run:
- "raw": meshstress's crafted flow (scapy builds the frame once; the agent sends its
  bytes through a raw AF_PACKET socket);
- "sendp": scapy's own sendp() for every packet (what a scapy script does).
A row gives the rate asked, the rate achieved (packets sent / seconds it took) and the
share of the schedule sent. The rate that holds is the highest whose share is ~1.
Run as root: sudo .venv/bin/python benchmarks/crafted_rate.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import sys
import time

from static_line import print_result, static_line

from meshstress import build
from meshstress.judge.metrics import flow_metrics
from meshstress.traffic import crafted
from meshstress.traffic.flows import FlowSpec, next_hop, release, start_flow

RATES = (1000, 5000, 20000, 50000, 100000)

SENDP = """
import sys, time
from scapy.all import Ether, conf, sendp
frame = Ether(bytes.fromhex(sys.argv[1])); iface = sys.argv[2]
pps, seconds = float(sys.argv[3]), float(sys.argv[4])
conf.verb = 0
n = 0; began = time.monotonic(); end = began + seconds
while True:
    due = began + n / pps
    if due >= end: break
    now = time.monotonic()
    if now >= end: break
    if due > now: time.sleep(due - now)
    sendp(frame, iface=iface, verbose=False)
    n += 1
print(n, time.monotonic() - began)
"""


def raw_row(mesh: build.Mesh, pps: int, seconds: float, workdir: str) -> dict:  # type: ignore[type-arg]
    spec = FlowSpec(name=f"raw{pps}", kind="crafted", src="n0", dst="n1", rate_pps=float(pps),
                    size=64, crafted=crafted.CraftedSpec(frame="ttl1"))  # fmt: skip
    go = f"{workdir}/go{pps}"
    flow = start_flow(mesh, spec, workdir, 0.0, seconds, go=go)
    try:
        t0 = release([flow], go, lead=0.3, timeout=60)
        flow.wait(timeout=seconds + 20)
    finally:
        flow.stop()
    m = flow_metrics(flow.record(), t0)
    return {"way": "raw", "asked_pps": pps, "sent": m["sent"],
            "achieved_pps": m["achieved_pps"],
            "share_of_schedule": round(m["sent"] / (pps * seconds), 4)}  # fmt: skip


def sendp_row(mesh: build.Mesh, pps: int, seconds: float) -> dict:  # type: ignore[type-arg]
    ifname, src_mac, dst_mac = next_hop(mesh, "n0", mesh.address("n1"))
    (frame,) = crafted.build_frames(crafted.CraftedSpec(frame="ttl1"), 64, src_mac, dst_mac,
                                    mesh.address("n0"), mesh.address("n1"), 40000)  # fmt: skip
    out = mesh.run("n0", [sys.executable, "-c", SENDP, frame.hex(), ifname, str(pps),
                          str(seconds)], capture_output=True, text=True, check=True)  # fmt: skip
    n, took = out.stdout.split()
    return {"way": "sendp", "asked_pps": pps, "sent": int(n),
            "achieved_pps": round(int(n) / float(took), 1),
            "share_of_schedule": round(int(n) / (pps * seconds), 4)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    rows = []
    with static_line(2) as (mesh, tmp):
        for pps in RATES:
            rows.append(raw_row(mesh, pps, args.seconds, tmp))
            rows.append(sendp_row(mesh, pps, args.seconds))
            time.sleep(0.2)
    print_result("crafted_rate", args.seconds, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
