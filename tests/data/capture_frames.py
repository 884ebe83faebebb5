"""How tests/data/*.pcap were made (run as root; batman-adv needs the VM lab):

    .venv/bin/python tests/data/capture_frames.py babeld tests/data
    .venv/bin/meshstress lab run -- .venv/bin/python tests/data/capture_frames.py batman-iv tests/data
    .venv/bin/meshstress lab run -- .venv/bin/python tests/data/capture_frames.py batman-v tests/data

A 3-node line n0-n1-n2, converged; meshstress's own capture (meshstress.observe.capture)
on n1's interface toward n0 (and on n0's bat0 for batman-adv) for a few seconds, with a
ping n0 -> n2 across; the ring keeps the newest few KB, so the files stay small.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from meshstress import build
from meshstress.build import bringup
from meshstress.model import generators
from meshstress.observe.capture import CaptureOptions, Captures, Target

SETTINGS = {
    "babeld": ("babeld", {"hello_interval": "1s"}),
    "batman-iv": ("batman-adv", {"algorithm": "BATMAN_IV", "orig_interval": "1s"}),
    "batman-v": ("batman-adv", {"algorithm": "BATMAN_V", "orig_interval": "1s"}),
}


def main(kind: str, out: Path) -> None:
    routing, settings = SETTINGS[kind]
    topo = generators.line(3)
    topo.routing, topo.routing_settings = routing, settings
    up = bringup.bring_up(topo, wait=True, timeout=120)
    try:
        mesh = build.Mesh(up.state)
        targets = [Target("n1", "n0")]
        if routing == "batman-adv":
            targets.append(Target("n0", "bat0"))
        caps = Captures(mesh, CaptureOptions(targets=targets, snaplen=1600, limit=6000))
        caps.start()
        try:
            time.sleep(4.0)
            result = mesh.ping("n0", "n2", count=3, interval=0.3)
            print(f"ping n0->n2: {result}")
            time.sleep(1.0)
        finally:
            files = caps.write(out / f"{kind}.tmp")
        for stem, info in files.items():
            src = out / f"{kind}.tmp" / f"{stem}.pcap"
            dst = out / f"{kind}-{stem}.pcap"
            src.rename(dst)
            print(dst, info)
        (out / f"{kind}.tmp").rmdir()
        mesh.close()
    finally:
        build.teardown(up.state, timeout=60)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
