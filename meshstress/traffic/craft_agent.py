"""The sender of a crafted flow, run inside a node's namespace by meshstress.traffic.flows.

    python -m meshstress.traffic.craft_agent send --ifname IF --frames F.pcap --start T --end T
        --pps R [--vary-id] [--count N] --out F [--go F]

It reads the frames of one packet (built once by scapy in meshstress.traffic.crafted and
written as a pcap by the caller; this process does not import scapy) and sends their
bytes through a raw AF_PACKET socket bound to --ifname, --pps packets per second from
--start until --end (or --count packets), every frame of a packet back to back. With
--vary-id each packet's frames get the packet's sequence number as their IP id (the
header checksum updated incrementally): fragments are reassembled by id. Times are
CLOCK_MONOTONIC seconds; on its end, SIGTERM or SIGINT it writes one JSON file (--out):
{"sent": [[seq, t_send]], "frames_per_packet": k, "frames_sent": n, "send_errors": e,
"error_kinds": {...}}.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import Any

from meshstress.traffic.agent import MAX_LIFETIME, _sleep_until, await_go, run_recorded
from meshstress.traffic.crafted import patch_ip_id, read_pcap


def send(a: argparse.Namespace, rec: dict[str, Any]) -> None:
    frames = [bytearray(f) for _, f in read_pcap(a.frames)]
    if not frames:
        raise SystemExit(f"{a.frames}: no frames")
    sent: list[list[float]] = []
    rec["sent"] = sent
    rec["frames_per_packet"] = len(frames)
    rec["frames_sent"] = 0
    rec["send_errors"] = 0
    errors: dict[str, int] = {}
    rec["error_kinds"] = errors
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.bind((a.ifname, 0))
        fixed = [bytes(f) for f in frames]
        _sleep_until(a.start)
        interval = 1.0 / a.pps
        began = time.monotonic()
        rec["began"] = began
        seq = 0
        count = a.count or None
        while count is None or seq < count:
            due = began + seq * interval
            if due >= a.end:
                break
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            elif now - due > 1.0:  # far behind (stopped, or a slow CPU): do not burst
                began += now - due
                continue
            if a.vary_id:
                for f in frames:
                    patch_ip_id(f, seq + 1)
                out: list[Any] = frames
            else:
                out = fixed
            t = time.monotonic()
            for f in out:
                try:
                    s.send(f)
                    rec["frames_sent"] += 1
                except OSError as exc:
                    rec["send_errors"] += 1
                    key = exc.strerror or str(exc)
                    errors[key] = errors.get(key, 0) + 1
            sent.append([seq, t])
            seq += 1
    finally:
        s.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m meshstress.traffic.craft_agent")
    p.add_argument("mode", choices=["send"])
    p.add_argument("--ifname", required=True)
    p.add_argument("--frames", required=True)
    p.add_argument("--start", type=float, default=0.0)
    p.add_argument("--end", type=float, default=0.0)
    p.add_argument("--pps", type=float, default=100.0)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--vary-id", action="store_true")
    p.add_argument("--out", required=True)
    p.add_argument("--go", default="")
    a = p.parse_args(argv)
    if a.go:
        t0 = await_go(a.go)
        a.start += t0
        a.end += t0
    now = time.monotonic()
    if not (now - 60 < a.end <= now + MAX_LIFETIME):
        p.error(f"--end {a.end} is not within {MAX_LIFETIME:g} s from now ({now})")
    if not a.pps > 0 or a.count < 0:
        p.error("--pps must be positive, --count at least 0")
    rec: dict[str, Any] = {"mode": "crafted", "pid": os.getpid(), "started": now, "errors": []}
    run_recorded(lambda: send(a, rec), rec, a.out, "crafted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
