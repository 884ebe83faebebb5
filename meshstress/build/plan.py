"""The plan: every kernel object a topology needs, named with the run prefix. Pure.

A run id like "a1b2" gives the prefix "ms-a1b2-". Node N lives in namespace
"ms-a1b2-N"; a shared segment's bridge lives in its own hub namespace
"ms-a1b2-~S" (names cannot contain "~", so hubs never collide with nodes); a
link with model "segment" gets the hub "ms-a1b2-~~K" for link index K.
Interfaces inside a namespace are "ms-a1b2-iK" (node side) and "ms-a1b2-pK"
(bridge ports), K counting per namespace. One witness veth end in the host's own
namespace, "ms-a1b2-w", disappears only when the kernel has destroyed the last
namespace of the run: teardown waits for it, so "down" means gone.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import string
from dataclasses import asdict, dataclass, field
from typing import Any

from meshstress.model.names import node_problem
from meshstress.model.topology import Impairment, Topology

NS_PREFIX = "ms-"
RUN_ID_RE = re.compile(r"^[a-z0-9]{1,6}$")
# Any meshstress object: "ms-" + run id + "-" ...; `clean --all` sweeps exactly these.
OBJECT_RE = re.compile(r"^ms-([a-z0-9]{1,6})-")
IFNAMSIZ = 15


def new_run_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(4))


def run_prefix(run_id: str) -> str:
    return f"{NS_PREFIX}{run_id}-"


@dataclass(frozen=True)
class NsSpec:
    name: str  # namespace name, with the run prefix
    node: str | None  # topology node, or None for a segment hub
    segment: str | None = None


@dataclass(frozen=True)
class IfSpec:
    ns: str
    ifname: str
    peer_node: str | None = None  # for a point-to-point link: the node at the other end
    segment: str | None = None  # for a segment port: the segment name
    egress: Impairment = Impairment()  # what this interface's transmit side does


@dataclass(frozen=True)
class VethSpec:
    """One veth pair; `a` is created in its namespace, `b` as the peer."""

    a: IfSpec
    b: IfSpec
    master_a: str | None = None  # bridge (in a's namespace) to enslave `a` to
    link: int | None = None  # index into topology.links
    mtu: int | None = None


@dataclass(frozen=True)
class BridgeSpec:
    ns: str
    ifname: str
    segment: str


@dataclass(frozen=True)
class AddrSpec:
    ns: str
    ifname: str
    address: str  # "10.201.0.1/32"


@dataclass(frozen=True)
class RouteSpec:
    ns: str
    dst: str  # "10.201.0.2/32"
    ifname: str
    gateway: str | None = None


@dataclass
class Plan:
    run_id: str
    topology: str
    namespaces: list[NsSpec] = field(default_factory=list)
    bridges: list[BridgeSpec] = field(default_factory=list)
    veths: list[VethSpec] = field(default_factory=list)
    addresses: list[AddrSpec] = field(default_factory=list)
    routes: list[RouteSpec] = field(default_factory=list)
    node_addresses: dict[str, str] = field(default_factory=dict)  # node -> "10.201.0.1/16"
    node_ns: dict[str, str] = field(default_factory=dict)  # node -> namespace
    witness: str = ""  # host-side interface of the witness veth
    witness_ns: str = ""  # namespace holding the witness peer
    sysctls: dict[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return run_prefix(self.run_id)

    def interfaces(self, node: str) -> list[IfSpec]:
        """The mesh interfaces of a node, in creation order."""
        return self.interfaces_by_node()[node]

    def interfaces_by_node(self) -> dict[str, list[IfSpec]]:
        """{node: its mesh interfaces in creation order}, every node, in one pass over
        the veths (asking `interfaces` node by node would scan them once per node)."""
        node_of = {ns: node for node, ns in self.node_ns.items()}
        out: dict[str, list[IfSpec]] = {node: [] for node in self.node_ns}
        for v in self.veths:
            for end in (v.a, v.b):
                if end.ns in node_of:
                    out[node_of[end.ns]].append(end)
        for ends in out.values():
            ends.sort(key=lambda i: int(i.ifname.rsplit("i", 1)[-1]))
        return out

    def impaired(self) -> list[IfSpec]:
        """Node-side interfaces whose egress is not ideal: each gets a netem qdisc."""
        nodes = set(self.node_ns.values())
        ends = [end for v in self.veths for end in (v.a, v.b)]
        return [e for e in ends if e.ns in nodes and not e.egress.is_ideal()]

    def ifindexes(self) -> dict[tuple[str, str], int]:
        """{(namespace, ifname): ifindex} for every bridge and veth end the plan makes.

        The builder gives each interface this index when it creates it, so it can
        address, route and enslave without asking the kernel first: in a new namespace
        lo is 1, then the plan's interfaces count up in creation order (bridges, then
        each veth pair's a and b end), which is also what the kernel would pick."""
        out: dict[tuple[str, str], int] = {}
        nxt: dict[str, int] = {}

        def take(ns: str, ifname: str) -> None:
            k = nxt.get(ns, 2)
            nxt[ns] = k + 1
            out[(ns, ifname)] = k

        for br in self.bridges:
            take(br.ns, br.ifname)
        for v in self.veths:
            take(v.a.ns, v.a.ifname)
            take(v.b.ns, v.b.ifname)
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# Sysctls set in every node namespace right after it is made.
NODE_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    "net.ipv6.conf.default.accept_dad": "0",
    "net.ipv6.conf.all.accept_dad": "0",
}


class _Counter:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def next(self, ns: str) -> int:
        k = self.counts.get(ns, 0)
        self.counts[ns] = k + 1
        return k


