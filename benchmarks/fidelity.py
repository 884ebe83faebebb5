#!/usr/bin/env python3
"""Configured against measured impairments: print a table, then JSON.

Builds the links of meshstress.fidelity (one link per case: loss, bursty loss, delay,
jitter, reorder, duplicate, corrupt, both directions of one link; tbf rates), sends
numbered UDP datagrams over each and compares what arrived with what was configured
(the statistics and the accepted bands are in meshstress/fidelity/__init__.py). Each row also
says whether the measurement would have passed as the neighbouring setting (it must
not). The netem part needs sch_netem (run it in the VM lab); the rate part only tbf:

    sudo .venv/bin/meshstress lab run -- .venv/bin/python benchmarks/fidelity.py
    sudo .venv/bin/python benchmarks/fidelity.py --only rate     # on a host without netem
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from typing import Any

from meshstress import build, doctor, fidelity
from meshstress.build import bringup


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def table(rows: list[dict[str, Any]]) -> str:
    head = [
        "check",
        "configured",
        "measured",
        "n",
        "count",
        "accepted",
        "ok",
        "neighbour: accepted, ok",
    ]
    lines = [head]
    for r in rows:
        if "accept" not in r:
            lines.append(
                [
                    r["check"],
                    "-",
                    f"{_fmt(r.get('delivered_mbit'))} Mbit/s",
                    str(r["n"]),
                    str(r.get("received")),
                    f"offered {_fmt(r.get('offered_mbit'))}",
                    "-",
                    "-",
                ]
            )
            continue
        nb = "; ".join(
            f"{_fmt(n['configured'])}: [{_fmt(n['accept'][0])}, {_fmt(n['accept'][1])}] "
            f"{'PASS' if n['ok'] else 'fail'}"
            for n in r["neighbours"]
        )
        lines.append(
            [
                r["check"],
                _fmt(r["configured"]),
                _fmt(r["measured"]),
                str(r["n"]),
                _fmt(r["count"]),
                f"[{_fmt(r['accept'][0])}, {_fmt(r['accept'][1])}]",
                "PASS" if r["ok"] else "FAIL",
                nb,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", choices=["netem", "rate"], help="run only one part")
    ap.add_argument(
        "--rates",
        default=",".join(f"{r:g}" for r in fidelity.RATES_MBIT),
        help="tbf rates in Mbit/s (default %(default)s)",
    )
    ap.add_argument("--workdir", help="keep the per-packet records here (default: a temporary dir)")
    args = ap.parse_args()
    rates = tuple(float(x) for x in args.rates.split(","))
    out: dict[str, Any] = {"kernel": platform.release(), "rows": []}
    has_netem = not doctor.missing_qdiscs({"netem"})
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.workdir or scratch
        if args.only != "rate":
            if not has_netem:
                print(
                    "fidelity: this kernel has no sch_netem: run it in the VM lab, or --only rate",
                    file=sys.stderr,
                )
                return 2
            up = bringup.bring_up(fidelity.netem_topology(), wait=False)
            try:
                with build.Mesh(up.state) as mesh:
                    t = time.monotonic()
                    rows, _ = fidelity.measure_netem(mesh, f"{tmp}/netem", out)
                    out["netem_s"] = round(time.monotonic() - t, 1)
                    out["rows"] += [r.as_dict() for r in rows]
            finally:
                build.teardown(up.state)
        if args.only != "netem":
            up = bringup.bring_up(fidelity.rate_topology(rates), wait=False)
            try:
                with build.Mesh(up.state) as mesh:
                    t = time.monotonic()
                    out["rows"].append(fidelity.measure_free(mesh, f"{tmp}/free"))
                    for r in rates:
                        row, _ = fidelity.measure_rate(mesh, r, f"{tmp}/rate{r:g}")
                        out["rows"].append(row.as_dict())
                    out["rate_s"] = round(time.monotonic() - t, 1)
            finally:
                build.teardown(up.state)
    out["total_s"] = round(time.monotonic() - t0, 1)
    print(table(out["rows"]))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
