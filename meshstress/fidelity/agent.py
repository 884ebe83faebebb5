"""The two ends of the fidelity streams (meshstress.fidelity); stdlib only, and one
process per end for all streams of a phase, so that few interpreters start under qemu.

    python -m meshstress.fidelity.agent recv SPEC.json READY
    python -m meshstress.fidelity.agent send SPEC.json

SPEC is a JSON list of streams. recv: {"ns", "bind", "port", "out"}; send: {"ns",
"bind", "to", "port", "count", "pps", "size", "out"}. Each socket is made inside its
namespace ("ns": a name under /run/netns, entered with setns for the moment of
socket()), so one process serves links of many nodes.

A datagram's payload starts with seq (u64) and its send time (f64, CLOCK_REALTIME
seconds, read just before sendto), network byte order, padded with zeros to "size".
The sender sends exactly "count" datagrams per stream at "pps" (0: as fast as it can;
it sleeps only when 1 ms ahead and never skips one when behind) and writes
{"sent": [t, ...], "send_errors": n} per stream. The receiver writes READY once every
socket is bound, records [seq, t_send, t_recv, bytes] per datagram (t_recv: the
kernel's SO_TIMESTAMPNS) and the socket's drop counter (SO_RXQ_OVFL) until SIGTERM,
then writes each stream's file.
"""

from __future__ import annotations

import ctypes
import heapq
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

from meshstress.traffic.agent import _on_signal, _Stop, _write  # the same agent plumbing

HEADER = struct.Struct("!Qd")
CLONE_NEWNET = 0x40000000
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)




_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def sockets_in(names: list[str]) -> list[socket.socket]:
    """One UDP socket made inside each named namespace (this thread returns home)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    out = []
    try:
        for name in names:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                _setns(fd)
                out.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            finally:
                os.close(fd)
                _setns(home)
    finally:
        os.close(home)
    return out


def send(spec: list[dict[str, Any]]) -> None:
    socks = sockets_in([s["ns"] for s in spec])
    times: list[list[float]] = [[] for _ in spec]
    errors = [0] * len(spec)
    pads = [b"\0" * max(0, int(s["size"]) - HEADER.size) for s in spec]
    dests = [(s["to"], int(s["port"])) for s in spec]
    for sock, s in zip(socks, spec, strict=True):
        # a large send buffer: a full qdisc must drop the excess, not block the sender
        # (with the default ~200 kB the socket, not tbf, would pace a fast stream)
        try:
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_SNDBUFFORCE", 32), 64 << 20)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 20)
        sock.bind((s["bind"], 0))
    began = time.monotonic()
    # (due, stream, seq): every stream's datagrams in the order they are due
    due: list[tuple[float, int, int]] = []
    for i, s in enumerate(spec):
        if int(s["count"]) > 0:
            due.append((began, i, 0))
    heapq.heapify(due)
    clock, rt = time.clock_gettime, time.CLOCK_REALTIME
    pack = HEADER.pack
    while due:
        when, i, seq = heapq.heappop(due)
        wait = when - time.monotonic()
        if wait > 0.001:
            time.sleep(wait)
        t = clock(rt)
        try:
            socks[i].sendto(pack(seq, t) + pads[i], dests[i])
        except OSError:
            errors[i] += 1
        times[i].append(t)
        s = spec[i]
        if seq + 1 < int(s["count"]):
            pps = float(s["pps"])
            heapq.heappush(due, (began + (seq + 1) / pps if pps > 0 else when, i, seq + 1))
    for s, sent, err in zip(spec, times, errors, strict=True):
        _write(s["out"], {"sent": sent, "send_errors": err})


def recv(spec: list[dict[str, Any]], ready: str) -> None:
    socks = sockets_in([s["ns"] for s in spec])
    recs: list[dict[str, Any]] = [{"packets": [], "bad": 0, "drops": 0} for _ in spec]
    for sock, s in zip(socks, spec, strict=True):
        try:  # as root, past rmem_max: the receiver must not be what loses packets
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 64 << 20)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        sock.bind((s["bind"], int(s["port"])))
        sock.setblocking(False)
    index = {sock.fileno(): i for i, sock in enumerate(socks)}
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with open(ready, "w"):
        pass

    def drain(sock: socket.socket) -> None:
        rec = recs[index[sock.fileno()]]
        while True:
            try:
                data, anc, _, _ = sock.recvmsg(65535, 256)
            except BlockingIOError:
                return
            t_recv = None
            for level, kind, value in anc:
                if level != socket.SOL_SOCKET:
                    continue
                if kind == SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = struct.unpack_from("=qq", value)
                    t_recv = sec + nsec * 1e-9
                elif kind == SO_RXQ_OVFL and len(value) >= 4:
                    rec["drops"] = struct.unpack_from("=I", value)[0]
            if t_recv is None:
                t_recv = time.clock_gettime(time.CLOCK_REALTIME)
            if len(data) < HEADER.size:
                rec["bad"] += 1
                continue
            seq, t_send = HEADER.unpack_from(data)
            rec["packets"].append([seq, t_send, t_recv, len(data)])

    try:
        while True:
            readable, _, _ = select.select(socks, [], [], 0.5)
            for sock in readable:
                drain(sock)
    except _Stop:
        pass
    # what is still queued arrived before the stop: read it (a slow receiver under qemu
    # lags behind; its kernel timestamps do not), then write
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for sock in socks:
        drain(sock)
    for s, rec in zip(spec, recs, strict=True):
        _write(s["out"], rec)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in ("send", "recv") or (args[0] == "recv") != (len(args) == 3):
        print(__doc__, file=sys.stderr)
        return 2
    with open(args[1]) as f:
        spec = json.load(f)
    if args[0] == "send":
        send(spec)
    else:
        recv(spec, args[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
