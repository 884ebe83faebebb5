#!/usr/bin/env python3
"""Does netem's loss act on every TCP segment? Print JSON.

For each of N fresh 2-node meshes built by meshstress (`a_to_b = { loss = "10%" }`), n0
sends SIZE bytes of TCP to n1. The row gives what the kernel says happened at n0's
lossy interface: the data skbs that entered the qdisc (tracepoint net:net_dev_queue)
and the largest of them, netem's own drop counter, the packets it passed, and the namespace's
OutSegs and RetransSegs. `drop_ratio` = drops / (drops + passed), with passed counted in
segments (a qdisc counts a GSO skb as its gso_segs) and drops in skbs: it is the
segment loss only when every skb is one segment.

`--compare` runs the same meshes a second time with n0's interface set back to the
kernel's default gso_max_segs (65535), the state before the builder set it to 1: TCP
then hands netem 64 KB super-packets, netem drops or passes each whole, and a transfer
with no loss at all becomes likely. Both columns come from the same run.

Needs netem (the VM lab):
  sudo .venv/bin/meshstress lab run -- \
      .venv/bin/python benchmarks/tcp_netem_loss.py --runs 20 --compare
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from typing import Any

from meshstress import build
from meshstress.build import bringup
from meshstress.model import topofile
from meshstress.observe.skbtrace import SkbTrace

TOPOLOGY = 'nodes = ["n0", "n1"]\n[[links]]\na = "n0"\nb = "n1"\na_to_b = { loss = "%s" }\n'

RECV = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 5001)); srv.listen(1); print("ready", flush=True)
c, _ = srv.accept(); n = 0
while True:
    b = c.recv(65536)
    if not b:
        break
    n += len(b)
print(n, flush=True)
"""
SEND = """
import socket, sys
with socket.create_connection((sys.argv[1], 5001), timeout=120) as s:
    s.sendall(b"x" * int(sys.argv[2]))
"""


def snmp_tcp(mesh: build.Mesh, node: str) -> dict[str, int]:
    text = mesh.run(node, ["cat", "/proc/net/snmp"], capture_output=True, text=True).stdout
    head, values = [line.split() for line in text.splitlines() if line.startswith("Tcp:")][:2]
    return {k: int(v) for k, v in zip(head[1:], values[1:], strict=True)}


def netem_stats(mesh: build.Mesh, node: str, ifname: str) -> dict[str, int]:
    sock = mesh.netlink(node)
    index = sock.link_lookup(ifname=ifname)[0]
    for q in sock.get_qdiscs(index=index):
        if q["index"] == index and q.get_attr("TCA_KIND") == "netem":
            basic = q.get_attr("TCA_STATS2").get_attr("TCA_STATS_BASIC")
            queue = q.get_attr("TCA_STATS2").get_attr("TCA_STATS_QUEUE")
            return {"passed": int(basic["packets"]), "drops": int(queue["drops"])}
    raise RuntimeError(f"no netem on {node}:{ifname}")


def one(size: int, loss: str, gso_max_segs: int | None) -> dict[str, Any]:
    topo = topofile.loads_toml(TOPOLOGY % loss, "tcp-loss.toml")
    topo.routing = "static"
    brought = bringup.bring_up(topo, wait=False)
    mesh = build.Mesh(brought.state)
    try:
        ifname = mesh.state.interfaces["n0"][0]["ifname"]
        sock = mesh.netlink("n0")
        index = sock.link_lookup(ifname=ifname)[0]
        if gso_max_segs is not None:
            sock.link("set", index=index, gso_max_segs=gso_max_segs)
        segs = sock.get_links(index)[0].get_attr("IFLA_GSO_MAX_SEGS")
        recv = mesh.popen(
            "n1",
            [sys.executable, "-c", RECV, mesh.address("n1")],
            stdout=subprocess.PIPE,
            text=True,
        )
        mesh.record_process(recv, "n1", "bench")
        assert recv.stdout is not None and recv.stdout.readline().strip() == "ready"
        before, q0 = snmp_tcp(mesh, "n0"), netem_stats(mesh, "n0", ifname)
        # both ends are named ms-RUN-i0: the receiver's ACKs (66-90 bytes) are left out
        with SkbTrace(ifname, min_len=200) as trace:
            mesh.run(
                "n0",
                [sys.executable, "-c", SEND, mesh.address("n1"), str(size)],
                check=True,
                timeout=300,
            )
            out, _ = recv.communicate(timeout=120)
        lens = trace.lengths
        assert int(out.strip()) == size, out
        after, q1 = snmp_tcp(mesh, "n0"), netem_stats(mesh, "n0", ifname)
        drops, passed = q1["drops"] - q0["drops"], q1["passed"] - q0["passed"]
        return {
            "gso_max_segs": segs,
            "data_skbs": len(lens),
            "skbs_over_1514": sum(1 for n in lens if n > 1514),
            "max_skb": max(lens, default=0),
            "netem_drops": drops,
            "netem_passed": passed,
            "drop_ratio": round(drops / max(1, drops + passed), 4),
            "out_segs": after["OutSegs"] - before["OutSegs"],
            "retrans_segs": after["RetransSegs"] - before["RetransSegs"],
        }
    finally:
        mesh.close()
        build.teardown(mesh.state)


def wilson(k: int, n: int, z: float = 2.576) -> tuple[float, float]:
    """The 99% Wilson score interval of k successes in n trials."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def summary(rows: list[dict[str, Any]], p: float) -> dict[str, Any]:
    inside = 0
    for r in rows:
        lo, hi = wilson(r["netem_drops"], r["netem_drops"] + r["netem_passed"])
        r["drop_ratio_99ci"] = [round(lo, 4), round(hi, 4)]
        r["p_inside_99ci"] = lo <= p <= hi
        inside += r["p_inside_99ci"]
    drops = sum(r["netem_drops"] for r in rows)
    offered = drops + sum(r["netem_passed"] for r in rows)
    return {
        "runs": len(rows),
        "runs_with_retransmits": sum(1 for r in rows if r["retrans_segs"] > 0),
        "runs_without_any_netem_drop": sum(1 for r in rows if r["netem_drops"] == 0),
        "runs_with_p_inside_99ci": inside,
        "pooled_drop_ratio": round(drops / max(1, offered), 4),
        "pooled_99ci": [round(x, 4) for x in wilson(drops, offered)],
        "mean_data_skbs": round(sum(r["data_skbs"] for r in rows) / max(1, len(rows)), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--size", type=int, default=400_000)
    ap.add_argument("--loss", default="10%")
    ap.add_argument("--compare", action="store_true", help="also with gso_max_segs 65535")
    args = ap.parse_args()
    p = float(args.loss.rstrip("%")) / 100
    out: dict[str, Any] = {"size": args.size, "loss": args.loss, "kernel": os.uname().release}
    variants: list[tuple[str, int | None]] = [("built", None)]
    if args.compare:
        variants.append(("gso_max_segs_65535", 65535))
    for name, segs in variants:
        rows = []
        for i in range(args.runs):
            t = time.monotonic()
            row = one(args.size, args.loss, segs)
            row["seconds"] = round(time.monotonic() - t, 2)
            rows.append(row)
            print(f"{name} {i}: {row}", file=sys.stderr, flush=True)
        out[name] = {"summary": summary(rows, p), "rows": rows}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
