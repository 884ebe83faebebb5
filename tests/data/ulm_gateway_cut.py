"""Write freifunk-ulm-gw104.json: the part of freifunk-ulm.json around gateway 104.

Test data, not used at run time. Keeps node 104 with every one of its 78 neighbours (so
the hub keeps its degree) and every node on a shortest path from 3 to 95 that avoids 104
(the detour the gateway-crash scenario needs), with the links among them and their link
qualities. Run: python3 tests/data/ulm_gateway_cut.py (rewrites the file next to it)."""

from __future__ import annotations

import json
import os
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
HUB, SRC, DST = "104", "3", "95"


def distances(adj: dict[str, set[str]], src: str, removed: str) -> dict[str, int]:
    dist = {src: 0}
    queue = [src]
    for x in queue:
        for y in sorted(adj[x]):
            if y not in dist and y != removed:
                dist[y] = dist[x] + 1
                queue.append(y)
    return dist


def cut(data: dict) -> dict:
    adj: dict[str, set[str]] = defaultdict(set)
    for link in data["links"]:
        a, b = str(link["source"]), str(link["target"])
        adj[a].add(b)
        adj[b].add(a)
    d_src, d_dst = distances(adj, SRC, HUB), distances(adj, DST, HUB)
    detour = {n for n in d_src if n in d_dst and d_src[n] + d_dst[n] == d_src[DST]}
    keep = {HUB} | adj[HUB] | detour
    nodes = [n for n in data["nodes"] if str(n["id"]) in keep]
    links = [
        link
        for link in data["links"]
        if str(link["source"]) in keep and str(link["target"]) in keep
    ]
    return {"nodes": nodes, "links": links}


if __name__ == "__main__":
    with open(os.path.join(HERE, "freifunk-ulm.json")) as f:
        out = cut(json.load(f))
    with open(os.path.join(HERE, "freifunk-ulm-gw104.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"{len(out['nodes'])} nodes, {len(out['links'])} links")
