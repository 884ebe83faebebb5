"""In-process ICMP echo between node namespaces: one raw socket per source, no `ping`.

Only addresses of the run's own nodes are probed."""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from meshstress.build import netns

if TYPE_CHECKING:
    from meshstress.build import Mesh


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = b"meshstress") -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    csum = checksum(header + payload)
    return struct.pack("!BBHHH", 8, 0, csum, ident, seq) + payload


def parse_echo_reply(packet: bytes) -> tuple[str, int, int] | None:
    """(source address, id, seq) of an IPv4 ICMP echo reply, else None."""
    if len(packet) < 28:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp_type, _code, _csum, ident, seq = struct.unpack("!BBHHH", packet[ihl : ihl + 8])
    if icmp_type != 0:
        return None
    return socket.inet_ntoa(packet[12:16]), ident, seq


def raw_socket_in(mesh: Mesh, node: str) -> socket.socket:
    """A raw ICMP socket bound to the node's namespace (created there, used from here)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(netns.path(mesh.ns(node)), os.O_RDONLY | os.O_CLOEXEC)
    try:
        netns.setns(target)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        finally:
            netns.setns(home)
    finally:
        os.close(target)
        os.close(home)
    sock.setblocking(False)
    return sock


def ping_pairs(
    mesh: Mesh, pairs: Iterable[tuple[str, str]], timeout: float = 2.0, tries: int = 3
) -> set[tuple[str, str]]:
    """Echo every (src, dst) pair concurrently; return the pairs that got no reply.

    Each request is retried up to `tries` times, spread over `timeout` seconds."""
    by_src: dict[str, list[str]] = {}
    for src, dst in pairs:
        if src != dst:
            by_src.setdefault(src, []).append(dst)
    if not by_src:
        return set()
    ident = (os.getpid() ^ int(time.monotonic() * 1000)) & 0xFFFF
    socks = {src: raw_socket_in(mesh, src) for src in by_src}
    owners = {mesh.address(n): n for n in mesh.nodes}
    pending = {(s, d) for s, dsts in by_src.items() for d in dsts}
    seq_of = {d: i for i, d in enumerate(mesh.nodes)}
    fd_src = {sock.fileno(): src for src, sock in socks.items()}
    try:
        interval = timeout / max(tries, 1)
        deadline = time.monotonic() + timeout
        next_send = time.monotonic()
        while pending and time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_send:
                for src, dst in sorted(pending):
                    packet = echo_request(ident, seq_of[dst])
                    try:
                        socks[src].sendto(packet, (mesh.address(dst), 0))
                    except OSError:
                        pass  # no route yet: counts as no reply
                next_send = now + interval
            wait = max(0.0, min(next_send, deadline) - time.monotonic())
            ready, _, _ = select.select(list(socks.values()), [], [], wait)
            for sock in ready:
                src = fd_src[sock.fileno()]
                while True:
                    try:
                        packet = sock.recv(2048)
                    except BlockingIOError:
                        break
                    reply = parse_echo_reply(packet)
                    if reply and reply[1] == ident and reply[0] in owners:
                        pending.discard((src, owners[reply[0]]))
    finally:
        for sock in socks.values():
            sock.close()
    return pending
