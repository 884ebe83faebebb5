#!/usr/bin/env python3
"""What a crash does to the packets sent while the node is down, per carrier mode; JSON.

The case of docs/events.md ("A known distortion..."): a static line of 3, a UDP flow of
100 pps n0 -> n2 across n1, and a churn sweep that crashes n1 twice for 2.0 s (churn
[0, 12] per minute, 10 s steps). Run once with carrier = "keep" (radio-like: frames
dropped, carrier kept) and once with carrier = "lose" (the interfaces set down). Per
crash: the packets the flow sent while n1 was down, how many of them arrived (and how
late after the restart), and the flow's outage over the crash; over the run the
latency percentiles. Everything is counted from what the flow's ends recorded.
Run as root: sudo .venv/bin/python benchmarks/crash_radio.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from meshstress import runner
from meshstress.judge.metrics import flow_metrics
from meshstress.model import scenario

PPS = 100
SCENARIO = f"""
[scenario]
name = "line-churn"
warmup = "0.5s"

[mesh]
generate = "line 3"
routing = "static"

[[traffic]]
name = "cbr"
kind = "udp"
from = "n0"
to = "n2"
rate = "{PPS}pps"
size = 100

[sweep]
churn = [0, 12]
nodes = ["n1"]
churn_down = "2s"
step = "10s"
settle = "1s"
carrier = "CARRIER"
"""


def crashes(results: dict[str, Any]) -> list[tuple[float, float, float]]:
    """(crash t_rel, restart t_rel, crash took_s) of each churn crash of the run."""
    events: list[tuple[float, str, float]] = []
    for w in results["sweep"]["windows"]:
        for c in w.get("churn", []):
            (change,) = c["changes"]
            events.append((c["t_rel"], change["action"], c["took_s"]))
    events.sort()
    out = []
    for k, (t, action, took) in enumerate(events):
        if action == "node-crash":
            back = next(e[0] for e in events[k + 1 :] if e[1] == "node-restart")
            out.append((t, back, took))
    return out


def one(carrier: str, folder: Path) -> dict[str, Any]:
    sc = scenario.loads(SCENARIO.replace("CARRIER", carrier), "<line-churn>", base=Path.cwd())
    keep: dict[str, Any] = {}
    results = runner.run(sc, folder, say=lambda _m: None, keep=keep)
    t0, rec = keep["t0"], keep["records"]["cbr"]
    got = {seq: (ts, tr) for seq, ts, tr in rec.received}
    m = flow_metrics(rec, t0)
    rows = []
    for down, back, took in crashes(results):
        inside = [seq for seq, ts in rec.sent if t0 + down <= ts <= t0 + back]
        arrived = [seq for seq in inside if seq in got]
        late = [got[seq][1] - (t0 + back) for seq in arrived]
        delay = [got[seq][1] - got[seq][0] for seq in arrived]
        outs = [o for o in m["outages"] if o[1] > down and o[0] < back]
        rows.append(
            {
                "crash_t_rel": down,
                "restart_t_rel": back,
                "crash_took_s": round(took, 6),
                "sent_while_down": len(inside),
                "arrived_of_those": len(arrived),
                "arrived_after_restart_max_s": round(max(late), 3) if late else None,
                "their_delay_max_s": round(max(delay), 3) if delay else None,
                "outages": outs,
            }
        )
    return {
        "carrier": carrier,
        "crashes": rows,
        "delivery_ratio": m["delivery_ratio"],
        "latency_ms": {k: m["latency_ms"][k] for k in ("p50", "p99", "max")},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=1, help="runs per carrier mode")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    out: dict[str, Any] = {"loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    runs = []
    with tempfile.TemporaryDirectory(prefix="meshstress-crash-radio-") as tmp:
        for k in range(args.repeat):
            for carrier in ("keep", "lose"):
                runs.append(one(carrier, Path(tmp) / f"{carrier}{k}"))
    out["runs"] = runs
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
