"""Traffic for the impairment tests: a bounded TCP transfer and a numbered UDP stream
between two nodes of a mesh, measured at the receiver. Helpers, not tests."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

from meshstress.build import Mesh
from meshstress.fidelity import pin_neighbour  # noqa: F401 - used here and by the tests

_TCP_RECV = r"""
import json, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(1)
srv.settimeout(float(sys.argv[3]))
print("ready", flush=True)
conn, _ = srv.accept()
conn.settimeout(float(sys.argv[3]))
total = 0
first = last = None
while True:
    data = conn.recv(65536)
    if not data:
        break
    now = time.monotonic()
    if first is None:
        first = now
    last = now
    total += len(data)
print(json.dumps({"bytes": total, "seconds": (last or 0) - (first or 0)}), flush=True)
"""

_TCP_SEND = r"""
import socket, sys, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + 10
while True:
    try:
        s = socket.create_connection((host, port), timeout=5)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
chunk = b"x" * 65536
left = size
while left > 0:
    n = min(left, len(chunk))
    s.sendall(chunk[:n])
    left -= n
s.shutdown(socket.SHUT_WR)
s.recv(1)
s.close()
"""

_UDP_RECV = r"""
import json, socket, sys, time
host, port, total_s, idle_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:  # as root, past rmem_max: the receiver must not be what loses packets
    s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 16 << 20)
except OSError:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
s.bind((host, port))
print("ready", flush=True)
seqs = []
end = time.monotonic() + total_s
s.settimeout(total_s)
while time.monotonic() < end:
    try:
        data, _ = s.recvfrom(2048)
    except socket.timeout:
        break
    seqs.append(int(data[:8]))
    s.settimeout(idle_s)
print(json.dumps(seqs), flush=True)
"""

_UDP_SEND = r"""
import socket, sys, time
host, port, count, gap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
pad = b"." * 92
t = time.monotonic()
for i in range(count):
    s.sendto(b"%08d" % i + pad, (host, port))
    t += gap
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)
"""


def _start(mesh: Mesh, node: str, script: str, *args: object) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", script, *map(str, args)]
    proc = mesh.popen(node, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mesh.record_process(proc, node, "test-traffic", argv[:2])
    return proc


def _ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(
            f"receiver did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        )


def tcp_goodput(
    mesh: Mesh, src: str, dst: str, size: int, port: int = 5201, timeout: float = 60
) -> float:
    """Send `size` bytes over TCP from src to dst; goodput in bit/s as the receiver saw it
    (first byte to end of stream)."""
    recv = _start(mesh, dst, _TCP_RECV, mesh.address(dst), port, timeout)
    try:
        _ready(recv)
        send = _start(mesh, src, _TCP_SEND, mesh.address(dst), port, size)
        out, err = recv.communicate(timeout=timeout)
        send.wait(timeout=10)
    finally:
        for p in (recv,):
            if p.poll() is None:
                p.kill()
    assert recv.returncode == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    assert got["bytes"] == size, got
    return float(got["bytes"] * 8 / got["seconds"])


@dataclass
class Stream:
    sent: int
    arrivals: list[int]  # sequence numbers in arrival order (duplicates included)

    @property
    def distinct(self) -> int:
        return len(set(self.arrivals))

    @property
    def loss(self) -> float:
        return 1 - self.distinct / self.sent

    @property
    def duplicates(self) -> int:
        return len(self.arrivals) - self.distinct

    def loss_runs(self) -> list[int]:
        """Lengths of the runs of consecutive lost sequence numbers."""
        got = set(self.arrivals)
        runs: list[int] = []
        n = 0
        for i in range(self.sent):
            if i in got:
                if n:
                    runs.append(n)
                n = 0
            else:
                n += 1
        if n:
            runs.append(n)
        return runs

    def mean_burst(self) -> float:
        runs = self.loss_runs()
        return sum(runs) / len(runs) if runs else 0.0

    @property
    def early(self) -> int:
        """Packets that arrived before one with a lower sequence number (overtakers)."""
        low = None
        early = 0
        for s in reversed(self.arrivals):
            if low is not None and s > low:
                early += 1
            low = s if low is None else min(low, s)
        return early

    @property
    def late(self) -> int:
        """Packets that arrived after one with a higher sequence number (reordered)."""
        top = -1
        late = 0
        for s in self.arrivals:
            if s < top:
                late += 1
            top = max(top, s)
        return late


def udp_stream(
    mesh: Mesh, src: str, dst: str, count: int, gap: float = 0.0005, port: int = 5301
) -> Stream:
    """Send `count` numbered 100-byte UDP datagrams from src to dst, `gap` seconds apart."""
    pin_neighbour(mesh, src, dst)
    total = 30 + count * gap * 5
    recv = _start(mesh, dst, _UDP_RECV, mesh.address(dst), port, total, 2.0)
    try:
        _ready(recv)
        send = _start(mesh, src, _UDP_SEND, mesh.address(dst), port, count, gap)
        send.wait(timeout=total)
        out, err = recv.communicate(timeout=total + 5)
    finally:
        if recv.poll() is None:
            recv.kill()
    assert send.returncode == 0 and recv.returncode == 0, err
    return Stream(sent=count, arrivals=json.loads(out.strip().splitlines()[-1]))
