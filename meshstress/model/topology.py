"""The topology model: nodes, point-to-point links and shared-medium segments.

Pure Python. Values are already parsed into SI units (seconds, fractions, bits/s);
parsing and validation of files live in meshstress.model.topofile, generators in
meshstress.model.generators.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

LINK_MODELS = ("veth", "segment")
ROUTINGS = ("none", "batman-adv", "babeld", "batmand", "static")
DEFAULT_PREFIX = "10.201.0.0/16"
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,14}")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a node (or segment) name, or None if it can.

    Allowed: 1-15 characters of [A-Za-z0-9_-], not starting with '-'."""
    if not name:
        return "is empty"
    if len(name) > 15:
        return f"is {len(name)} characters long (at most 15)"
    if name.startswith("-"):
        return "must not start with '-'"
    if not NAME_RE.fullmatch(name):
        return "may only contain letters, digits, '_' and '-'"
    return None


@dataclass(frozen=True)
class GilbertElliott:
    """netem's Gilbert-Elliott loss model (`loss gemodel p r 1-h 1-k`): a two-state
    Markov chain over packets. Each packet, the good state turns bad with probability
    `p`, the bad state turns good with probability `r`; a packet is lost with
    probability `bad_loss` (1-h) in the bad state and `good_loss` (1-k) in the good one."""

    p: float  # good -> bad, per packet
    r: float  # bad -> good, per packet
    bad_loss: float = 1.0  # 1-h
    good_loss: float = 0.0  # 1-k

    def mean_loss(self) -> float:
        """The long-run fraction of packets lost (stationary P(bad) = p / (p + r))."""
        if self.p + self.r == 0:
            return self.good_loss
        bad = self.p / (self.p + self.r)
        return bad * self.bad_loss + (1 - bad) * self.good_loss

    def mean_burst(self) -> float:
        """Mean run of consecutive packets handled in the bad state (1 / r)."""
        return math.inf if self.r == 0 else 1.0 / self.r


@dataclass(frozen=True)
class Impairment:
    """What one direction of a link (or a segment member's egress) does to packets.

    Every default means "off". Loss is either independent (`loss`), bursty in the
    friendly form (`loss` with `loss_burst`, the simple Gilbert model) or given as a
    full Gilbert-Elliott model (`gemodel`, then `loss` is 0)."""

    loss: float = 0.0  # fraction 0..1 (the long-run loss when loss_burst is set)
    delay: float = 0.0  # seconds
    jitter: float = 0.0  # seconds
    rate: int | None = None  # bits per second; None = unlimited
    loss_burst: float | None = None  # mean lost-burst length in packets (>= 1)
    gemodel: GilbertElliott | None = None
    duplicate: float = 0.0  # fraction 0..1
    corrupt: float = 0.0  # fraction 0..1 (one bit flipped)
    reorder: float = 0.0  # fraction 0..1 sent at once, ahead of delayed ones
    reorder_gap: int | None = None  # netem's gap: reorder candidates are every Nth packet
    queue: int | None = None  # queue limit in packets; None = derived from rate and delay

    def is_ideal(self) -> bool:
        return (
            self.loss == 0
            and self.gemodel is None
            and self.delay == 0
            and self.jitter == 0
            and self.rate is None
            and self.duplicate == 0
            and self.corrupt == 0
            and self.reorder == 0
        )

    def loss_model(self) -> GilbertElliott | None:
        """The Gilbert-Elliott model netem gets, or None for independent loss."""
        if self.gemodel is not None:
            return self.gemodel
        if self.loss_burst is not None and self.loss > 0:
            return simple_gilbert(self.loss, self.loss_burst)
        return None


