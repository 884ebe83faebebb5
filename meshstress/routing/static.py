"""Static routing: shortest paths computed once and installed through netlink."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from meshstress.routing.base import RT_PROTO_MESHSTRESS, Backend, ifindex_map

if TYPE_CHECKING:
    from meshstress.build import Mesh
    from meshstress.topology import Topology


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

    def start(self, mesh: Mesh, topo: Topology) -> None:
        table = shortest_path_routes(topo)
        facing = neighbour_interfaces(mesh)
        hops_cache: dict[tuple[str, str], int] = {}
        for node, dsts in table.items():
            ipr = mesh.netlink(node)
            index = ifindex_map(mesh, node)
            for dst, next_hop in sorted(dsts.items()):
                if next_hop == dst:
                    continue  # a neighbour: the builder's host route already covers it
                path = path_hops(table, node, dst)
                hops = len(path) - 1 if path else 0
                hops_cache[(node, dst)] = hops
                ipr.route(
                    "add",
                    dst=f"{mesh.address(dst)}/32",
                    gateway=mesh.address(next_hop),
                    oif=index[facing[(node, next_hop)]],
                    proto=RT_PROTO_MESHSTRESS,
                    priority=hops,
                )
        mesh.state.extra["static_routes"] = len(hops_cache)
        mesh.state.save()

    def stop(self, mesh: Mesh) -> None:
        """Remove the routes start() installed (proto 233); the neighbour routes stay."""
        owners = {mesh.address(n) for n in mesh.nodes}
        for node in mesh.nodes:
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
        mesh.state.extra.pop("static_routes", None)
        mesh.state.save()
