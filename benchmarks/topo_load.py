#!/usr/bin/env python3
"""`meshstress topo show --json` on the Freifunk snapshots; print JSON with the seconds each
took (in one process, as tests/test_topo_cli.py runs it; the interpreter's start is not
counted). Target on a 2-core machine: freifunk-altdorf (660 nodes) <= 5 s, which
tests/test_topo_cli.py used to assert.
Run: .venv/bin/python benchmarks/topo_load.py [--repeat 3] [DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from meshstress.cli import cli

HERE = Path(__file__).resolve().parent
FREIFUNK = HERE.parent.parent / "shared" / "data" / "freifunk"
TARGETS = {"freifunk-altdorf": 5.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3, help="runs per file (median reported)")
    ap.add_argument("dir", nargs="?", default=str(FREIFUNK), help="meshnet-lab JSON files")
    args = ap.parse_args()
    files = sorted(Path(args.dir).glob("*.json"))
    if not files:
        print(f"no meshnet-lab JSON files in {args.dir}", file=sys.stderr)
        return 2
    results = []
    for f in files:
        seconds = []
        nodes = None
        for _ in range(args.repeat):
            t0 = time.monotonic()
            r = CliRunner().invoke(cli, ["topo", "show", str(f), "--json"])
            seconds.append(time.monotonic() - t0)
            if r.exit_code != 0:
                print(f"{f}: topo show exited {r.exit_code}: {r.output}", file=sys.stderr)
                return 1
            nodes = json.loads(r.stdout)["nodes"]
        seconds.sort()
        row: dict[str, object] = {
            "topology": f.stem,
            "nodes": nodes,
            "show_s": round(seconds[len(seconds) // 2], 3),
            "show_all_s": [round(s, 3) for s in seconds],
        }
        if f.stem in TARGETS:
            limit = TARGETS[f.stem]
            row["target"] = {"show_s": {"limit": limit, "met": row["show_s"] <= limit}}  # type: ignore[operator]
        results.append(row)
    print(json.dumps({"benchmark": "topo_load", "cpus": os.cpu_count(), "results": results},
                     indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
