#!/usr/bin/env python3
"""Does the capacity estimate predict where runs turn INVALID? Print JSON lines.

For each routing backend and grid size, a reference scenario: grid4 NxN, one UDP flow
corner to corner (200 pps), 20 s, routes recorded every second. Each run gives the
runner's host verdict (valid, or INVALID: saturated) and its CPU breakdown
(run.host.cpu_by); next to it the estimate from the calibration of this place (the
stored one, else the packaged default; inside the VM lab the lab's) and its error
against what the run's own parts measured. An INVALID run is repeated once
(`--repeat`), the host being shared.

What a run's own parts used, from the breakdown and an idle window (no mesh) measured
just before the run (--idle seconds), side by side:
- `own_processes`: the run's processes and meshstress (routing, traffic, process,
  recorder, meshstress). A lower bound: it holds the kernel work run in their context
  (these kernels have no IRQ_TIME_ACCOUNTING: a send's forwarding is in the sender's
  system time), not the kernel's work elsewhere;
- `own_upper`: that plus softirq above the idle window's. An upper bound: softirq in a
  process's context is counted twice, and on a shared host softirq is everybody's;
- `own_private` (the VM lab, where nobody else runs): the whole busy time above the
  idle window's; batman-adv's work (kworkers, softirq) is only seen this way.

    sudo .venv/bin/python benchmarks/capacity_proof.py --backends babeld,batmand,static \\
        --sizes 4,6,8,10,12 > capacity.jsonl
    sudo .venv/bin/meshstress lab run --timeout 7200 -- .venv/bin/python \\
        benchmarks/capacity_proof.py --backends batman-adv --sizes 8,12,16 > lab.jsonl
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
from meshstress.model import capacity, costfit, scenario
from meshstress.observe.cpu import measure

REFERENCE = """
[scenario]
name = "capacity-{backend}-{n}"
duration = "{duration}s"
warmup = "1s"
route_interval = "1s"
[mesh]
generate = "grid4 {n} {n}"
routing = "{backend}"
[[traffic]]
name = "cbr"
kind = "udp"
from = "n0"
to = "n{last}"
rate = "200pps"
"""

PROCESSES = ("routing", "traffic", "process", "recorder", "meshstress")


def error(est: float, measured: float) -> float | None:
    return round((est - measured) / measured, 3) if measured > 0 else None


def one(
    backend: str, n: int, args: Any, tmp: Path, cal: Any, cores: int, private: bool
) -> dict[str, Any]:
    text = REFERENCE.format(backend=backend, n=n, last=n * n - 1, duration=args.duration)
    sc = scenario.loads(text, f"<capacity {backend} {n}>", base=tmp)
    est = capacity.estimate_scenario(sc, cal)
    load = os.getloadavg()
    quiet = measure(list, args.idle).breakdown()  # no mesh: the baseline, just before
    assert quiet is not None
    idle_softirq = quiet["by"]["softirq"]["cpu_s"] / quiet["window_s"]
    idle_busy = costfit.private_busy_cores(quiet)
    r = runner.run(sc, tmp / f"{backend}-{n}-{os.urandom(3).hex()}")
    host = r["run"].get("host", {})
    by = (host.get("cpu_by") or {}).get("by", {})
    window = (host.get("cpu_by") or {}).get("window_s") or 1.0
    procs = sum(by.get(c, {}).get("cpu_s", 0.0) for c in PROCESSES) / window
    softirq = by.get("softirq", {}).get("cpu_s", 0.0) / window
    upper = procs + max(0.0, softirq - idle_softirq)
    busy = sum(v.get("cpu_s", 0.0) for v in by.values()) / window
    own_private = max(0.0, busy - idle_busy) if private else None
    own = own_private if private else procs
    return {
        "backend": backend, "grid": f"{n}x{n}", "nodes": n * n,
        "valid": r.get("valid"), "validity": r.get("validity"),
        "saturated_share": host.get("saturated_share"), "cpu_mean_pct": host.get("cpu_mean_pct"),
        "delivery": r["flows"]["cbr"].get("delivery_ratio"),
        "converged": (r.get("mesh") or {}).get("converged"),
        "where": "lab" if private else "host",
        "own_processes": round(procs, 4), "own_upper": round(upper, 4),
        "own_private": round(own_private, 4) if own_private is not None else None,
        "idle_softirq_cores": round(idle_softirq, 4), "idle_busy_cores": round(idle_busy, 4),
        "measured_by_cores": {c: round(v["cpu_s"] / window, 4) for c, v in by.items()},
        "estimate_cores": round(est.cores, 4), "estimate_mb": round(est.memory_mb, 1),
        "estimate_parts": {p.what: round(p.cores, 4) for p in est.parts if p.cores},
        "calibration": est.calibration,
        "estimate_fits": not est.exceeds(cores, 1e12),
        "estimate_error": error(est.cores, own),
        "estimate_error_upper": None if private else error(est.cores, upper),
        "route_snapshot_s": host.get("route_snapshot_s"),
        "loadavg_before": [round(x, 2) for x in load],
    }  # fmt: skip


def tried(
    backend: str, n: int, args: Any, tmp: Path, cal: Any, cores: int, private: bool
) -> dict[str, Any]:
    """one(), once more when the run broke (on a shared host another user's cleanup can
    take a namespace away); a second failure gives a row with the error."""
    for _attempt in range(2):
        try:
            return one(backend, n, args, tmp, cal, cores, private)
        except Exception as exc:  # noqa: BLE001 - reported in the row
            err = f"{type(exc).__name__}: {exc}"
            print(json.dumps({"backend": backend, "grid": f"{n}x{n}", "broken": err}),
                  file=sys.stderr, flush=True)  # fmt: skip
    return {"backend": backend, "grid": f"{n}x{n}", "valid": None, "error": err}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backends", default="babeld,batmand,static")
    ap.add_argument("--sizes", default="4,6,8,10,12")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=1, help="extra tries of an INVALID run")
    ap.add_argument("--calibration", default=None)
    ap.add_argument("--keep-going", action="store_true", help="go on past an INVALID size")
    ap.add_argument("--idle", type=float, default=5.0, help="idle window before each run (s)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    where = capacity.where_of(None, os.environ)  # inside the VM lab: "lab"
    private = where == "lab"
    cal = capacity.load_calibration(args.calibration, where)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="meshstress-capacity-") as tmp:
        for backend in args.backends.split(","):
            for n in (int(x) for x in args.sizes.split(",")):
                tries = [tried(backend, n, args, Path(tmp), cal, cores, private)]
                print(json.dumps(tries[-1]), flush=True)
                while not tries[-1]["valid"] and len(tries) <= args.repeat:
                    tries.append(tried(backend, n, args, Path(tmp), cal, cores, private))
                    print(json.dumps(tries[-1]), flush=True)
                if not any(t["valid"] for t in tries) and not args.keep_going:
                    break
    return 0


if __name__ == "__main__":
    sys.exit(main())
