"""Traffic between nodes of a mesh. For now: ping, parsed into numbers.

`parse_ping` is pure (iputils' output -> PingResult); `ping` runs it inside a node's
namespace, always toward a node address of the same run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshstress.build import Mesh

_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_RTT = re.compile(r"= ([0-9.]+)/([0-9.]+)/([0-9.]+)/")
_TTL = re.compile(r"ttl=(\d+)")
_REPLY = re.compile(
    r"^\[(\d+(?:\.\d+)?)\] \d+ bytes from [^:]+: icmp_seq=(\d+) .*?time=([0-9.]+) ms", re.M
)


@dataclass(frozen=True)
class PingResult:
    sent: int
    received: int
    rtt_min_ms: float | None = None
    rtt_avg_ms: float | None = None
    rtt_max_ms: float | None = None
    ttl: int | None = None  # of the first reply: 64 minus the routers it crossed

    @property
    def ok(self) -> bool:
        return self.received > 0

    @property
    def loss(self) -> float:
        return 1.0 - self.received / self.sent if self.sent else 1.0


def parse_ping(text: str) -> PingResult:
    """iputils ping's output -> PingResult (no summary line: nothing was sent)."""
    m = _SUMMARY.search(text)
    if not m:
        return PingResult(0, 0)
    rtt = _RTT.search(text)
    ttl = _TTL.search(text)
    return PingResult(
        sent=int(m.group(1)),
        received=int(m.group(2)),
        rtt_min_ms=float(rtt.group(1)) if rtt else None,
        rtt_avg_ms=float(rtt.group(2)) if rtt else None,
        rtt_max_ms=float(rtt.group(3)) if rtt else None,
        ttl=int(ttl.group(1)) if ttl else None,
    )


def ping(
    mesh: Mesh, src: str, dst: str, count: int = 3, interval: float = 0.2, wait: float = 1.0
) -> PingResult:
    """`count` echoes from node src to node dst's address; bounded by count and time."""
    argv = ["ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", f"{wait:g}",
            mesh.address(dst)]  # fmt: skip
    timeout = count * interval + wait + 5
    out = mesh.run(src, argv, capture_output=True, text=True, timeout=timeout)
    return parse_ping(out.stdout)


def ping_replies(text: str) -> list[tuple[int, float, float]]:
    """`ping -D` output -> [(icmp_seq, reply realtime seconds, rtt ms)] in output order,
    duplicates included."""
    return [(int(m.group(2)), float(m.group(1)), float(m.group(3))) for m in _REPLY.finditer(text)]


def ping_records(
    text: str, realtime_minus_monotonic: float, interval: float, t_start: float
) -> tuple[list[tuple[int, float]], list[tuple[int, float, float]]]:
    """`ping -D` output -> (sent [(seq, t_send)], received [(seq, t_send, t_reply)]) in
    monotonic seconds. An answered echo was sent at reply - rtt; an unanswered one's send
    time is interpolated between the nearest answered ones (extrapolated by `interval`
    at the edges, from `t_start` when nothing came back). Sequence numbers start at 1;
    the count sent is the summary's (else the highest sequence seen)."""
    received = [
        (seq, t - realtime_minus_monotonic - rtt / 1000.0, t - realtime_minus_monotonic)
        for seq, t, rtt in ping_replies(text)
    ]
    summary = parse_ping(text)
    count = summary.sent if _SUMMARY.search(text) else max((r[0] for r in received), default=0)
    known: dict[int, float] = {}
    for seq, ts, _ in received:
        known.setdefault(seq, ts)
    seqs = sorted(known)
    sent: list[tuple[int, float]] = []
    j = 0  # seqs[j] is the first known sequence >= seq
    for seq in range(1, count + 1):
        while j < len(seqs) and seqs[j] < seq:
            j += 1
        if j < len(seqs) and seqs[j] == seq:
            sent.append((seq, known[seq]))
            continue
        before = seqs[j - 1] if j > 0 else None
        after = seqs[j] if j < len(seqs) else None
        if before is not None and after is not None:
            frac = (seq - before) / (after - before)
            t = known[before] + frac * (known[after] - known[before])
        elif before is not None:
            t = known[before] + (seq - before) * interval
        elif after is not None:
            t = known[after] - (after - seq) * interval
        else:
            t = t_start + (seq - 1) * interval
        sent.append((seq, t))
    return sent, received
