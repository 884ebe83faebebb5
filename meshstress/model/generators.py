"""Topology generators: line, ring, star, full mesh, grids, trees, random geometric.

Nodes are named "n0", "n1", ... in order. Every generator takes the same keyword
options: `impairment` (applied to both directions of every link), `model`
("veth" or "segment" for every link), `prefix` and `routing`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

from meshstress.model.topology import (
    DEFAULT_PREFIX,
    LINK_MODELS,
    ROUTINGS,
    Impairment,
    Link,
    Node,
    Topology,
)

KINDS = ("line", "ring", "star", "full", "grid4", "grid8", "tree", "random")
# Beyond what one host can build (a namespace per node), and what a typo like
# "grid4 1000000 1000000" must not make the generator try for minutes or all memory.
MAX_NODES = 65534
MAX_LINKS = 250_000
MAX_RANDOM = 2000  # random_geometric compares (and may link) every pair of nodes


def _build(
    name: str,
    n: int,
    edges: Iterable[tuple[int, int]],
    *,
    impairment: Impairment | None,
    model: str,
    prefix: str,
    routing: str,
    pos: list[tuple[float, float]] | None = None,
) -> Topology:
    if model not in LINK_MODELS:
        raise ValueError(f"model must be one of {', '.join(LINK_MODELS)}, got {model!r}")
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {', '.join(ROUTINGS)}, got {routing!r}")
    imp = impairment or Impairment()
    nodes = [Node(name=f"n{i}", pos=pos[i] if pos else None) for i in range(n)]
    links = [Link(a=f"n{a}", b=f"n{b}", ab=imp, ba=imp, model=model) for a, b in edges]
    return Topology(name=name, nodes=nodes, links=links, prefix=prefix, routing=routing)


def _need(value: int, least: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if value < least:
        raise ValueError(f"{what} must be at least {least}, got {value}")


def _size(nodes: int, links: int, most: int = MAX_NODES) -> None:
    """Refuse a topology too big to build before making it."""
    if nodes > most:
        raise ValueError(f"{nodes} nodes is too many (at most {most})")
    if links > MAX_LINKS:
        raise ValueError(f"{links} links is too many (at most {MAX_LINKS})")


def line(
    n: int,
    *,
    impairment: Impairment | None = None,
    model: str = "veth",
    prefix: str = DEFAULT_PREFIX,
    routing: str = "none",
) -> Topology:
    """n0 - n1 - ... - n(n-1): n nodes, n-1 links, diameter n-1."""
    _need(n, 1, "n")
    _size(n, n - 1)
    return _build(
        f"line{n}",
        n,
        ((i, i + 1) for i in range(n - 1)),
        impairment=impairment,
        model=model,
        prefix=prefix,
        routing=routing,
    )


def ring(
    n: int,
    *,
    impairment: Impairment | None = None,
    model: str = "veth",
    prefix: str = DEFAULT_PREFIX,
    routing: str = "none",
) -> Topology:
    """A line closed into a circle: n >= 3 nodes, n links, diameter n//2."""
    _need(n, 3, "n")
    _size(n, n)
    edges = [(i, i + 1) for i in range(n - 1)] + [(n - 1, 0)]
    return _build(
        f"ring{n}", n, edges, impairment=impairment, model=model, prefix=prefix, routing=routing
    )


def star(
    n: int,
    *,
    impairment: Impairment | None = None,
    model: str = "veth",
    prefix: str = DEFAULT_PREFIX,
    routing: str = "none",
) -> Topology:
    """Hub n0 linked to n1..n(n-1): n nodes, n-1 links."""
    _need(n, 2, "n")
    _size(n, n - 1)
    return _build(
        f"star{n}",
        n,
        ((0, i) for i in range(1, n)),
        impairment=impairment,
        model=model,
        prefix=prefix,
        routing=routing,
    )