def simple_gilbert(loss: float, burst: float) -> GilbertElliott:
    """The simple Gilbert model with long-run loss `loss` and mean burst `burst` packets:
    every packet in the bad state is lost (1-h = 100%), none in the good one (1-k = 0),
    so a burst lasts 1/r packets and P(bad) = p/(p+r) = loss, i.e.
    r = 1/burst and p = loss * r / (1 - loss) = loss / (burst * (1 - loss)).
    Raises ValueError when no such chain exists (p would exceed 1)."""
    if not 0 < loss < 1:
        raise ValueError(f"bursty loss needs a loss between 0% and 100%, got {loss!r}")
    if not (burst >= 1 and math.isfinite(burst)):
        raise ValueError(f"a mean burst is at least 1 packet, got {burst!r}")
    r = 1.0 / burst
    p = loss * r / (1.0 - loss)
    if p > 1:
        top = burst / (burst + 1)
        raise ValueError(
            f"a loss of {loss * 100:g}% in bursts of {burst:g} packets is impossible "
            f"(at most {top * 100:g}% for that burst length)"
        )
    return GilbertElliott(p=p, r=r)


@dataclass
class Node:
    name: str  # usable as an interface-name fragment: [A-Za-z0-9_-], 1..15 chars
    label: str | None = None  # a human name, e.g. meshnet-lab's node name
    settings: dict[str, Any] = field(default_factory=dict)  # per-node routing etc.
    pos: tuple[float, float] | None = None


@dataclass
class Link:
    """A point-to-point link a<->b; `ab` impairs a->b, `ba` impairs b->a."""

    a: str
    b: str
    ab: Impairment = Impairment()
    ba: Impairment = Impairment()
    model: str = "veth"  # "veth" or "segment" (a two-member bridge)
    kind: str | None = None  # free label (meshnet-lab "type": wifi, vpn, other)


@dataclass
class Segment:
    """A shared medium: one transmission by a member reaches every other member."""

    name: str
    members: list[str]
    egress: Impairment = Impairment()  # applied at each member's transmit side


@dataclass
class Topology:
    name: str
    nodes: list[Node]
    links: list[Link] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    prefix: str = DEFAULT_PREFIX  # node addresses are taken from here, in node order
    routing: str = "none"
    routing_settings: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"  # the file it came from, for messages

    # --- derived views -------------------------------------------------------

    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def adjacency(self) -> dict[str, set[str]]:
        """Who hears whom directly: link endpoints and every pair within a segment."""
        adj: dict[str, set[str]] = {n.name: set() for n in self.nodes}
        for link in self.links:
            adj[link.a].add(link.b)
            adj[link.b].add(link.a)
        for seg in self.segments:
            for m in seg.members:
                adj[m].update(x for x in seg.members if x != m)
        return adj

    def degree(self) -> dict[str, int]:
        return {name: len(peers) for name, peers in self.adjacency().items()}

    def hops_from(self, source: str) -> dict[str, int]:
        """Breadth-first hop counts from `source` to every reachable node."""
        adj = self.adjacency()
        dist = {source: 0}
        queue = deque([source])
        while queue:
            u = queue.popleft()
            for v in adj[u]:
                if v not in dist:
                    dist[v] = dist[u] + 1
                    queue.append(v)
        return dist

    def is_connected(self) -> bool:
        if not self.nodes:
            return True
        return len(self.hops_from(self.nodes[0].name)) == len(self.nodes)

    def diameter(self) -> int | None:
        """Longest shortest path in hops; None if the graph is not connected."""
        best = 0
        for n in self.nodes:
            dist = self.hops_from(n.name)
            if len(dist) != len(self.nodes):
                return None
            best = max(best, max(dist.values()))
        return best

    def addresses(self) -> dict[str, ipaddress.IPv4Interface]:
        """Each node's address: the prefix's hosts in node order (.1, .2, ...)."""
        net = ipaddress.IPv4Network(self.prefix, strict=False)
        hosts = net.hosts()
        out: dict[str, ipaddress.IPv4Interface] = {}
        for node in self.nodes:
            ip = next(hosts)
            out[node.name] = ipaddress.IPv4Interface(f"{ip}/{net.prefixlen}")
        return out
