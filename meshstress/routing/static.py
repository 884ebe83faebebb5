"""Static routing: shortest paths computed once and installed through netlink."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

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
    out: dict[str, dict[str, str]] = {name: {} for name in order}
    for dst in order:
        dist = {dst: 0}
        queue = deque([dst])
        while queue:
            u = queue.popleft()
            for v in sorted(adj[u], key=order.__getitem__):
                if v not in dist:
                    dist[v] = dist[u] + 1
                    queue.append(v)
        for u, d in dist.items():
            if u == dst:
                continue
            closer = [v for v in adj[u] if dist.get(v) == d - 1]
            out[u][dst] = min(closer, key=order.__getitem__)
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

    def _routes(self, topo: Topology) -> dict[str, dict[str, str]]:
        if self._table is None or self._table[0] is not topo:
            self._table = (topo, shortest_path_routes(topo))
        return self._table[1]

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
        table = self._routes(topo)
        ipr = mesh.netlink(node)
        links = ipr.get_links()
        index = {link.get_attr("IFLA_IFNAME"): link["index"] for link in links}
        down = {link.get_attr("IFLA_IFNAME") for link in links if not link["flags"] & 1}
        count = 0
        for dst, next_hop in sorted(table.get(node, {}).items()):
            if next_hop == dst:
                continue  # a neighbour: the builder's host route already covers it
            ifname = facing[(node, next_hop)]
            if ifname in down:
                continue  # the kernel refuses a next hop on a down interface
            path = path_hops(table, node, dst)
            hops = len(path) - 1 if path else 0
            ipr.route(
                "replace",
                dst=f"{mesh.address(dst)}/32",
                gateway=mesh.address(next_hop),
                oif=index[ifname],
                proto=RT_PROTO_MESHSTRESS,
                priority=hops,
            )
            count += 1
        return count

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