def full(
    n: int,
    *,
    impairment: Impairment | None = None,
    model: str = "veth",
    prefix: str = DEFAULT_PREFIX,
    routing: str = "none",
) -> Topology:
    """Every pair linked: n nodes, n(n-1)/2 links, diameter 1."""
    _need(n, 1, "n")
    _size(n, n * (n - 1) // 2)
    edges = ((a, b) for a in range(n) for b in range(a + 1, n))
    return _build(
        f"full{n}", n, edges, impairment=impairment, model=model, prefix=prefix, routing=routing
    )


def _grid_edges(w: int, h: int, diagonal: bool) -> list[tuple[int, int]]:
    edges: list[tuple[int, int]] = []
    for y in range(h):
        for x in range(w):
            i = y * w + x
            if x + 1 < w:
                edges.append((i, i + 1))
            if y + 1 < h:
                edges.append((i, i + w))
            if diagonal and y + 1 < h:
                if x + 1 < w:
                    edges.append((i, i + w + 1))
                if x > 0:
                    edges.append((i, i + w - 1))
    return edges


def grid4(
    w: int,
    h: int,
    *,
    impairment: Impairment | None = None,
    model: str = "veth",
    prefix: str = DEFAULT_PREFIX,
    routing: str = "none",
) -> Topology:
    """A w x h grid, each node linked to its 4 neighbours; row-major names (n = y*w + x).

    w*h nodes, h(w-1) + w(h-1) links; 10x10 -> 100 nodes, 180 links."""
    _need(w, 1, "width")
    _need(h, 1, "height")
    _size(w * h, h * (w - 1) + w * (h - 1))
    pos = [(float(i % w), float(i // w)) for i in range(w * h)]
    return _build(
        f"grid4-{w}x{h}",
        w * h,
        _grid_edges(w, h, False),
        impairment=impairment,
        model=model,
        prefix=prefix,
        routing=routing,
        pos=pos,
    )


def grid8(
    w: int,
    h: int,
    *,
    impairment: Impairment | None = None,
    model: str = "veth",
    prefix: str = DEFAULT_PREFIX,
    routing: str = "none",
) -> Topology:
    """A w x h grid with diagonals (8 neighbours): adds 2(w-1)(h-1) links to grid4."""
    _need(w, 1, "width")
    _need(h, 1, "height")
    _size(w * h, h * (w - 1) + w * (h - 1) + 2 * (w - 1) * (h - 1))
    pos = [(float(i % w), float(i // w)) for i in range(w * h)]
    return _build(
        f"grid8-{w}x{h}",
        w * h,
        _grid_edges(w, h, True),
        impairment=impairment,
        model=model,
        prefix=prefix,
        routing=routing,
        pos=pos,
    )


def tree(
    n: int,
    fanout: int = 2,
    *,
    impairment: Impairment | None = None,
    model: str = "veth",
    prefix: str = DEFAULT_PREFIX,
    routing: str = "none",
) -> Topology:
    """A complete `fanout`-ary tree of n nodes in breadth-first order.

    Node i's parent is (i-1)//fanout, so n0 is the root; n nodes, n-1 links.
    (Taking n rather than a depth lets any node count be asked for.)"""
    _need(n, 1, "n")
    _need(fanout, 1, "fanout")
    _size(n, n - 1)
    edges = (((i - 1) // fanout, i) for i in range(1, n))
    return _build(
        f"tree{n}-{fanout}",
        n,
        edges,
        impairment=impairment,
        model=model,
        prefix=prefix,
        routing=routing,
    )


def random_geometric(
    n: int,
    *,
    radius: float | None = None,
    degree: float = 4.0,
    seed: int = 0,
    impairment: Impairment | None = None,
    model: str = "veth",
    prefix: str = DEFAULT_PREFIX,
    routing: str = "none",
) -> Topology:
    """n nodes at seeded random points in the unit square, linked within `radius`.

    Without `radius`, it is chosen for a mean degree near `degree`
    (radius = sqrt(degree / (pi * n))). The result is always connected: each
    component other than the one holding n0 is joined to it by one extra link
    between the closest pair of nodes, components handled in order of their
    lowest node. The same (n, radius/degree, seed) gives the same topology.
    Positions are kept in Node.pos."""
    _need(n, 1, "n")
    _size(n, 0, MAX_RANDOM)
    if radius is None:
        if not degree > 0:
            raise ValueError(f"degree must be positive, got {degree}")
        radius = math.sqrt(degree / (math.pi * n))
    if not radius >= 0 or not math.isfinite(radius):
        raise ValueError(f"radius must be a finite number >= 0, got {radius}")
    rng = random.Random(seed)
    pts = [(rng.random(), rng.random()) for _ in range(n)]

    def dist2(i: int, j: int) -> float:
        return (pts[i][0] - pts[j][0]) ** 2 + (pts[i][1] - pts[j][1]) ** 2

    r2 = radius * radius
    edges = [(i, j) for i in range(n) for j in range(i + 1, n) if dist2(i, j) <= r2]
    _size(n, len(edges), MAX_RANDOM)

    # union-find to join the components deterministically
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in edges:
        parent[find(i)] = find(j)
    while True:
        root0 = find(0)
        main = [i for i in range(n) if find(i) == root0]
        rest = [i for i in range(n) if find(i) != root0]
        if not rest:
            break
        other = find(rest[0])
        comp = [i for i in rest if find(i) == other]
        _, i, j = min((dist2(i, j), i, j) for i in main for j in comp)
        edges.append((min(i, j), max(i, j)))
        parent[find(j)] = root0
    pos = [(round(x, 6), round(y, 6)) for x, y in pts]
    label = f"r{radius:.3g}" if radius is not None else ""
    return _build(
        f"random{n}-{label}-s{seed}",
        n,
        edges,
        impairment=impairment,
        model=model,
        prefix=prefix,
        routing=routing,
        pos=pos,
    )