def make_plan(
    topo: Topology, run_id: str, *, l3: bool = True, mtu: int | None = None, impair: bool = True
) -> Plan:
    """Everything to create for `topo`. With l3, each mesh interface carries the node's
    address (/32) and a host route to each direct neighbour: neighbours reach each other
    with no routing daemon. Routing backends may ask for l3=False and address nodes
    themselves (batman-adv puts the address on bat0). With impair=False every link is
    ideal (the topology's loss, delay, jitter and rate are left out)."""
    if not RUN_ID_RE.match(run_id):
        raise ValueError(f"run id {run_id!r}: use 1-6 lowercase letters or digits")
    pre = run_prefix(run_id)
    # Node and segment names become namespace names (files under /run/netns): a topology
    # built in Python, not read from a file, is checked here too.
    for what, name in [("node", n.name) for n in topo.nodes] + [
        ("segment", seg.name) for seg in topo.segments
    ]:
        why = node_problem(name)
        if why is not None:
            raise ValueError(f"{what} name {name!r} {why}")
    if not impair:
        topo = _ideal(topo)
    plan = Plan(run_id=run_id, topology=topo.name, sysctls=dict(NODE_SYSCTLS))
    addrs = topo.addresses()
    for node in topo.nodes:
        ns = pre + node.name
        plan.namespaces.append(NsSpec(ns, node.name))
        plan.node_ns[node.name] = ns
        plan.node_addresses[node.name] = str(addrs[node.name])
    counter = _Counter()

    def node_if(node: str, **kw: Any) -> IfSpec:
        ns = plan.node_ns[node]
        return IfSpec(ns=ns, ifname=f"{pre}i{counter.next(ns)}", **kw)

    def hub(segment: str) -> str:
        ns = f"{pre}~{segment}"
        plan.namespaces.append(NsSpec(ns, None, segment))
        br = f"{pre}br"
        plan.bridges.append(BridgeSpec(ns, br, segment))
        return ns

    def port(hub_ns: str, segment: str) -> IfSpec:
        return IfSpec(ns=hub_ns, ifname=f"{pre}p{counter.next(hub_ns)}", segment=segment)

    for index, link in enumerate(topo.links):
        if link.model == "segment":
            lseg = f"~{index}"  # segment names cannot contain "~": no clash
            hub_ns = hub(lseg)
            for me, other, egress in ((link.a, link.b, link.ab), (link.b, link.a, link.ba)):
                plan.veths.append(
                    VethSpec(
                        a=port(hub_ns, lseg),
                        b=node_if(me, peer_node=other, segment=lseg, egress=egress),
                        master_a=f"{pre}br",
                        link=index,
                        mtu=mtu,
                    )
                )
        else:
            plan.veths.append(
                VethSpec(
                    a=node_if(link.a, peer_node=link.b, egress=link.ab),
                    b=node_if(link.b, peer_node=link.a, egress=link.ba),
                    link=index,
                    mtu=mtu,
                )
            )
    for seg in topo.segments:
        hub_ns = hub(seg.name)
        for member in seg.members:
            plan.veths.append(
                VethSpec(
                    a=port(hub_ns, seg.name),
                    b=node_if(member, segment=seg.name, egress=seg.egress),
                    master_a=f"{pre}br",
                    mtu=mtu,
                )
            )
    if l3:
        _plan_l3(plan, topo)
    if topo.nodes:
        plan.witness = f"{pre}w"
        plan.witness_ns = plan.node_ns[topo.nodes[-1].name]
    for spec in _all_ifnames(plan):
        if len(spec) > IFNAMSIZ:
            raise ValueError(f"interface name {spec!r} is longer than {IFNAMSIZ} characters")
    return plan


def _all_ifnames(plan: Plan) -> list[str]:
    names = [b.ifname for b in plan.bridges]
    for v in plan.veths:
        names += [v.a.ifname, v.b.ifname]
    if plan.witness:
        names.append(plan.witness)
    return names


def _plan_l3(plan: Plan, topo: Topology) -> None:
    host = {n: str(ipaddress.IPv4Interface(a).ip) for n, a in plan.node_addresses.items()}
    ns_node = {ns: n for n, ns in plan.node_ns.items()}
    seg_members: dict[str, list[tuple[str, str]]] = {}
    for v in plan.veths:
        for end in (v.a, v.b):
            node = ns_node.get(end.ns)
            if node is None:
                continue
            plan.addresses.append(AddrSpec(end.ns, end.ifname, f"{host[node]}/32"))
            if end.peer_node is not None and end.segment is None:
                plan.routes.append(RouteSpec(end.ns, f"{host[end.peer_node]}/32", end.ifname))
            elif end.segment is not None:
                seg_members.setdefault(end.segment, []).append((node, end.ifname))
    for members in seg_members.values():
        for node, ifname in members:
            for other, _ in members:
                if other != node:
                    plan.routes.append(RouteSpec(plan.node_ns[node], f"{host[other]}/32", ifname))
    # A pair joined twice (a link and a segment) keeps its first route only.
    seen: set[tuple[str, str]] = set()
    unique = []
    for r in plan.routes:
        if (r.ns, r.dst) not in seen:
            seen.add((r.ns, r.dst))
            unique.append(r)
    plan.routes = unique


def _ideal(topo: Topology) -> Topology:
    import dataclasses

    ideal = Impairment()
    links = [dataclasses.replace(link, ab=ideal, ba=ideal) for link in topo.links]
    segments = [dataclasses.replace(seg, egress=ideal) for seg in topo.segments]
    return dataclasses.replace(topo, links=links, segments=segments)
