#!/usr/bin/env python3
"""Does the capacity estimate predict where runs turn INVALID? Print JSON lines.

For each routing backend and grid size, a reference scenario: grid4 NxN, one UDP flow
corner to corner (200 pps), 20 s, routes recorded every second. Each run gives the
runner's host verdict (valid, or INVALID: saturated) and its CPU breakdown
(run.host.cpu_by); next to it the estimate from the stored calibration
(meshstress.model.capacity) and the estimate's error against what the run's own parts
measured (routing, traffic, recorder, meshstress, softirq: everything but `other`).
An INVALID run is repeated once (`--repeat`), the host being shared.

    sudo .venv/bin/python benchmarks/capacity_proof.py --backends babeld,batmand,static \\
        --sizes 4,6,8,10,12 > capacity.jsonl
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
from meshstress.model import capacity, scenario

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

OWN = ("routing", "traffic", "process", "recorder", "meshstress", "softirq")


def one(backend: str, n: int, duration: float, tmp: Path, cal: Any, cores: int) -> dict[str, Any]:
    text = REFERENCE.format(backend=backend, n=n, last=n * n - 1, duration=duration)
    sc = scenario.loads(text, f"<capacity {backend} {n}>", base=tmp)
    est = capacity.estimate_scenario(sc, cal)
    load = os.getloadavg()
    r = runner.run(sc, tmp / f"{backend}-{n}-{os.urandom(3).hex()}")
    host = r["run"].get("host", {})
    by = (host.get("cpu_by") or {}).get("by", {})
    window = (host.get("cpu_by") or {}).get("window_s") or 1.0
    own = sum(by.get(c, {}).get("cpu_s", 0.0) for c in OWN) / window
    return {
        "backend": backend, "grid": f"{n}x{n}", "nodes": n * n,
        "valid": r.get("valid"), "validity": r.get("validity"),
        "saturated_share": host.get("saturated_share"), "cpu_mean_pct": host.get("cpu_mean_pct"),
        "delivery": r["flows"]["cbr"].get("delivery_ratio"),
        "converged": (r.get("mesh") or {}).get("converged"),
        "measured_own_cores": round(own, 3),
        "measured_by_cores": {c: round(v["cpu_s"] / window, 3) for c, v in by.items()},
        "estimate_cores": round(est.cores, 3), "estimate_mb": round(est.memory_mb, 1),
        "estimate_fits": not est.exceeds(cores, 1e12),
        "estimate_error": round((est.cores - own) / own, 3) if own > 0 else None,
        "route_snapshot_s": host.get("route_snapshot_s"),
        "loadavg_before": [round(x, 2) for x in load],
    }  # fmt: skip


def tried(backend: str, n: int, args: Any, tmp: Path, cal: Any, cores: int) -> dict[str, Any]:
    """one(), once more when the run broke (on a shared host another user's cleanup can
    take a namespace away); a second failure gives a row with the error."""
    for _attempt in range(2):
        try:
            return one(backend, n, args.duration, tmp, cal, cores)
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
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    cal = capacity.load_calibration(args.calibration)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="meshstress-capacity-") as tmp:
        for backend in args.backends.split(","):
            for n in (int(x) for x in args.sizes.split(",")):
                tries = [tried(backend, n, args, Path(tmp), cal, cores)]
                print(json.dumps(tries[-1]), flush=True)
                while not tries[-1]["valid"] and len(tries) <= args.repeat:
                    tries.append(tried(backend, n, args, Path(tmp), cal, cores))
                    print(json.dumps(tries[-1]), flush=True)
                if not any(t["valid"] for t in tries) and not args.keep_going:
                    break
    return 0


if __name__ == "__main__":
    sys.exit(main())
