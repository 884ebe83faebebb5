"""The Backend interface shared by every routing backend, and helpers they share."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import struct
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import psutil

from meshstress.build import netns, stop_processes
from meshstress.build import state as state_mod
from meshstress.routing import settings as st
from meshstress.routing.rtdump import (
    DEFAULT_RULES_TABLES,
    FR_ACT_TO_TBL,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    KRoute,
    KRule,
    TableDumper,
    ipv4_routes,
    ipv4_rules,
    iter_payloads,
    parse_route,
    parse_rule,
)

if TYPE_CHECKING:
    from meshstress.build import Mesh
    from meshstress.model.topology import Topology

# pyroute2 adds routes as proto static (4) by default, the builder's included; our
# static backend marks its routes with a protocol number nobody else uses.
RT_PROTO_MESHSTRESS = 233
RTN_UNICAST = 1
MAIN_TABLE = 254
LOCAL_TABLE = 255


class Route(NamedTuple):
    """One node's route to one destination node."""

    next_hop: str | None  # the neighbour node packets go to (== dst when direct); None unknown
    metric: float | None = None  # backend's metric: hops (static), babel metric, tq, ...


class Backend:
    """A routing backend. Subclasses set name, l3, mtu, FIELDS and implement start().

    l3: whether make_plan should put the node address (/32) and neighbour host routes
        on every mesh interface. Backends with l3=False address the nodes themselves.
    mtu: the veth MTU the backend needs (None: the kernel default).
    """

    name = "none"
    l3 = True
    mtu: int | None = None
    role = ""  # ProcessRecord.role of this backend's processes ("" = none)
    FIELDS: tuple[st.Field, ...] = ()

    def __init__(self, settings: dict[str, Any] | None = None, source: str = "topology") -> None:
        self.source = source
        self.settings = st.validate(self.FIELDS, settings, backend=self.name, source=source)
        self._cfg_cache: tuple[Topology, dict[str, dict[str, Any]]] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.settings}>"

    # --- settings --------------------------------------------------------------

    def node_settings(self, topo: Topology) -> dict[str, dict[str, Any]]:
        """Each node's effective settings: the topology's, overridden by node.settings.routing.

        Raises InputError naming nodes.<name>.routing.<field>."""
        out = {}
        for node in topo.nodes:
            out[node.name] = st.validate(
                self.FIELDS,
                node.settings.get("routing"),
                backend=self.name,
                source=self.source if self.source != "topology" else topo.source,
                prefix=f"nodes.{node.name}.routing",
                node=True,
                base=self.settings,
            )
        return out

    def node_config(self, topo: Topology, node: str) -> dict[str, Any]:
        """node_settings(topo)[node], computed once per topology object."""
        if self._cfg_cache is None or self._cfg_cache[0] is not topo:
            self._cfg_cache = (topo, self.node_settings(topo))
        return self._cfg_cache[1][node]

    # --- capability, lifecycle ---------------------------------------------------

    def missing(self) -> str | None:
        """What the host lacks to run this backend (a sentence with the remedy), or None."""
        return None

    def start(self, mesh: Mesh, topo: Topology) -> None:
        """Configure routing on a freshly applied mesh; record every process started."""
        for node in mesh.nodes:
            self.start_node(mesh, topo, node)

    def start_node(self, mesh: Mesh, topo: Topology, node: str) -> None:
        """Start routing on one node (at start, or again after stop_node): a daemon gets
        a new recorded PID. The node's mesh interfaces are expected to be up."""

    def stop_node(self, mesh: Mesh, node: str, kill: bool = True) -> None:
        """Stop routing on one node. kill=True is a crash: daemons get SIGKILL (no
        goodbye); kill=False stops them with SIGTERM. Interfaces are left as they are
        (the caller downs them first for a crash). Recorded processes are forgotten."""
        if not self.role:
            return
        mine = [p for p in mesh.state.processes if p.role == self.role and p.node == node]
        if kill:
            kill_processes(mine)
        else:
            stop_processes(mine)
        mesh.state.processes = [p for p in mesh.state.processes if p not in mine]
        mesh.state.save()

    def links_up(
        self, mesh: Mesh, topo: Topology, node: str, neighbour_routes: bool = True
    ) -> None:
        """Some of node's mesh interfaces came back up: put back what the kernel flushed
        when they went down. Here: the builder's neighbour host routes (l3 backends);
        neighbour_routes=False when the caller put them back already (the event runner
        sends them with the link changes, in one netlink buffer)."""
        if self.l3 and neighbour_routes:
            restore_neighbour_routes(mesh, node)

    def stop(self, mesh: Mesh) -> None:
        """Stop this backend's recorded processes by PID and forget them."""
        if not self.role:
            return
        mine = [p for p in mesh.state.processes if p.role == self.role]
        stop_processes(mine)
        mesh.state.processes = [p for p in mesh.state.processes if p.role != self.role]
        mesh.state.save()

    # --- observation -----------------------------------------------------------

    def routes(self, mesh: Mesh, node: str) -> dict[str, Route]:
        """node's routes to the other nodes: {dst_node: Route(next_hop_node, metric)}."""
        return kernel_routes(mesh, node)

    def known(self, mesh: Mesh, node: str) -> set[str]:
        """The nodes `node` has a route (or originator entry) for: convergence's first test."""
        return set(self.routes(mesh, node))

    def route_reader(self, mesh: Mesh) -> RouteReader:
        """What takes repeated route snapshots of the whole mesh: here one kernel table
        dump per namespace over sockets kept open (KernelRouteReader). Close it before
        the mesh is torn down."""
        if type(self).routes is not Backend.routes:
            return PerNodeReader(mesh, self)
        return KernelRouteReader(mesh)


