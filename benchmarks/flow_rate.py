#!/usr/bin/env python3
"""How fast can meshstress's traffic agents measure? Print JSON.

For each UDP packet rate, a flow crosses a static line of 3 nodes (2 hops, no
impairments) for a few seconds; the row says how many packets were sent on schedule,
the delivery ratio and the one-way latency percentiles. The rate where delivery falls
below 99.9% or the sender falls behind its schedule is the agent's ceiling on this
machine: scenarios should stay well under it, or the measurement measures the agent.
A TCP bulk flow without a cap gives the goodput ceiling.
Run as root: sudo .venv/bin/python benchmarks/flow_rate.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import sys
import time

from static_line import print_result, static_line

from meshstress import build
from meshstress.judge.metrics import flow_metrics
from meshstress.traffic.flows import FlowSpec, start_flow

RATES = (100, 1000, 5000, 20000, 50000, 100000)


def one(mesh: build.Mesh, spec: FlowSpec, seconds: float, workdir: str) -> dict:  # type: ignore[type-arg]
    t0 = time.monotonic() + 1.0
    flow = start_flow(mesh, spec, workdir, t0, seconds)
    try:
        flow.wait(timeout=seconds + 20)
    finally:
        flow.stop()
    return flow_metrics(flow.record(), t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    rows = []
    with static_line(3) as (mesh, tmp):
        for pps in RATES:
            spec = FlowSpec(name=f"udp{pps}", kind="udp", src="n0", dst="n2",
                            rate_pps=float(pps), size=200)  # fmt: skip
            m = one(mesh, spec, args.seconds, f"{tmp}/{pps}")
            rows.append({
                "kind": "udp", "pps": pps, "sent": m["sent"],
                "sent_share_of_schedule": round(m["sent"] / (pps * args.seconds), 4),
                "delivery_ratio": m["delivery_ratio"],
                "latency_ms": m["latency_ms"],
            })  # fmt: skip
        spec = FlowSpec(name="tcp", kind="tcp", src="n0", dst="n2")
        m = one(mesh, spec, args.seconds, f"{tmp}/tcp")
        rows.append({"kind": "tcp", "goodput_bps": m["goodput_bps"],
                     "retransmission_rate": m["retransmission_rate"]})  # fmt: skip
    print_result("flow_rate", args.seconds, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
