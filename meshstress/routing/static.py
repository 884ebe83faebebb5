"""Static routing: shortest paths computed once and installed through netlink."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from meshstress.build import rtnl
from meshstress.routing.base import RT_PROTO_MESHSTRESS, Backend

if TYPE_CHECKING:
    from meshstress.build import Mesh
    from meshstress.model.topology import Topology


def shortest_path_routes(topo: Topology) -> dict[str, dict[str, str]]:
    """{node: {dst: next_hop}} for every reachable dst != node, over topo.adjacency().

    Hop-count shortest paths. Ties are broken deterministically: among the neighbours
    one hop closer to dst, the one listed first in topo.nodes wins. Each node's choice
    moves strictly closer to dst, so following next hops always reaches dst."""
    adj = topo.adjacency()
    order = {name: i for i, name in enumerate(topo.node_names())}
    # neighbours in node order, sorted once (not once per destination)
    ordered = {u: sorted(adj[u], key=order.__getitem__) for u in order}
    out: dict[str, dict[str, str]] = {name: {} for name in order}
    for dst in order:
        dist = {dst: 0}
        queue = deque([dst])
        while queue:
            u = queue.popleft()
            du = dist[u] + 1
            for v in ordered[u]:
                if v not in dist:
                    dist[v] = du
                    queue.append(v)
        for u, d in dist.items():
            if u == dst:
                continue
            # the first neighbour in node order one hop closer
            out[u][dst] = next(v for v in ordered[u] if dist.get(v) == d - 1)
    return out


def path_hops(routes: dict[str, dict[str, str]], src: str, dst: str) -> list[str] | None:
    """The node sequence src..dst following next hops, or None on a gap or loop."""
    path = [src]
    while path[-1] != dst:
        nxt = routes.get(path[-1], {}).get(dst)
        if nxt is None or nxt in path:
            return None
        path.append(nxt)
    return path


def hop_counts(routes: dict[str, dict[str, str]]) -> dict[str, dict[str, int]]:
    """{node: {dst: hops}} for every route of `routes`: the length of path_hops(routes,
    node, dst), 0 where that finds a gap or a loop. Each path is walked once per
    destination (calling path_hops for every pair walks it again for each node on it)."""
    out: dict[str, dict[str, int]] = {node: {} for node in routes}
    dsts = {dst for row in routes.values() for dst in row}
    for dst in dsts:
        known: dict[str, int | None] = {dst: 0}
        for start, row in routes.items():
            if dst not in row:
                continue
            path, on_path = [start], {start}
            base: int | None
            while True:
                last = path[-1]
                if last in known:
                    base = known[last]
                    break
                nxt = routes.get(last, {}).get(dst)
                if nxt is None or nxt in on_path:
                    base = None
                    break
                path.append(nxt)
                on_path.add(nxt)
            for k, node in enumerate(reversed(path)):
                if node not in known:
                    known[node] = None if base is None else base + k
            out[start][dst] = known[start] or 0
    return out


def neighbour_interfaces(mesh: Mesh) -> dict[tuple[str, str], str]:
    """(node, neighbour) -> the node's interface facing that neighbour (first one wins)."""
    seg_members: dict[str, list[tuple[str, str]]] = {}
    out: dict[tuple[str, str], str] = {}
    for node, ifaces in mesh.state.interfaces.items():
        for i in ifaces:
            if i.get("segment"):
                seg_members.setdefault(i["segment"], []).append((node, i["ifname"]))
            elif i.get("peer"):
                out.setdefault((node, i["peer"]), i["ifname"])
    for members in seg_members.values():
        for node, ifname in members:
            for other, _ in members:
                if other != node:
                    out.setdefault((node, other), ifname)
    return out