class RouteReader:
    """Every node's next hop to every other node, read again on each call."""

    def next_hops(self) -> dict[str, dict[str, str | None]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the reader holds open."""


class PerNodeReader(RouteReader):
    """backend.routes() for one node after another (a backend with its own tables)."""

    def __init__(self, mesh: Mesh, backend: Backend) -> None:
        self.mesh, self.backend = mesh, backend

    def next_hops(self) -> dict[str, dict[str, str | None]]:
        return {
            node: {dst: r.next_hop for dst, r in self.backend.routes(self.mesh, node).items()}
            for node in self.mesh.nodes
        }


_MISSING: Any = object()
_NLHDR = struct.Struct("=IHxxI")  # nlmsghdr: length, type, (flags), sequence


class SnapshotCost(NamedTuple):
    """What one KernelRouteReader.next_hops() cost: wall seconds in all, then the dumps'
    wall and CPU seconds (the calling thread's CPU: the kernel fills a dump in the
    thread that reads it) and those of reading them (comparing, parsing, selecting);
    namespaces dumped (the others sent no notification), changed (dump bytes not equal
    to the previous ones: parsed and selected again), and in all."""

    seconds: float
    dump_s: float
    dump_cpu_s: float
    process_s: float
    process_cpu_s: float
    dumped: int
    changed: int
    nodes: int


class KernelRouteReader(RouteReader):
    """Every node's kernel routes as its policy rules pick them (select_routes), from at
    most one route and one rule dump per namespace over sockets opened once
    (TableDumper): with `watch`, only namespaces that sent a route, rule, link or address
    notification since their last dump are dumped again.

    A namespace whose dump bytes equal the previous dump's gets the previous row back,
    the same dict object (callers must not change rows): nothing is parsed or selected
    for it. A changed namespace is read in one pass (_row), with a cache of the route
    messages seen before. `cost` says what the last next_hops() cost."""

    CACHE_MAX = 1 << 19

    def __init__(self, mesh: Mesh, workers: int = 1, watch: bool = True) -> None:
        self.nodes = mesh.nodes
        self.owners = addr_to_node(mesh)
        self.me = {n: mesh.address(n) for n in self.nodes}
        paths = {n: netns.path(mesh.ns(n)) for n in self.nodes}
        self.dumper = TableDumper(paths, workers, watch=watch)
        self._last: dict[str, tuple[bytes, bytes, dict[str, str | None]]] = {}
        self._parsed: dict[bytes, Any] = {}  # route message -> _entry() of it
        self._orders: dict[bytes, list[int] | None] = {}  # rule dump -> _order() of it
        self.selected = 0  # namespaces parsed and selected (their tables changed)
        self.reused = 0  # namespaces whose tables had not changed
        self.cost: SnapshotCost | None = None  # what the last next_hops() cost

    def next_hops(self) -> dict[str, dict[str, str | None]]:
        t0, c0 = time.perf_counter(), time.thread_time()
        raw = self.dumper.dump(self.nodes)
        t1, c1 = time.perf_counter(), time.thread_time()
        out: dict[str, dict[str, str | None]] = {}
        changed = 0
        for node, (raw_routes, raw_rules) in raw.items():
            last = self._last.get(node)
            if last is not None and last[0] == raw_routes and last[1] == raw_rules:
                out[node] = last[2]
                self.reused += 1
                continue
            changed += 1
            row = self._row(node, raw_routes, raw_rules)
            self._last[node] = (raw_routes, raw_rules, row)
            out[node] = row
            self.selected += 1
        t2, c2 = time.perf_counter(), time.thread_time()
        self.cost = SnapshotCost(
            t2 - t0, t1 - t0, c1 - c0, t2 - t1, c2 - c1,
            getattr(self.dumper, "dumped", len(raw)), changed, len(raw),
        )  # fmt: skip
        return out

    def _order(self, raw_rules: bytes) -> list[int] | None:
        """The tables a lookup walks, in order, from a rule dump (select_routes' order);
        None when a rule selects by destination (then select_routes decides)."""
        got = self._orders.get(raw_rules, _MISSING)
        if got is _MISSING:
            rules = sorted(
                (parse_rule(p) for p in iter_payloads(raw_rules, RTM_NEWRULE, 2)),
                key=lambda r: r.priority,
            )
            lookups = [
                rule for rule in rules
                if rule.action == FR_ACT_TO_TBL and not rule.selective and rule.table != LOCAL_TABLE
            ]  # fmt: skip
            if not rules:
                got = [t for _prio, t in DEFAULT_RULES_TABLES if t != LOCAL_TABLE]
            elif any(rule.dst for rule in lookups):
                got = None
            else:
                got = [rule.table for rule in lookups]
            if len(self._orders) > 4 * len(self.nodes) + 64:
                self._orders.clear()
            self._orders[raw_rules] = got
        return got

    def _entry(self, payload: bytes) -> tuple[str, int, int, int, str | None] | None:
        """What a route message means for selection, namespace aside: (destination node,
        table, priority, type, next hop node), or None for a route select_routes never
        counts (not a /32, not to a node)."""
        r = parse_route(payload)
        if r.dst_len != 32 or r.dst is None:
            return None
        dst_node = self.owners.get(r.dst)
        if dst_node is None:
            return None
        nh = self.owners.get(r.gateway) if r.gateway is not None else dst_node
        return (dst_node, r.table, r.priority, r.type, nh)

    def _row(self, node: str, raw_routes: bytes, raw_rules: bytes) -> dict[str, str | None]:
        """node's next hops from its dumps, as select_routes picks them: the route
        messages are walked once, each looked up in a cache of messages seen before
        (parsed only when new), keeping the lowest priority per table and destination
        (the first listed on a tie); then the tables are merged from the last one the
        rules walk to the first, so the first table with an entry for a destination
        decides (a throw route passes it on)."""
        order = self._order(raw_rules)
        if order is None:
            routes = [parse_route(p) for p in iter_payloads(raw_routes, RTM_NEWROUTE, 1)]
            rules = sorted(
                (parse_rule(p) for p in iter_payloads(raw_rules, RTM_NEWRULE, 2)),
                key=lambda r: r.priority,
            )
            chosen = select_routes(routes, rules, self.owners, self.me[node])
            return {dst: r.next_hop for dst, r in chosen.items()}
        cache = self._parsed
        if len(cache) > self.CACHE_MAX:
            cache.clear()
        best: dict[int, dict[str, tuple[str, int, int, int, str | None]]] = {}
        unpack = _NLHDR.unpack_from
        pos, end = 0, len(raw_routes)
        while pos + 16 <= end:
            length, msg_type, seq = unpack(raw_routes, pos)
            if length < 16:
                break
            if msg_type == RTM_NEWROUTE and seq == 1:
                p = raw_routes[pos + 16 : pos + length]
                e = cache.get(p, _MISSING)
                if e is _MISSING:
                    e = cache[p] = self._entry(p)
                if e is not None and e[0] != node:
                    table = best.get(e[1])
                    if table is None:
                        table = best[e[1]] = {}
                    held = table.get(e[0])
                    if held is None or e[2] < held[2]:
                        table[e[0]] = e
            pos += (length + 3) & ~3
        row: dict[str, str | None] = {}
        for t in reversed(order):
            for dst_node, e in best.get(t, {}).items():
                if e[3] == RTN_UNICAST:
                    row[dst_node] = e[4]
                elif e[3] != RTN_THROW:
                    row.pop(dst_node, None)
        return row

    def close(self) -> None:
        self.dumper.close()


# --- helpers -------------------------------------------------------------------


def addr_to_node(mesh: Mesh) -> dict[str, str]:
    return {mesh.address(n): n for n in mesh.nodes}


def node_prefixlen(mesh: Mesh) -> int:
    any_addr = next(iter(mesh.state.node_addresses.values()))
    return ipaddress.IPv4Interface(any_addr).network.prefixlen


def mesh_ifnames(mesh: Mesh, node: str) -> list[str]:
    return [i["ifname"] for i in mesh.state.interfaces.get(node, [])]


def if_peers(mesh: Mesh, node: str) -> dict[str, str | None]:
    return {i["ifname"]: i.get("peer") for i in mesh.state.interfaces.get(node, [])}


def ifindex_map(mesh: Mesh, node: str) -> dict[str, int]:
    ipr = mesh.netlink(node)
    return {link.get_attr("IFLA_IFNAME"): link["index"] for link in ipr.get_links()}


def kernel_routes(mesh: Mesh, node: str) -> dict[str, Route]:
    """Host routes (/32) to other nodes in the node's namespace, as its policy rules pick
    them (see select_routes)."""
    path = netns.path(mesh.ns(node))
    owners = addr_to_node(mesh)
    return select_routes(ipv4_routes(path), ipv4_rules(path), owners, mesh.address(node))


RTN_THROW = 9


def select_routes(
    routes: Sequence[KRoute], rules: Sequence[KRule], owners: dict[str, str], me: str
) -> dict[str, Route]:
    """Pure: each destination node's route as the kernel's lookup picks it.

    Rules are walked in priority order (lookup rules whose destination selector covers the
    address; rules with source, interface or fwmark selectors do not match every packet and
    are skipped). In each table, the /32 unicast route with the lowest priority wins (the
    first listed on a tie); a /32 throw route goes on to the next rule, any other /32 type
    (unreachable, blackhole, prohibit) ends the lookup without a route. A route with a
    gateway goes to the node owning that address; one without goes straight to the
    destination (the neighbour's host route). Only /32 routes count."""
    tables: dict[int, dict[str, KRoute]] = {}
    for r in routes:
        if r.dst_len != 32 or r.dst is None or r.dst == me or r.dst not in owners:
            continue
        row = tables.setdefault(r.table, {})
        held = row.get(r.dst)
        if held is None or r.priority < held.priority:
            row[r.dst] = r
    order = [
        (ipaddress.IPv4Network(f"{rule.dst}/{rule.dst_len}") if rule.dst else None, rule.table)
        for rule in rules
        if rule.action == FR_ACT_TO_TBL and not rule.selective and rule.table != LOCAL_TABLE
    ]
    if not rules:
        order = [(None, table) for _prio, table in DEFAULT_RULES_TABLES if table != LOCAL_TABLE]
    out: dict[str, Route] = {}
    by_dst = any(net is not None for net, _table in order)
    for dst, dst_node in owners.items():
        if dst == me:
            continue
        address = ipaddress.IPv4Address(dst) if by_dst else None
        for net, table in order:
            if net is not None and address not in net:
                continue
            found = tables.get(table, {}).get(dst)
            if found is None or found.type == RTN_THROW:
                continue
            if found.type == RTN_UNICAST:
                gateway = found.gateway
                next_hop = owners.get(gateway) if gateway is not None else dst_node
                out[dst_node] = Route(next_hop, float(found.priority))
            break
    return out


def kill_processes(records: Sequence[state_mod.ProcessRecord], timeout: float = 3.0) -> list[int]:
    """SIGKILL recorded processes (and their children) by PID, a crash with no goodbye,
    and wait until they are gone (reaped, if they are our children). A PID whose create
    time does not match its record is not ours and is left alone. Returns the PIDs killed."""
    return stop_processes(records, timeout=timeout, kill=True)


def freeze_processes(
    records: Sequence[state_mod.ProcessRecord], timeout: float = 2.0
) -> list[int]:
    """SIGSTOP recorded processes by PID (create time checked): a frozen daemon sends
    nothing more. Returns the PIDs frozen. SIGKILL still ends them."""
    frozen: list[psutil.Process] = []
    for rec in records:
        try:
            p = psutil.Process(rec.pid)
            if abs(p.create_time() - rec.create_time) > 0.05:
                continue
            p.send_signal(signal.SIGSTOP)
            frozen.append(p)
        except psutil.NoSuchProcess:
            continue
    # the signal is delivered asynchronously: wait (bounded) until each one has stopped
    deadline = time.monotonic() + timeout
    for p in frozen:
        with contextlib.suppress(psutil.NoSuchProcess):
            while p.status() not in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.001)
    return [p.pid for p in frozen]


def live_records(mesh: Mesh, node: str, role: str) -> list[state_mod.ProcessRecord]:
    """node's recorded processes of `role` that are still running (create time checked)."""
    out = []
    for rec in mesh.state.processes:
        if rec.node != node or rec.role != role:
            continue
        try:
            p = psutil.Process(rec.pid)
            if abs(p.create_time() - rec.create_time) <= 0.05 and p.status() != "zombie":
                out.append(rec)
        except psutil.NoSuchProcess:
            continue
    return out


def neighbour_route_ifaces(mesh: Mesh, node: str) -> dict[str, str]:
    """{neighbour: ifname} for the builder's neighbour host routes of `node` (l3 plans):
    point-to-point interfaces first, then segment members; the first interface wins, as
    in plan._plan_l3."""
    out: dict[str, str] = {}
    mine = mesh.state.interfaces.get(node, [])
    for i in mine:
        if i.get("peer") and not i.get("segment"):
            out.setdefault(i["peer"], i["ifname"])
    members: dict[str, list[str]] = {}
    for other, ifaces in mesh.state.interfaces.items():
        for i in ifaces:
            if i.get("segment"):
                members.setdefault(i["segment"], []).append(other)
    for i in mine:
        if i.get("segment"):
            for other in members.get(i["segment"], []):
                if other != node:
                    out.setdefault(other, i["ifname"])
    return out


def restore_neighbour_routes(mesh: Mesh, node: str) -> list[str]:
    """Put back node's neighbour host routes (scope link) on interfaces that are up; the
    kernel flushes them when an interface is set down. Returns the neighbours restored."""
    from pyroute2.netlink.exceptions import NetlinkError  # here: `up` starts without it

    ipr = mesh.netlink(node)
    up = {
        link.get_attr("IFLA_IFNAME"): link["index"]
        for link in ipr.get_links()
        if link["flags"] & 1  # IFF_UP
    }
    done = []
    for neighbour, ifname in neighbour_route_ifaces(mesh, node).items():
        if ifname not in up:
            continue
        with contextlib.suppress(NetlinkError):
            ipr.route("replace", dst=f"{mesh.address(neighbour)}/32", oif=up[ifname], scope=253)
            done.append(neighbour)
    return done


def run_dir(mesh: Mesh) -> str:
    return state_mod.run_files_dir(mesh.state.run_id)


def node_dir(mesh: Mesh, node: str) -> str:
    """/run/meshstress/ms-<run_id>-files/<node>/, made on first use; the run dir is in
    state.files (teardown removes exactly that path)."""
    top = run_dir(mesh)
    path = os.path.join(top, node)
    os.makedirs(path, exist_ok=True)
    if top not in mesh.state.files:
        mesh.state.files.append(top)
        mesh.state.save()
    return path


def which(program: str) -> str | None:
    return shutil.which(program) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{program}", os.X_OK)), None
    )


def check_output(mesh: Mesh, node: str, argv: list[str], timeout: float = 10.0) -> str:
    proc = mesh.run(node, argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} in {node} failed ({proc.returncode}): {proc.stderr.strip()}"
        )
    return str(proc.stdout)
