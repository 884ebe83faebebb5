#!/usr/bin/env python3
"""How long `meshstress --help`, `--version` and `topo` take from process start; prints JSON.

Each command runs `--repeat` times (default 7) as a whole process, the way a user types
it; the median and the minimum are reported next to a bare `python -c pass`, measured
in the same run (this host's timings vary 1.5x from run to run). Target (issue 12):
0.15 s or less each.
    .venv/bin/python benchmarks/startup.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOPO = HERE.parent / "topologies" / "grid3x3.toml"
TARGET_S = 0.15


def clock(argv: list[str], repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    exe = [sys.executable, "-m", "meshstress"]
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "meshstress --help": [*exe, "--help"],
        "meshstress --version": [*exe, "--version"],
        "meshstress topo gen grid4 10 10": [*exe, "topo", "gen", "grid4", "10", "10"],
        "meshstress topo show grid3x3.toml": [*exe, "topo", "show", str(TOPO)],
    }
    out = {name: clock(argv, a.repeat) for name, argv in commands.items()}
    for name, r in out.items():
        if name.startswith("meshstress"):
            r["meets_target"] = r["median_s"] <= TARGET_S
    print(json.dumps({"target_s": TARGET_S, "repeat": a.repeat, "commands": out}, indent=2))


if __name__ == "__main__":
    main()
