"""A tiny UDP echo service and its client: "the user's own software" for [[process]] tests
and scenarios/app-echo.toml. Standard library only; run as `python3 tests/echo_app.py`.

    echo_app.py server --port 7 [--delay 0.5]    # prints "listening on udp 7" once bound
    echo_app.py client --to ADDR --port 7 [--rate 20] [--duration 5] [--timeout 0.3]
                       [--exit CODE]
    echo_app.py crash --after 0.5 --code 3       # exits with CODE after a while

The client sends one request at a time and waits up to --timeout for its echo. For each
request it appends a JSON line to $MESHSTRESS_METRICS: {"ok": 1, "rtt_ms": 0.2} or
{"ok": 0}, and prints "reply seq=N rtt=0.200 ms" (or "timeout seq=N"). At the end it
prints "done sent=N ok=K" and exits with --exit (default 0).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time


def server(args: argparse.Namespace) -> int:
    time.sleep(args.delay)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", args.port))
    print(f"listening on udp {args.port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)


def client(args: argparse.Namespace) -> int:
    path = os.environ.get("MESHSTRESS_METRICS")
    out = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - for the process' life
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(args.timeout)
    end = time.monotonic() + args.duration
    sent = ok = 0
    while time.monotonic() < end:
        t = time.monotonic()
        sent += 1
        s.sendto(f"{sent}".encode(), (args.to, args.port))
        rtt = None
        try:
            while True:
                data, _ = s.recvfrom(2048)
                if data == f"{sent}".encode():
                    rtt = (time.monotonic() - t) * 1000
                    break
        except TimeoutError:
            pass
        except OSError as exc:  # no route: counts as a failed request
            print(f"error seq={sent}: {exc}", flush=True)
        if rtt is not None:
            ok += 1
            print(f"reply seq={sent} rtt={rtt:.3f} ms", flush=True)
            line = {"ok": 1, "rtt_ms": round(rtt, 3)}
        else:
            print(f"timeout seq={sent}", flush=True)
            line = {"ok": 0}
        if out is not None:
            out.write(json.dumps(line) + "\n")
        time.sleep(max(0.0, 1.0 / args.rate - (time.monotonic() - t)))
    print(f"done sent={sent} ok={ok}", flush=True)
    return int(args.exit)


def crash(args: argparse.Namespace) -> int:
    print("starting", flush=True)
    time.sleep(args.after)
    print(f"crashing with {args.code}", flush=True)
    return int(args.code)


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("server")
    a.add_argument("--port", type=int, default=7)
    a.add_argument("--delay", type=float, default=0.0)
    b = sub.add_parser("client")
    b.add_argument("--to", required=True)
    b.add_argument("--port", type=int, default=7)
    b.add_argument("--rate", type=float, default=20.0)
    b.add_argument("--duration", type=float, default=5.0)
    b.add_argument("--timeout", type=float, default=0.3)
    b.add_argument("--exit", type=int, default=0)
    c = sub.add_parser("crash")
    c.add_argument("--after", type=float, default=0.5)
    c.add_argument("--code", type=int, default=3)
    args = p.parse_args()
    return {"server": server, "client": client, "crash": crash}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
