"""Convergence: wait until every node routes to every other, snapshots, flap counting.

`snapshot`/`wait_converged` observe a live mesh; `route_changes`, `hops_table` and
`missing_pairs` are pure and unit-tested."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshstress.routing.probe import ping_pairs

if TYPE_CHECKING:
    from meshstress.build import Mesh
    from meshstress.routing.base import Backend

# A reachability sweep pings every ordered pair up to this many nodes; above it, one
# source node pings every other node (replies cross the mesh back), bounded in count.
SWEEP_ALL_PAIRS_MAX = 12


@dataclass
class ConvergenceResult:
    seconds: float  # from the call to the moment tables were complete and the sweep passed
    converged: bool
    missing_pairs: list[tuple[str, str]] = field(default_factory=list)
    polls: int = 0
    sweep_pairs: int = 0
    tables_seconds: float | None = None  # when every table first listed every other node

    def __str__(self) -> str:
        if self.converged:
            tables = ""
            if self.tables_seconds is not None and self.seconds - self.tables_seconds > 0.05:
                tables = f" (tables complete at {self.tables_seconds:.2f} s)"
            return f"converged in {self.seconds:.2f} s{tables}"
        return (
            f"not converged after {self.seconds:.2f} s "
            f"({len(self.missing_pairs)} pairs missing, e.g. {self.missing_pairs[:3]})"
        )


@dataclass
class RouteSnapshot:
    t: float  # time.monotonic() when taken
    routes: dict[str, dict[str, tuple[str | None, int | None]]]  # node -> dst -> (nh, hops)

    def path(self, src: str, dst: str) -> list[str] | None:
        """The hop-by-hop path src..dst by following next hops; None on a gap or loop."""
        hops = [src]
        while hops[-1] != dst:
            entry = self.routes.get(hops[-1], {}).get(dst)
            if entry is None or entry[0] is None or entry[0] in hops:
                return None
            hops.append(entry[0])
        return hops


@dataclass
class Reroute:
    seconds: float | None  # from the cut until traffic crossed on a path avoiding it
    before: list[str] | None
    after: list[str] | None


def wait_reroute(
    mesh: Mesh,
    backend: Backend,
    src: str,
    dst: str,
    avoid: tuple[str, str],
    since: float,
    before: list[str] | None = None,
    timeout: float = 30.0,
    poll: float = 0.05,
) -> Reroute:
    """After the link `avoid` (a, b) was cut at time.monotonic() `since`: poll until the
    path src..dst no longer uses a->b and echoes cross both ways; how long that took."""
    after: list[str] | None = None
    while time.monotonic() - since < timeout:
        after = snapshot(mesh, backend).path(src, dst)
        if after and avoid not in zip(after, after[1:], strict=False):
            if not ping_pairs(mesh, [(src, dst), (dst, src)], timeout=0.3, tries=1):
                return Reroute(time.monotonic() - since, before, after)
        time.sleep(poll)
    return Reroute(None, before, after)


def record_routes(
    mesh: Mesh, backend: Backend, duration: float, interval: float = 0.5
) -> list[RouteSnapshot]:
    """Route snapshots every `interval` seconds for `duration` seconds (at least one)."""
    snaps = [snapshot(mesh, backend)]
    end = snaps[0].t + duration
    while True:
        wait = snaps[-1].t + interval - time.monotonic()
        if time.monotonic() + max(wait, 0) > end:
            return snaps
        if wait > 0:
            time.sleep(wait)
        snaps.append(snapshot(mesh, backend))


def hops_table(
    next_hops: Mapping[str, Mapping[str, str | None]],
) -> dict[str, dict[str, tuple[str | None, int | None]]]:
    """Add hop counts by following next hops: (next_hop, hops), hops None on a gap or loop."""
    out: dict[str, dict[str, tuple[str | None, int | None]]] = {}
    for node, dsts in next_hops.items():
        row: dict[str, tuple[str | None, int | None]] = {}
        for dst, nh in dsts.items():
            hops: int | None = None
            seen = {node}
            cur, count = nh, 1
            while cur is not None:
                if cur == dst:
                    hops = count
                    break
                if cur in seen:
                    break
                seen.add(cur)
                cur = next_hops.get(cur, {}).get(dst)
                count += 1
            row[dst] = (nh, hops)
        out[node] = row
    return out


def missing_pairs(
    nodes: Sequence[str], known: Mapping[str, set[str] | Mapping[str, object]]
) -> list[tuple[str, str]]:
    """Ordered pairs (a, b), a != b, where a's table lacks b."""
    return [(a, b) for a in nodes for b in nodes if a != b and b not in known.get(a, {})]


def route_changes(snapshots: Sequence[RouteSnapshot]) -> Counter[tuple[str, str]]:
    """Per (node, dst): how often the next hop changed between consecutive snapshots.

    A route appearing for the first time is not a change; losing it (next hop None or
    absent) and getting it back each count as one."""
    changes: Counter[tuple[str, str]] = Counter()
    seen: set[tuple[str, str]] = set()
    prev: dict[tuple[str, str], str | None] = {}
    for snap in snapshots:
        cur: dict[tuple[str, str], str | None] = {}
        for node, dsts in snap.routes.items():
            for dst, (nh, _hops) in dsts.items():
                cur[(node, dst)] = nh
        for key in set(prev) | set(cur):
            before, after = prev.get(key), cur.get(key)
            if before != after and key in seen:
                changes[key] += 1
        seen.update(k for k, v in cur.items() if v is not None)
        prev = cur
    return changes


def snapshot(mesh: Mesh, backend: Backend) -> RouteSnapshot:
    t = time.monotonic()
    next_hops = {
        node: {dst: r.next_hop for dst, r in backend.routes(mesh, node).items()}
        for node in mesh.nodes
    }
    return RouteSnapshot(t, hops_table(next_hops))


def sweep_pairs(nodes: Sequence[str], limit: int = SWEEP_ALL_PAIRS_MAX) -> list[tuple[str, str]]:
    if len(nodes) <= limit:
        return [(a, b) for a in nodes for b in nodes if a != b]
    src = nodes[0]
    return [(src, b) for b in nodes[1:]]


def wait_converged(
    mesh: Mesh,
    backend: Backend,
    timeout: float = 60.0,
    poll: float = 0.25,
    sweep: bool = True,
    sweep_timeout: float = 1.0,
) -> ConvergenceResult:
    """Poll until every node's table lists every other node (batman-adv: originators;
    others: routes), then confirm with a reachability sweep of ICMP echoes between our
    own nodes. Gives up after `timeout` seconds with converged=False and what is missing."""
    t0 = time.monotonic()
    nodes = mesh.nodes
    polls = 0
    missing: list[tuple[str, str]] = []
    pairs = sweep_pairs(nodes)
    tables_at: float | None = None
    while True:
        polls += 1
        known = {n: backend.known(mesh, n) for n in nodes}
        missing = missing_pairs(nodes, known)
        if not missing and tables_at is None:
            tables_at = time.monotonic() - t0
        if not missing and sweep:
            remaining = max(0.2, min(sweep_timeout, timeout - (time.monotonic() - t0)))
            missing = sorted(ping_pairs(mesh, pairs, timeout=remaining, tries=3))
        if not missing:
            return ConvergenceResult(time.monotonic() - t0, True, [], polls, len(pairs), tables_at)
        if time.monotonic() - t0 >= timeout:
            return ConvergenceResult(
                time.monotonic() - t0, False, missing, polls, len(pairs), tables_at
            )
        time.sleep(poll)
