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
