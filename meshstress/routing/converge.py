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
    from meshstress.routing.base import Backend, RouteReader

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


class RouteSnapshot:
    """Every node's next hop to every other node at time t (time.monotonic()).

    Built from next hops (`next_hops`: node -> dst -> next hop or None); `routes` adds
    the hop counts (node -> dst -> (next_hop, hops)), computed on first use only. Rows
    may be shared with other snapshots (a reader reuses an unchanged node's row): treat
    them as read-only."""

    __slots__ = ("t", "next_hops", "_routes")

    def __init__(
        self,
        t: float,
        routes: dict[str, dict[str, tuple[str | None, int | None]]] | None = None,
        *,
        next_hops: dict[str, dict[str, str | None]] | None = None,
    ) -> None:
        if (routes is None) == (next_hops is None):
            raise TypeError("RouteSnapshot takes routes or next_hops")
        self.t = t
        self._routes = routes
        if next_hops is None:
            assert routes is not None
            next_hops = {n: {d: e[0] for d, e in row.items()} for n, row in routes.items()}
        self.next_hops = next_hops

    @property
    def routes(self) -> dict[str, dict[str, tuple[str | None, int | None]]]:
        if self._routes is None:
            self._routes = hops_table(self.next_hops)
        return self._routes

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RouteSnapshot):
            return NotImplemented
        return self.t == other.t and self.routes == other.routes

    def __repr__(self) -> str:
        return f"RouteSnapshot(t={self.t}, nodes={len(self.next_hops)})"

    def path(self, src: str, dst: str) -> list[str] | None:
        """The hop-by-hop path src..dst by following next hops; None on a gap or loop."""
        hops = [src]
        while hops[-1] != dst:
            nh = self.next_hops.get(hops[-1], {}).get(dst)
            if nh is None or nh in hops:
                return None
            hops.append(nh)
        return hops

    def reachable_pairs(self) -> int:
        """How many ordered pairs (a, b), a != b, of the snapshot's nodes have a path
        (path(a, b) is not None): per destination, each node's chain is followed once."""
        nodes = list(self.next_hops)
        total = 0
        for dst in nodes:
            status: dict[str, bool] = {dst: True}
            for a in nodes:
                if a in status:
                    continue
                chain = [a]
                on_chain = {a}
                ok = False
                cur = a
                while True:
                    nh = self.next_hops.get(cur, {}).get(dst)
                    if nh is None or nh in on_chain:
                        break
                    if nh in status:
                        ok = status[nh]
                        break
                    chain.append(nh)
                    on_chain.add(nh)
                    cur = nh
                for c in chain:
                    status[c] = ok
            total += sum(1 for a in nodes if a != dst and status[a])
        return total


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
    reader = open_reader(mesh, backend)
    try:
        while time.monotonic() - since < timeout:
            after = snapshot(mesh, backend, reader).path(src, dst)
            if after and avoid not in zip(after, after[1:], strict=False):
                if not ping_pairs(mesh, [(src, dst), (dst, src)], timeout=0.3, tries=1):
                    return Reroute(time.monotonic() - since, before, after)
            time.sleep(poll)
    finally:
        reader.close()
    return Reroute(None, before, after)


def record_routes(
    mesh: Mesh, backend: Backend, duration: float, interval: float = 0.5
) -> list[RouteSnapshot]:
    """Route snapshots every `interval` seconds for `duration` seconds (at least one)."""
    reader = open_reader(mesh, backend)
    try:
        snaps = [snapshot(mesh, backend, reader)]
        end = snaps[0].t + duration
        while True:
            wait = snaps[-1].t + interval - time.monotonic()
            if time.monotonic() + max(wait, 0) > end:
                return snaps
            if wait > 0:
                time.sleep(wait)
            snaps.append(snapshot(mesh, backend, reader))
    finally:
        reader.close()


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
    prev: dict[str, dict[str, str | None]] = {}
    for snap in snapshots:
        cur = snap.next_hops
        for node in prev.keys() | cur.keys():
            before, after = prev.get(node, {}), cur.get(node, {})
            if before is after:  # a reader's unchanged row: nothing to compare
                continue
            for dst in before.keys() | after.keys():
                if before.get(dst) != after.get(dst) and (node, dst) in seen:
                    changes[(node, dst)] += 1
            seen.update((node, d) for d, v in after.items() if v is not None)
        prev = cur
    return changes


def open_reader(mesh: Mesh, backend: Backend) -> RouteReader:
    """backend.route_reader(mesh); for an object with only routes(), a PerNodeReader."""
    make = getattr(backend, "route_reader", None)
    if make is not None:
        return make(mesh)
    from meshstress.routing.base import PerNodeReader

    return PerNodeReader(mesh, backend)


def snapshot(mesh: Mesh, backend: Backend, reader: RouteReader | None = None) -> RouteSnapshot:
    """Every node's next hops now. With a `reader` (backend.route_reader(mesh), kept open
    between snapshots) one dump per namespace and no work for unchanged tables; without,
    a reader is opened and closed for this snapshot."""
    if reader is None:
        reader = open_reader(mesh, backend)
        try:
            return snapshot(mesh, backend, reader)
        finally:
            reader.close()
    t = time.monotonic()
    return RouteSnapshot(t, next_hops=reader.next_hops())


def snapshot_per_node(mesh: Mesh, backend: Backend) -> RouteSnapshot:
    """The reference algorithm: backend.routes() node after node (a netlink socket set
    up per dump), hop counts for every pair at once. Slow on big meshes: compare with it."""
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