class StaticBackend(Backend):
    """Hop-count shortest paths installed once (proto 233, priority = hops). Needs l3:
    the builder's neighbour host routes make the gateways reachable on-link."""

    name = "static"
    l3 = True

    def __init__(self, settings: dict[str, Any] | None = None, source: str = "topology") -> None:
        super().__init__(settings, source)
        self._table: tuple[Topology, dict[str, dict[str, str]]] | None = None
        self._hops: tuple[Topology, dict[str, dict[str, int]]] | None = None

    def _routes(self, topo: Topology) -> dict[str, dict[str, str]]:
        if self._table is None or self._table[0] is not topo:
            self._table = (topo, shortest_path_routes(topo))
        return self._table[1]

    def _hop_counts(self, topo: Topology) -> dict[str, dict[str, int]]:
        if self._hops is None or self._hops[0] is not topo:
            self._hops = (topo, hop_counts(self._routes(topo)))
        return self._hops[1]

    def start(self, mesh: Mesh, topo: Topology) -> None:
        facing = neighbour_interfaces(mesh)
        count = 0
        for node in mesh.nodes:
            count += self._install(mesh, topo, node, facing)
        mesh.state.extra["static_routes"] = count
        mesh.state.save()

    def start_node(self, mesh: Mesh, topo: Topology, node: str) -> None:
        """(Re)install the node's routes; those whose interface is down are skipped."""
        self._install(mesh, topo, node, neighbour_interfaces(mesh))

    def links_up(
        self, mesh: Mesh, topo: Topology, node: str, neighbour_routes: bool = True
    ) -> None:
        """The kernel flushed the routes over the downed interfaces: put them back."""
        super().links_up(mesh, topo, node, neighbour_routes)
        self.start_node(mesh, topo, node)

    def _install(
        self, mesh: Mesh, topo: Topology, node: str, facing: dict[tuple[str, str], str]
    ) -> int:
        """Replace the node's routes: one netlink buffer (meshstress.build.rtnl), the
        same requests pyroute2's route("replace", ...) sent one at a time."""
        table = self._routes(topo)
        hops = self._hop_counts(topo).get(node, {})
        sock = mesh.rtnl(node)
        links = rtnl.dump_links(sock)
        address = {n: a.split("/")[0] for n, a in mesh.state.node_addresses.items()}
        batch = rtnl.Batch()
        for dst, next_hop in sorted(table.get(node, {}).items()):
            if next_hop == dst:
                continue  # a neighbour: the builder's host route already covers it
            ifname = facing[(node, next_hop)]
            index, flags = links[ifname]
            if not flags & 1:
                continue  # the kernel refuses a next hop on a down interface
            msg = rtnl.route_msg(
                f"{address[dst]}/32",
                index,
                batch.seq(),
                gateway=address[next_hop],
                proto=RT_PROTO_MESHSTRESS,
                priority=hops.get(dst, 0),
                replace=True,
            )
            batch.add(msg, f"{node}: route to {dst} via {next_hop}")
        batch.send(sock)
        return len(batch)

    def stop_node(self, mesh: Mesh, node: str, kill: bool = True) -> None:
        """Remove the node's routes (proto 233); a crash downs its interfaces anyway."""
        self._delete_routes(mesh, node)

    def stop(self, mesh: Mesh) -> None:
        """Remove the routes start() installed (proto 233); the neighbour routes stay."""
        for node in mesh.nodes:
            self._delete_routes(mesh, node)
        mesh.state.extra.pop("static_routes", None)
        mesh.state.save()

    def _delete_routes(self, mesh: Mesh, node: str) -> None:
        owners = {mesh.address(n) for n in mesh.nodes}
        ipr = mesh.netlink(node)
        for msg in ipr.route("dump", family=2):
            if msg["proto"] == RT_PROTO_MESHSTRESS and msg.get_attr("RTA_DST") in owners:
                ipr.route(
                    "del",
                    dst=msg.get_attr("RTA_DST"),
                    dst_len=32,
                    gateway=msg.get_attr("RTA_GATEWAY"),
                    oif=msg.get_attr("RTA_OIF"),
                    priority=msg.get_attr("RTA_PRIORITY") or 0,
                    table=msg.get_attr("RTA_TABLE") or 254,
                )
