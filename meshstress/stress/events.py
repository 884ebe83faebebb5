"""Timed events on a live mesh: link down/up, node crash/restart, partition/heal, impair.

Pure part: `parse_events` (the `[[events]]` array of a scenario -> sorted Events, with
every mistake an InputError naming the field), `target`, `partition_cuts`,
`link_interfaces`. Side effects: `EventRunner.apply` (netlink inside the nodes'
namespaces, the routing backend's stop_node/start_node) and `run_timeline`.
See docs/events.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import psutil

from meshstress.build import drop, impair
from meshstress.errors import MeshstressError
from meshstress.model import units
from meshstress.model.topofile import _IMPAIR_KEYS, _Ctx
from meshstress.model.topology import Impairment, Topology
from meshstress.routing.base import freeze_processes, live_records, neighbour_route_ifaces
from meshstress.stress.inject import InjectSpec, parse_inject

if TYPE_CHECKING:
    from meshstress.build import Mesh
    from meshstress.routing.base import Backend

ACTIONS = ("link-down", "link-up", "node-crash", "node-restart", "partition", "heal", "impair",
           "inject")  # fmt: skip

# How a cut looks to the neighbours (docs/events.md): "keep" (radio-like, the default):
# the interfaces stay up with carrier and every frame in and out of them is dropped (a
# BPF filter, meshstress.build.drop); "lose" (an unplugged cable): they are set down, so
# the other end of each veth loses carrier.
CARRIER_KEEP, CARRIER_LOSE = "keep", "lose"
CARRIER_MODES = (CARRIER_KEEP, CARRIER_LOSE)

# keys each action takes besides `at` and `action`
_KEYS: dict[str, tuple[str, ...]] = {
    "link-down": ("link", "for", "carrier"),
    "link-up": ("link",),
    "node-crash": ("node", "for", "carrier"),
    "node-restart": ("node",),
    "partition": ("groups", "for", "carrier"),
    "heal": (),
    "impair": ("link", *_IMPAIR_KEYS, "a_to_b", "b_to_a"),
    "inject": ("node", "protocol", "attack", "rate", "for", "seed", "recover_within"),
}
_REQUIRED = {"link-down": "link", "link-up": "link", "node-crash": "node",
             "node-restart": "node", "partition": "groups", "impair": "link",
             "inject": "node"}  # fmt: skip
_UNDO = {"link-down": "link-up", "node-crash": "node-restart", "partition": "heal"}

Link = tuple[str, str]


@dataclass(frozen=True)
class Event:
    at: float  # seconds after the scenario's traffic start t0
    action: str
    link: tuple[str, str] | None = None  # link-down/link-up/impair
    node: str | None = None  # node-crash/node-restart
    # partition: every group, the implicit one (nodes not listed) included, in order;
    # heal: the groups of the partition it undoes when it came from `for` (else None)
    groups: tuple[tuple[str, ...], ...] | None = None
    ab: Impairment | None = None  # impair: new link[0]->link[1] impairment (None: as is)
    ba: Impairment | None = None  # impair: new link[1]->link[0] impairment
    inject: InjectSpec | None = None  # inject: what the hostile node sends, for how long
    # link-down/node-crash/partition: CARRIER_KEEP (frames dropped, carrier kept) or
    # CARRIER_LOSE (interfaces set down). An undo made by `for` carries its event's
    # mode, but an undo ends a cut in the mode the cut was made with, whatever it says.
    carrier: str = CARRIER_KEEP


# --- parsing (pure) --------------------------------------------------------------------


def parse_events(raw: object, source: str, topo: Topology, field: str = "events") -> list[Event]:
    """The TOML array `[[events]]` -> Events sorted by time (stable; a `for` adds the
    undoing event at at+for). InputError(source, "events[3].link", ...) on any mistake."""
    ctx = _Ctx(source)
    if not isinstance(raw, list):
        raise ctx.fail(field, f"expected an array of tables ([[{field}]]), got {_kind(raw)}")
    names = set(topo.node_names())
    links = {frozenset((link.a, link.b)) for link in topo.links}
    out: list[Event] = []
    for i, item in enumerate(raw):
        where = f"{field}[{i}]"
        table = ctx.table(item, where)
        if "action" not in table:
            raise ctx.fail(f"{where}.action", f"missing (one of {', '.join(ACTIONS)})")
        action = ctx.choice(table["action"], f"{where}.action", ACTIONS)
        ctx.keys(table, ("at", "action", *_KEYS[action]), where)
        if "at" not in table:
            raise ctx.fail(f"{where}.at", 'missing (a time after traffic starts, like "10s")')
        at = ctx.unit(table["at"], f"{where}.at", units.parse_duration)
        need = _REQUIRED.get(action)
        if need and need not in table:
            raise ctx.fail(f"{where}.{need}", f"missing (needed by {action})")
        ev = Event(at=at, action=action)
        if "link" in table:
            ev = replace(ev, link=_link(ctx, table["link"], f"{where}.link", names, links))
        if "node" in table:
            ev = replace(ev, node=_node(ctx, table["node"], f"{where}.node", names))
        if action == "partition":
            ev = replace(ev, groups=_groups(ctx, table["groups"], f"{where}.groups", topo))
        if "carrier" in table:
            ev = replace(ev, carrier=ctx.choice(table["carrier"], f"{where}.carrier",
                                                CARRIER_MODES))  # fmt: skip
        if action == "impair":
            ab, ba = _impairments(ctx, table, where)
            ev = replace(ev, ab=ab, ba=ba)
        if action == "inject":  # its `for` is how long it sends: no undoing event
            ev = replace(ev, inject=parse_inject(ctx, table, where, topo.routing))
            out.append(ev)
            continue
        out.append(ev)
        if "for" in table:
            span = ctx.unit(table["for"], f"{where}.for", units.parse_duration)
            if span <= 0:
                raise ctx.fail(f"{where}.for", "must be longer than 0")
            out.append(replace(ev, at=at + span, action=_UNDO[action]))
    return sorted(out, key=lambda e: e.at)


def _kind(value: object) -> str:
    return type(value).__name__ if not isinstance(value, dict) else "a table"


def _node(ctx: _Ctx, value: object, field: str, names: set[str]) -> str:
    name = ctx.string(value, field)
    if name not in names:
        raise ctx.fail(field, f"unknown node {name!r}")
    return name


def _link(
    ctx: _Ctx, value: object, field: str, names: set[str], links: set[frozenset[str]]
) -> Link:
    if not isinstance(value, list) or len(value) != 2:
        raise ctx.fail(field, 'expected the link\'s two nodes, like ["n0", "n1"]')
    a = _node(ctx, value[0], f"{field}[0]", names)
    b = _node(ctx, value[1], f"{field}[1]", names)
    if frozenset((a, b)) not in links:
        raise ctx.fail(field, f"no link {a}-{b} in the topology (links, not segments)")
    return (a, b)


def _groups(ctx: _Ctx, value: object, field: str, topo: Topology) -> tuple[tuple[str, ...], ...]:
    names = set(topo.node_names())
    if not isinstance(value, list) or not value:
        raise ctx.fail(field, 'expected groups of nodes, like [["n0", "n1"], ["n2"]]')
    seen: dict[str, int] = {}
    groups: list[tuple[str, ...]] = []
    for j, group in enumerate(value):
        if not isinstance(group, list) or not group:
            raise ctx.fail(f"{field}[{j}]", "expected a non-empty array of node names")
        members = []
        for k, item in enumerate(group):
            name = _node(ctx, item, f"{field}[{j}][{k}]", names)
            if name in seen:
                raise ctx.fail(
                    f"{field}[{j}][{k}]", f"node {name!r} is already in group {seen[name]}"
                )
            seen[name] = j
            members.append(name)
        groups.append(tuple(members))
    rest = tuple(n for n in topo.node_names() if n not in seen)
    if rest:
        groups.append(rest)
    if len(groups) < 2:
        raise ctx.fail(field, "a partition needs at least two groups (these hold every node)")
    group_of = {n: j for j, g in enumerate(groups) for n in g}
    for seg in topo.segments:
        if len({group_of[m] for m in seg.members}) > 1:
            raise ctx.fail(
                field,
                f"shared segment {seg.name!r} has members in different groups; "
                "partitioning a shared segment is not supported yet",
            )
    return tuple(groups)


def _impairments(
    ctx: _Ctx, table: dict[str, Any], where: str
) -> tuple[Impairment | None, Impairment | None]:
    shared = any(k in table for k in _IMPAIR_KEYS)
    if not shared and "a_to_b" not in table and "b_to_a" not in table:
        raise ctx.fail(
            where, f"impair needs at least one of {', '.join(_IMPAIR_KEYS)}, a_to_b, b_to_a"
        )
    both = ctx.impairment(table, where) if shared else None
    out: list[Impairment | None] = []
    for key in ("a_to_b", "b_to_a"):
        if key in table:
            sub = ctx.table(table[key], f"{where}.{key}")
            ctx.keys(sub, _IMPAIR_KEYS, f"{where}.{key}")
            out.append(ctx.impairment(sub, f"{where}.{key}", both))
        else:
            out.append(both)
    return out[0], out[1]


# --- pure helpers ------------------------------------------------------------------------


def link_key(a: str, b: str) -> frozenset[str]:
    return frozenset((a, b))


def target(event: Event) -> str:
    """What an event acts on, as text: "n0-n1", "n4", "n0,n1|n2,n3" (heal: its partition's
    groups when known, else "all")."""
    if event.link is not None:
        return f"{event.link[0]}-{event.link[1]}"
    if event.node is not None:
        return event.node
    if event.groups is not None:
        return "|".join(",".join(g) for g in event.groups)
    return "all" if event.action == "heal" else ""


def partition_cuts(topo: Topology, groups: Sequence[Sequence[str]]) -> list[Link]:
    """The topology links whose ends fall in different groups, in topology order."""
    group_of = {n: j for j, g in enumerate(groups) for n in g}
    return [
        (link.a, link.b)
        for link in topo.links
        if group_of.get(link.a, -1) != group_of.get(link.b, -1)
    ]


def link_interfaces(interfaces: dict[str, list[dict[str, Any]]], a: str, b: str) -> list[Link]:
    """[(node, ifname)] of link a-b: a's interface whose peer is b, then b's whose peer is
    a. Veth pairs and two-member bridges ("segment" links) alike: the node-side ends."""
    out = []
    for me, other in ((a, b), (b, a)):
        found = [i["ifname"] for i in interfaces.get(me, []) if i.get("peer") == other]
        if not found:
            raise MeshstressError(f"node {me} has no interface to {other} in this run")
        out.append((me, found[0]))
    return out


# --- applying ----------------------------------------------------------------------------

IFF_UP = 1
_NLMSG_ERROR = 2
_RTM_NEWLINK = 16
_RTM_NEWROUTE = 24
_IFLA_GROUP = 27
MESH_GROUP = 0x6D73  # the device group of a node's mesh interfaces once prepared
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_REPLACE, _NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
_SEQ_BASE = 0x6D730000  # sequence numbers of our batches ("ms"), apart from pyroute2's
_ACK_TIMEOUT = 10.0  # the kernel acks a batch before sendto returns; this only guards


# libc through PyDLL: these calls keep the GIL. An action's send and ack read per
# namespace (about 430 system calls for a partition of Ulm) then never hand the GIL to
# another thread (the route recorder) and wait to get it back; the kernel handles a
# netlink request inside send, so each call is short (see _send_buffer, _read_ready).
_LIBC = ctypes.PyDLL(None, use_errno=True)
_LIBC.send.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
_LIBC.send.restype = ctypes.c_ssize_t
_LIBC.recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_LIBC.recv.restype = ctypes.c_ssize_t
_RECV_BUF = 65536


def _send_buffer(node: str, sock: Any, data: bytes) -> None:
    """Send `data` to the kernel on node's netlink socket, keeping the GIL."""
    sent = _LIBC.send(sock.fileno(), data, len(data), 0)
    if sent != len(data):
        err = ctypes.get_errno() if sent < 0 else errno.EMSGSIZE
        raise MeshstressError(f"node {node}: netlink send failed: {os.strerror(err)}")


def _read_ready(sock: Any, buf: Any) -> bytes | None:
    """What the socket has queued already (MSG_DONTWAIT, keeping the GIL); None if
    nothing yet."""
    got = _LIBC.recv(sock.fileno(), buf, _RECV_BUF, socket.MSG_DONTWAIT)
    if got < 0:
        err = ctypes.get_errno()
        if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
            return None
        raise OSError(err, os.strerror(err))
    return bytes(buf[:got])


def _nlmsg(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def _rtattr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def link_state_msg(index: int, up: bool, seq: int, ack: bool = False) -> bytes:
    """RTM_NEWLINK setting interface `index` up or down (only IFF_UP changes). Pure."""
    flags = _NLM_F_REQUEST | (_NLM_F_ACK if ack else 0)
    body = struct.pack("=BxHiII", 0, 0, index, IFF_UP if up else 0, IFF_UP)
    return _nlmsg(_RTM_NEWLINK, flags, seq, body)


def link_group_msg(group: int, up: bool, seq: int, ack: bool = False) -> bytes:
    """RTM_NEWLINK setting every interface of device group `group` up or down: no index,
    no name, IFLA_GROUP (the kernel's group change, `ip link set group G down`). Pure."""
    flags = _NLM_F_REQUEST | (_NLM_F_ACK if ack else 0)
    body = struct.pack("=BxHiII", 0, 0, 0, IFF_UP if up else 0, IFF_UP)
    body += _rtattr(_IFLA_GROUP, struct.pack("=I", group))
    return _nlmsg(_RTM_NEWLINK, flags, seq, body)


def link_set_group_msg(index: int, group: int, seq: int, ack: bool = False) -> bytes:
    """RTM_NEWLINK putting interface `index` into device group `group`. Pure."""
    flags = _NLM_F_REQUEST | (_NLM_F_ACK if ack else 0)
    body = struct.pack("=BxHiII", 0, 0, index, 0, 0)
    body += _rtattr(_IFLA_GROUP, struct.pack("=I", group))
    return _nlmsg(_RTM_NEWLINK, flags, seq, body)


def host_route_msg(dst: str, index: int, seq: int, ack: bool = False) -> bytes:
    """RTM_NEWROUTE replacing dst/32 via interface `index`, scope link, main table,
    proto static: the builder's neighbour host route. Pure."""
    flags = _NLM_F_REQUEST | _NLM_F_CREATE | _NLM_F_REPLACE | (_NLM_F_ACK if ack else 0)
    # family, dst_len, src_len, tos, table, protocol, scope, type, flags
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, 32, 0, 0, 254, 4, 253, 1, 0)
    body += _rtattr(1, socket.inet_aton(dst))  # RTA_DST
    body += _rtattr(4, struct.pack("=i", index))  # RTA_OIF
    return _nlmsg(_RTM_NEWROUTE, flags, seq, body)


def parse_acks(data: bytes) -> dict[int, int]:
    """{sequence number: errno (0 = done)} of the NLMSG_ERROR messages in a netlink
    buffer; other messages are skipped. Pure."""
    out: dict[int, int] = {}
    off = 0
    while off + 16 <= len(data):
        length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            break
        if kind == _NLMSG_ERROR and off + 20 <= len(data):
            (err,) = struct.unpack_from("=i", data, off + 16)
            out[seq] = -err
        off += (length + 3) & ~3
    return out


@dataclass
class _Batch:
    """Requests sent to one node's namespace in one buffer, replies not yet read."""

    node: str
    sock: Any
    # by sequence number: what each request does, ("link", ifname, up) or
    # ("route", neighbour, True); a group request covers several links
    what: list[list[tuple[str, str, bool]]]


@dataclass
class _Before:
    """What the interfaces of some nodes were before an action changed the model."""

    admin: dict[tuple[str, str], bool]  # (node, ifname) -> IFF_UP wanted
    carrying: dict[tuple[str, str], bool]  # (node, ifname) -> carries frames


class EventRunner:
    """Applies events to a live mesh and keeps track of what is down and why.

    An interface carries frames when its node is not crashed and its link is neither
    downed by a link-down nor cut by the partition in force. Each of those causes has
    its carrier mode: "keep" (radio-like) drops every frame through the interface's BPF
    filter (meshstress.build.drop: one slot per node and per link in one map), "lose"
    sets the interface down. Every action computes from that model which drop slots and
    which interfaces change and sets all of them at once: the map updates, then one
    netlink buffer per namespace, every namespace's buffer sent before any ack is read,
    so an event is one moment however many interfaces it touches (a crash of a node with
    78 links, a partition of a city). Records are stamped when the action begins."""

    def __init__(self, mesh: Mesh, backend: Backend, topo: Topology) -> None:
        self.mesh = mesh
        self.backend = backend
        self.topo = topo
        self.downed: set[frozenset[str]] = set()  # links down by link-down events
        self.cut: set[frozenset[str]] = set()  # links down by the partition in force
        self.crashed: set[str] = set()
        self.groups: tuple[tuple[str, ...], ...] | None = None
        # the carrier mode of each cause: per crashed node, per downed link, the partition's
        self.crash_carrier: dict[str, str] = {}
        self.down_carrier: dict[frozenset[str], str] = {}
        self.cut_carrier = CARRIER_KEEP
        self._node_slot, self._link_slot, self._slots = drop.slot_numbers(
            topo.node_names(), [(link.a, link.b) for link in topo.links]
        )
        self._drops: drop.DropMap | None = None  # made at the first need
        self._dropping: set[int] = set()  # the slots set in the map now
        self._filtered: set[tuple[str, str]] = set()  # (node, ifname) with the drop filter
        self._slot_ifaces: dict[int, list[tuple[str, str]]] | None = None
        self.mtu = backend.mtu or 1500
        self._index: dict[str, dict[str, int]] = {}  # node -> ifname -> ifindex
        self._routes: dict[str, dict[str, str]] = {}  # node -> neighbour -> ifname
        self._links_done: float | None = None  # when the last apply's link changes were made
        self._grouped: set[str] = set()  # nodes whose mesh interfaces are in MESH_GROUP
        self.use_groups = True  # False: one request per interface (benchmarks compare)
        self.realtime = True  # False: actions run at the thread's own priority (same)
        self.out_dir: str | None = None  # the run folder: inject/ goes there
        self.injects: list[dict[str, Any]] = []  # started inject agents (see _inject)
        self._inject_plans: dict[int, dict[str, Any]] = {}  # id(event) -> prepared plan
        self._armed: dict[int, subprocess.Popen[Any]] = {}  # id(event) -> its waiting sender
        self._no_offloads: set[tuple[str, str]] = set()  # (node, ifname) done already
        # (node, ifname) -> the impairment this runner put there last (its qdisc shape is
        # known: a step of the same shape changes it in place without a dump)
        self._impaired: dict[tuple[str, str], Impairment] = {}

    def prepare(self, events: Sequence[Event]) -> None:
        """Open the netlink sockets and learn the interface indexes of every node the
        events touch, so that nothing of this happens inside a timed event; attach the
        drop filter (meshstress.build.drop) to every interface a radio-like cut
        (carrier "keep") may cut, so that such a cut is a map update only; put the mesh
        interfaces of every node a node-crash with carrier "lose" names into MESH_GROUP
        (without that, its crash sends one request per interface)."""
        nodes: set[str] = set()
        for ev in events:
            if ev.link is not None:
                nodes.update(ev.link)
            if ev.node is not None:
                nodes.add(ev.node)
            if ev.groups is not None:
                for a, b in partition_cuts(self.topo, ev.groups):
                    nodes.update((a, b))
        for node in sorted(nodes):
            self._indexes(node)
            self._via(node)
        crashing = {ev.node for ev in events if ev.action == "node-crash" and ev.node
                    and ev.carrier == CARRIER_LOSE}  # fmt: skip
        for node in sorted(crashing - self._grouped):
            self._group(node)
        self._attach(self._keep_interfaces(events))
        for ev in events:  # the forged frames are generated now, not inside the event
            if ev.action == "inject":
                self._inject_plans[id(ev)] = self._plan_inject(ev)
        # offloads off, once, on every interface an impair event will impair (ethtool
        # ioctls: costly under emulation, and the same answer each time)
        for ev in events:
            if ev.action != "impair" or ev.link is None:
                continue
            a, b = ev.link
            ends = link_interfaces(self.mesh.state.interfaces, a, b)
            for (node, ifname), imp in ((ends[0], ev.ab), (ends[1], ev.ba)):
                if imp is not None and not imp.is_ideal():
                    self._offloads_off_on(node, ifname)

    def _offloads_off_on(self, node: str, ifname: str) -> None:
        if (node, ifname) not in self._no_offloads:
            impair.disable_offloads(self.mesh.ethtool(node), ifname)
            self._no_offloads.add((node, ifname))

    def _group(self, node: str) -> None:
        """Put node's mesh interfaces (all of them, nothing else) in MESH_GROUP."""
        index = self._indexes(node)
        names = [i["ifname"] for i in self.mesh.state.interfaces.get(node, [])]
        others = [n for n, g in self._groups(node).items() if g == MESH_GROUP and n not in names]
        if others:
            raise MeshstressError(f"node {node}: {others[0]} is in group {MESH_GROUP} already")
        if not names:
            return
        sock = self.mesh.netlink(node)
        data = b"".join(
            link_set_group_msg(index[n], MESH_GROUP, _SEQ_BASE + k, ack=k == len(names) - 1)
            for k, n in enumerate(names)
        )
        sock.sendto(data, (0, 0))
        self._collect([_Batch(node, sock, [[("group", n, True)] for n in names])])
        self._grouped.add(node)

    def _groups(self, node: str) -> dict[str, int]:
        return {
            link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_GROUP") or 0
            for link in self.mesh.netlink(node).get_links()
        }

    # --- interface state ------------------------------------------------------

    def _modes(self, node: str, iface: dict[str, Any]) -> list[str]:
        """The carrier modes of every cause that cuts this interface now (none: it
        carries frames)."""
        out = []
        if node in self.crashed:
            out.append(self.crash_carrier.get(node, CARRIER_LOSE))
        peer = iface.get("peer")
        if peer is None:
            return out  # a shared segment: partitions never split one (parse time)
        key = link_key(node, peer)
        if key in self.downed:
            out.append(self.down_carrier.get(key, CARRIER_LOSE))
        if key in self.cut:
            out.append(self.cut_carrier)
        return out

    def _should_be_up(self, node: str, iface: dict[str, Any]) -> bool:
        """IFF_UP: no cause in force with carrier "lose"."""
        return CARRIER_LOSE not in self._modes(node, iface)

    def _wanted(self, nodes: Sequence[str]) -> dict[tuple[str, str], bool]:
        return {
            (node, i["ifname"]): self._should_be_up(node, i)
            for node in dict.fromkeys(nodes)
            for i in self.mesh.state.interfaces.get(node, [])
        }

    def _carrying(self, nodes: Sequence[str]) -> dict[tuple[str, str], bool]:
        return {
            (node, i["ifname"]): not self._modes(node, i)
            for node in dict.fromkeys(nodes)
            for i in self.mesh.state.interfaces.get(node, [])
        }

    def _before(self, nodes: Sequence[str]) -> _Before:
        return _Before(self._wanted(nodes), self._carrying(nodes))

    # --- radio-like cuts: the drop slots ------------------------------------------

    def _drop_slots(self) -> set[int]:
        """The slots that must drop now: each node crashed, link downed, link cut by
        the partition in force, with carrier "keep"."""
        out = {self._node_slot[n] for n in self.crashed
               if self.crash_carrier.get(n, CARRIER_LOSE) == CARRIER_KEEP}  # fmt: skip
        out |= {self._link_slot[k] for k in self.downed
                if self.down_carrier.get(k, CARRIER_LOSE) == CARRIER_KEEP}  # fmt: skip
        if self.cut_carrier == CARRIER_KEEP:
            out |= {self._link_slot[k] for k in self.cut}
        return out

    def dropping(self, node: str, ifname: str) -> bool:
        """Whether node's interface `ifname` drops every frame now: its filter is
        attached and its node's or its link's slot is set, read back from the kernel's
        map (tests, benchmarks)."""
        if self._drops is None or (node, ifname) not in self._filtered:
            return False
        slots = [self._node_slot[node]]
        for i in self.mesh.state.interfaces.get(node, []):
            if i["ifname"] == ifname and i.get("peer") is not None:
                slots.append(self._link_slot[link_key(node, i["peer"])])
        return any(self._drops.get(slot) for slot in slots)

    def _keep_interfaces(self, events: Sequence[Event]) -> list[tuple[str, str]]:
        """(node, ifname) of every interface a radio-like cut of `events` may cut."""
        out: list[tuple[str, str]] = []
        for ev in events:
            if ev.carrier != CARRIER_KEEP:
                continue
            if ev.action == "node-crash" and ev.node is not None:
                out += [(ev.node, i["ifname"]) for i in self.mesh.state.interfaces.get(ev.node, [])]
            elif ev.action == "link-down" and ev.link is not None:
                out += link_interfaces(self.mesh.state.interfaces, *ev.link)
            elif ev.action == "partition" and ev.groups is not None:
                for a, b in partition_cuts(self.topo, ev.groups):
                    out += link_interfaces(self.mesh.state.interfaces, a, b)
        return out

    def _drop_map(self) -> drop.DropMap:
        if self._drops is None:
            self._drops = drop.DropMap(self._slots)
        return self._drops

    def _attach(self, pairs: Sequence[tuple[str, str]]) -> None:
        """The drop filter on every interface of `pairs` that has none yet: one program
        per interface (its node's slot and its link's), a clsact qdisc and the program
        on ingress and egress, one netlink buffer per namespace."""
        todo: dict[str, list[str]] = {}
        for node, ifname in pairs:
            if (node, ifname) not in self._filtered and ifname not in todo.get(node, []):
                todo.setdefault(node, []).append(ifname)
        if not todo:
            return
        m = self._drop_map()
        for node, names in todo.items():
            index = self._indexes(node)
            peers = {i["ifname"]: i.get("peer") for i in self.mesh.state.interfaces.get(node, [])}
            targets: list[tuple[str, int, int]] = []
            try:
                for ifname in names:
                    if ifname not in index:
                        raise MeshstressError(f"interface {ifname} of node {node} is gone")
                    peer = peers.get(ifname)
                    slots = [self._node_slot[node]]
                    if peer is not None:
                        slots.append(self._link_slot[link_key(node, peer)])
                    targets.append((ifname, index[ifname], drop.load_program(m.fd, slots)))
                drop.attach(self.mesh.rtnl(node), node, targets)
            finally:
                for _, _, fd in targets:  # the filters hold the programs now
                    os.close(fd)
            self._filtered.update((node, ifname) for ifname in names)

    def _ifaces_of_slot(self, slot: int) -> list[tuple[str, str]]:
        if self._slot_ifaces is None:
            by: dict[int, list[tuple[str, str]]] = {}
            for node, ifaces in self.mesh.state.interfaces.items():
                if node not in self._node_slot:
                    continue
                for i in ifaces:
                    by.setdefault(self._node_slot[node], []).append((node, i["ifname"]))
                    if i.get("peer") is not None:
                        key = link_key(node, i["peer"])
                        if key in self._link_slot:
                            by.setdefault(self._link_slot[key], []).append((node, i["ifname"]))
            self._slot_ifaces = by
        return self._slot_ifaces.get(slot, [])

    def _set_drops(self) -> None:
        """Bring the map in line with the model: the slots that must drop now set, the
        others cleared; one bpf(2) update per changed slot. An interface without its
        filter yet (no prepare) gets it first."""
        want = self._drop_slots()
        on, off = want - self._dropping, self._dropping - want
        if not on and not off:
            return
        if on:
            self._attach([p for slot in sorted(on) for p in self._ifaces_of_slot(slot)])
        m = self._drop_map()
        m.set(sorted(on), True)
        m.set(sorted(off), False)
        self._dropping = want

    def close(self) -> None:
        """Let go of the drop map (filters still attached keep it until their interfaces
        are deleted, with every slot as it was last set)."""
        if self._drops is not None:
            self._drops.close()
            self._drops = None

    def _indexes(self, node: str) -> dict[str, int]:
        if node not in self._index:
            ipr = self.mesh.netlink(node)
            self._index[node] = {
                link.get_attr("IFLA_IFNAME"): link["index"] for link in ipr.get_links()
            }
        return self._index[node]

    def _via(self, node: str) -> dict[str, str]:
        """{neighbour: ifname} of node's neighbour host routes (fixed for a run)."""
        if node not in self._routes:
            self._routes[node] = neighbour_route_ifaces(self.mesh, node)
        return self._routes[node]

    def _send(self, before: dict[tuple[str, str], bool]) -> list[_Batch]:
        """Set every interface of `before` whose wanted state differs now, and (l3
        backends) put back the neighbour host routes over those coming up: one buffer
        per namespace, only its last request acked, every buffer sent before any reply
        is read (_collect). rtnetlink handles a buffer inside sendto, in order.

        A node whose mesh interfaces all end in the same state (a crash, a restart)
        gets one request for its interface group (see prepare): the kernel changes
        them all under one hold of its rtnl lock, which the routing daemons of every
        namespace also take; one request per interface competes for it each time."""
        after = self._wanted(list(dict.fromkeys(n for n, _ in before)))
        per_node: dict[str, list[tuple[str, bool]]] = {}
        for (node, ifname), was in before.items():
            now = after[(node, ifname)]
            if now != was:
                per_node.setdefault(node, []).append((ifname, now))
        ends_of: dict[str, set[bool]] = {}  # node -> the states its interfaces end in
        for (node, _), now in after.items():
            ends_of.setdefault(node, set()).add(now)
        batches = []
        for node, changes in per_node.items():
            index = self._indexes(node)
            missing = [ifname for ifname, _ in changes if ifname not in index]
            if missing:
                raise MeshstressError(f"interface {missing[0]} of node {node} is gone")
            links = [("link", ifname, up) for ifname, up in changes]
            ends = ends_of[node]
            if node in self._grouped and self.use_groups and len(ends) == 1:
                (up,) = ends
                reqs: list[tuple[Callable[[int, bool], bytes], list[tuple[str, str, bool]]]]
                reqs = [(partial(link_group_msg, MESH_GROUP, up), links)]
            else:
                reqs = [(partial(link_state_msg, index[w[1]], w[2]), [w]) for w in links]
            rising = {ifname for ifname, up in changes if up}
            via = self._via(node) if rising and self.backend.l3 else {}
            for nb, ifname in via.items():  # the kernel flushed these when it went down
                if ifname in rising:
                    route = partial(host_route_msg, self.mesh.address(nb), index[ifname])
                    reqs.append((route, [("route", nb, True)]))
            data = b"".join(
                make(_SEQ_BASE + k, k == len(reqs) - 1) for k, (make, _) in enumerate(reqs)
            )
            sock = self.mesh.netlink(node)
            _send_buffer(node, sock, data)
            batches.append(_Batch(node, sock, [covered for _, covered in reqs]))
        return batches

    def _collect(
        self, batches: Sequence[_Batch]
    ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Read the replies of sent batches: errors, then the last request's ack.
        Returns ({node: [ifname]} set down, ... set up); MeshstressError naming every
        request the kernel refused."""
        down: dict[str, list[str]] = {}
        up: dict[str, list[str]] = {}
        failed: list[str] = []
        buf = ctypes.create_string_buffer(_RECV_BUF)
        for batch in batches:
            last = _SEQ_BASE + len(batch.what) - 1
            acks: dict[int, int] = {}
            while last not in acks:
                data = _read_ready(batch.sock, buf)  # queued by the time send returned
                if data is None:
                    ready, _, _ = select.select([batch.sock], [], [], _ACK_TIMEOUT)
                    if not ready:
                        raise MeshstressError(f"node {batch.node}: no netlink ack for link changes")
                    continue
                acks.update(parse_acks(data))
            for k, covered in enumerate(batch.what):
                err = acks.get(_SEQ_BASE + k, 0)
                for kind, name, on in covered:
                    if err:
                        failed.append(f"{batch.node} {kind} {name}: {os.strerror(err)}")
                    elif kind == "link":
                        (up if on else down).setdefault(batch.node, []).append(name)
        if failed:
            raise MeshstressError(f"netlink refused: {'; '.join(failed)}")
        self._links_done = time.monotonic()
        return down, up

    def _start(self, before: _Before) -> list[_Batch]:
        """The drop slots set (radio-like cuts), then the interface changes sent."""
        self._set_drops()
        return self._send(before.admin)

    def _finish(
        self, before: _Before, batches: Sequence[_Batch]
    ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Collect the acks; the backend's own work on nodes with interfaces set back up
        (what the kernel flushed). Returns ({node: [ifname]} that stopped carrying
        frames, ... that carry frames again), either carrier mode."""
        _, came_up = self._collect(batches)
        for node in came_up:
            self.backend.links_up(self.mesh, self.topo, node, neighbour_routes=False)
        after = self._carrying(list(dict.fromkeys(n for n, _ in before.carrying)))
        down: dict[str, list[str]] = {}
        up: dict[str, list[str]] = {}
        for (node, ifname), was in before.carrying.items():
            now = after[(node, ifname)]
            if now != was:
                (up if now else down).setdefault(node, []).append(ifname)
        return down, up

    def _change(self, before: _Before) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        return self._finish(before, self._start(before))

    # --- actions ------------------------------------------------------------------

    def apply(self, event: Event) -> dict[str, Any]:
        """Apply `event` now; return a JSON-ready record of what was done. "t" is the
        time.monotonic() when the action began, "took_s" how long it ran; detail
        "links_s" how long after "t" the kernel had made every interface change."""
        handler = getattr(self, "_" + event.action.replace("-", "_"), None)
        if handler is None:
            raise MeshstressError(f"unknown event action {event.action!r}")
        self._links_done = None
        with _urgent(self.realtime):  # raised first: the action begins at full priority
            start = time.monotonic()
            detail: dict[str, Any] = handler(event)
            end = time.monotonic()
        if self._links_done is not None:  # every interface changed (and daemons signalled)
            detail["links_s"] = round(self._links_done - start, 6)
        return {
            "at": event.at,
            "action": event.action,
            "target": target(event),
            "t": start,
            "took_s": end - start,
            "detail": detail,
        }

    def _need_link(self, event: Event) -> Link:
        if event.link is None:
            raise MeshstressError(f"{event.action} event without a link")
        return event.link

    def _need_node(self, event: Event) -> str:
        if event.node is None:
            raise MeshstressError(f"{event.action} event without a node")
        return event.node

    def _link_mode(self, key: frozenset[str]) -> str | None:
        """The carrier mode that keeps link `key` down now (None: it is not down)."""
        if key in self.downed:
            return self.down_carrier.get(key, CARRIER_LOSE)
        return self.cut_carrier if key in self.cut else None

    def _link_down(self, event: Event) -> dict[str, Any]:
        a, b = self._need_link(event)
        before = self._before([a, b])
        self.downed.add(link_key(a, b))
        self.down_carrier[link_key(a, b)] = event.carrier
        self.cut.discard(link_key(a, b))  # a heal must not bring it back now
        down, _ = self._change(before)
        return {"down": down, "carrier": event.carrier}

    def _link_up(self, event: Event) -> dict[str, Any]:
        a, b = self._need_link(event)
        before = self._before([a, b])
        mode = self._link_mode(link_key(a, b))
        self.downed.discard(link_key(a, b))
        self.cut.discard(link_key(a, b))
        _, up = self._change(before)
        return {"up": up, **({"carrier": mode} if mode else {})}

    def set_links(
        self, down: Sequence[Link] = (), up: Sequence[Link] = (), carrier: str = CARRIER_KEEP
    ) -> dict[str, Any]:
        """Take links `down` (with `carrier`) and bring links `up` in one step (a sweep's
        failed_links step): the drop slots, then one netlink buffer per namespace as for
        any event, all sent before any ack is read. Returns {"down": {node: [ifname]},
        "up": {...}, "carrier", "t", "took_s"}."""
        start = time.monotonic()
        nodes = sorted({n for link in (*down, *up) for n in link})
        with _urgent():
            before = self._before(nodes)
            for a, b in down:
                self.downed.add(link_key(a, b))
                self.down_carrier[link_key(a, b)] = carrier
                self.cut.discard(link_key(a, b))
            for a, b in up:
                self.downed.discard(link_key(a, b))
                self.cut.discard(link_key(a, b))
            went_down, came_up = self._change(before)
        return {"down": went_down, "up": came_up, "carrier": carrier, "t": start,
                "took_s": time.monotonic() - start}  # fmt: skip

    def recut(self, a: str, b: str) -> None:
        """Link a-b, down by a link-down, is cut by the partition in force instead (the
        pytest API ends a link_down block inside the partition that cut it): its state
        follows the partition's carrier mode from now."""
        key = link_key(a, b)
        before = self._before([a, b])
        self.downed.discard(key)
        self.cut.add(key)
        self._change(before)

    def _node_crash(self, event: Event) -> dict[str, Any]:
        node = self._need_node(event)
        role = self.backend.role
        mine = [p for p in self.mesh.state.processes if p.node == node and p.role == role]
        before = self._before([node])
        self.crashed.add(node)
        self.crash_carrier[node] = event.carrier
        # Freeze the daemons first (SIGSTOP, waited for), then cut the node: its drop
        # slot set (carrier "keep": every frame in and out of its interfaces is dropped,
        # they keep carrier) or every interface down in one buffer ("lose"); then SIGKILL
        # by recorded PID before the acks are even read: a crashed node sends nothing. A
        # daemon left running while its interfaces go down reacts on the ones still up,
        # with retractions and requests a crashed node never sends. stop_node then reaps
        # them (children too), forgets and cleans up.
        freeze_processes(live_records(self.mesh, node, role) if role else [])
        batches = self._start(before)
        _kill(mine)
        down, _ = self._finish(before, batches)
        self.backend.stop_node(self.mesh, node, kill=True)
        return {"down": down.get(node, []), "killed": sorted(p.pid for p in mine),
                "carrier": event.carrier}  # fmt: skip

    def _node_restart(self, event: Event) -> dict[str, Any]:
        node = self._need_node(event)
        before = self._before([node])
        mode = self.crash_carrier.get(node) if node in self.crashed else None
        self.crashed.discard(node)
        _, up = self._change(before)
        role = self.backend.role
        had = {p.pid for p in self.mesh.state.processes if p.node == node and p.role == role}
        self.backend.start_node(self.mesh, self.topo, node)
        after = {p.pid for p in self.mesh.state.processes if p.node == node and p.role == role}
        return {"up": up.get(node, []), "started": sorted(after - had),
                **({"carrier": mode} if mode else {})}  # fmt: skip

    def _partition(self, event: Event) -> dict[str, Any]:
        if event.groups is None:
            raise MeshstressError("partition event without groups")
        cuts = partition_cuts(self.topo, event.groups)
        fresh = [(a, b) for a, b in cuts if link_key(a, b) not in self.downed]
        old = self.cut
        before = self._before(
            sorted({n for key in old for n in key} | {n for ends in fresh for n in ends})
        )
        self.cut = {link_key(a, b) for a, b in fresh}
        self.cut_carrier = event.carrier
        self.groups = event.groups
        # a partition in force is replaced in the same step: links cut by both stay down
        down, up = self._change(before)
        detail: dict[str, Any] = {"cut": [f"{a}-{b}" for a, b in fresh], "down": down,
                                  "carrier": event.carrier}  # fmt: skip
        healed = sorted("-".join(sorted(key)) for key in old - self.cut)
        if healed:
            detail["healed_first"] = healed
            detail["up"] = up
        return detail

    def _heal(self, event: Event) -> dict[str, Any]:
        before = self._before(sorted({n for key in self.cut for n in key}))
        restored = sorted("-".join(sorted(key)) for key in self.cut)
        mode = self.cut_carrier if self.cut else None
        self.cut = set()
        self.groups = None
        _, up = self._change(before)
        return {"restored": restored, "up": up, **({"carrier": mode} if mode else {})}

    def _plan_inject(self, event: Event) -> dict[str, Any]:
        """Generate the frames of an inject event and write its plan file
        (OUT/inject/NODE[-k].plan.json); return where everything goes."""
        import json
        import tempfile

        from meshstress.stress import inject as inj

        node, spec = self._need_node(event), event.inject
        if spec is None:
            raise MeshstressError("inject event without its settings")
        ctx = inject_context(self.mesh, self.backend, self.topo, node)
        frames = inj.generate(spec, ctx)
        folder = os.path.join(self.out_dir or tempfile.mkdtemp(prefix="meshstress-inject-"),
                              "inject")  # fmt: skip
        os.makedirs(folder, exist_ok=True)
        base, k = node, 1
        while os.path.exists(os.path.join(folder, f"{base}.plan.json")):
            k += 1
            base = f"{node}-{k}"
        paths = {w: os.path.join(folder, f"{base}.{w}")
                 for w in ("plan.json", "pcap", "json", "trigger")}  # fmt: skip
        with open(paths["plan.json"], "w") as f:
            json.dump({"node": node, "seed": spec.seed, "protocol": spec.protocol,
                       "attack": spec.attack, "rate": spec.rate, "for_s": spec.duration,
                       "ifnames": [p.ifname for p in ctx.ports],
                       "context": inj.context_json(ctx),
                       "frames": [[p, b.hex()] for p, b in frames]}, f)  # fmt: skip
        return {"node": node, "spec": spec, "paths": paths, "planned": len(frames),
                "honest": sorted(ctx.honest)}  # fmt: skip

    def _start_inject(self, plan: dict[str, Any], wait: float) -> subprocess.Popen[Any]:
        spec: InjectSpec = plan["spec"]
        paths = plan["paths"]
        argv = [sys.executable, "-m", "meshstress.stress.inject_agent", "--plan",
                paths["plan.json"], "--pps", repr(spec.rate), "--seconds", repr(spec.duration),
                "--pcap", paths["pcap"], "--out", paths["json"], "--trigger", paths["trigger"],
                "--wait", repr(wait)]  # fmt: skip
        with open(paths["json"] + ".log", "w") as log:
            proc = self.mesh.popen(plan["node"], argv, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
        with contextlib.suppress(psutil.NoSuchProcess):
            self.mesh.record_process(proc, plan["node"], "inject", argv)
        return proc

    def arm_injects(self, wait: float) -> None:
        """Start the sender of every prepared inject event now (before t0: a Python
        start under the lab's emulation takes seconds); each waits for its trigger,
        which _inject fires at the event's moment (meshstress.stress.inject_agent).
        `wait`: how long an agent waits for its trigger before it gives up."""
        for key, plan in self._inject_plans.items():
            if key not in self._armed:
                self._armed[key] = self._start_inject(plan, wait)

    def injects_up(self, timeout: float) -> None:
        """Wait until every armed sender is up (MeshstressError if one ended first or
        is not up within `timeout` s)."""
        from meshstress.stress.inject_agent import is_up

        deadline = time.monotonic() + timeout
        for key, proc in self._armed.items():
            plan = self._inject_plans[key]
            while not is_up(plan["paths"]["trigger"], proc.pid):
                if proc.poll() is not None or time.monotonic() >= deadline:
                    raise MeshstressError(
                        f"the inject sender of node {plan['node']} "
                        + ("ended before it was up" if proc.poll() is not None
                           else f"was not up {timeout:g} s after it was started")  # fmt: skip
                    )
                time.sleep(0.005)

    def disarm(self) -> None:
        """Stop the armed senders whose event never came (the run ended first)."""
        fired = {id(it["proc"]) for it in self.injects}
        for proc in self._armed.values():
            if id(proc) not in fired and proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)

    def _inject(self, event: Event) -> dict[str, Any]:
        """Fire the hostile node's sender (armed by arm_injects; else started now, late:
        it sends from when it is up). Its frames are due from this moment on; it sends
        for the event's `for` and ends by itself."""
        from meshstress.stress.inject_agent import fire

        t = time.monotonic()
        key = id(event)
        if key not in self._inject_plans:
            self._inject_plans[key] = self._plan_inject(event)
        plan = self._inject_plans[key]
        spec: InjectSpec = plan["spec"]
        proc = self._armed.get(key)
        armed = proc is not None
        if proc is None:
            proc = self._armed[key] = self._start_inject(plan, 3600.0)
        fire(plan["paths"]["trigger"], proc.pid, t)
        detail = {"pid": proc.pid, "protocol": spec.protocol, "attack": spec.attack,
                  "seed": spec.seed, "rate": spec.rate, "for_s": spec.duration,
                  "planned": plan["planned"], "pcap": plan["paths"]["pcap"],
                  "armed": armed}  # fmt: skip
        self.injects.append({**plan, "proc": proc, "t": t, "detail": detail})
        return detail

    def _impair(self, event: Event) -> dict[str, Any]:
        a, b = self._need_link(event)
        ends = link_interfaces(self.mesh.state.interfaces, a, b)
        detail: dict[str, Any] = {}
        for (node, ifname), imp, direction in ((ends[0], event.ab, f"{a}->{b}"),
                                               (ends[1], event.ba, f"{b}->{a}")):  # fmt: skip
            if imp is None:
                continue
            ipr = self.mesh.netlink(node)
            index = self._indexes(node).get(ifname)
            if index is None:
                raise MeshstressError(f"interface {ifname} of node {node} is gone")
            if not imp.is_ideal():  # as the builder does: netem acts per packet
                self._offloads_off_on(node, ifname)
            was = self._impaired.get((node, ifname))
            impair.replace(ipr, index, imp, mtu=self.mtu, was=was)
            self._impaired[(node, ifname)] = imp
            detail[direction] = {"ifname": ifname, "impairment": impair.describe(imp)}
        return detail


URGENT_SWITCH_S = 0.00001  # 10 us: a partition releases the GIL ~430 times (syscalls)
URGENT_PRIORITY = 10  # SCHED_FIFO priority of the event thread while an action runs


@contextlib.contextmanager
def _urgent(realtime: bool = True) -> Iterator[bool]:
    """While an event runs, other threads of this process (the route recorder of
    `meshstress run` parses dumps without pause) hand the GIL back after 10 us instead
    of Python's 5 ms: each system call releases the GIL, and getting it back may take
    up to a switch interval while another thread holds it.

    With `realtime`, the calling thread also runs SCHED_FIFO (URGENT_PRIORITY) until the
    action ends: on a loaded host the kernel work of a partition (hundreds of interface
    changes, done inside our sendto calls) is otherwise preempted by every other
    runnable task. SCHED_RESET_ON_FORK: a daemon started meanwhile (a restart) runs at
    normal priority. Best effort: where the kernel refuses (no CAP_SYS_NICE, no RT
    bandwidth in this cgroup) the thread keeps its policy. Yields whether it was raised."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, URGENT_SWITCH_S))
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    raised = False
    if realtime and policy & ~os.SCHED_RESET_ON_FORK not in (os.SCHED_FIFO, os.SCHED_RR):
        try:
            os.sched_setscheduler(
                0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(URGENT_PRIORITY)
            )
            raised = True
        except OSError:
            pass
    try:
        yield raised
    finally:
        if raised:
            os.sched_setscheduler(0, policy, param)
        sys.setswitchinterval(before)


def _kill(records: Sequence[Any]) -> None:
    """SIGKILL the recorded processes whose create time matches their record (as
    build.stop_processes checks); their children and the wait are stop_node's."""
    for rec in records:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(rec.pid)
            if abs(proc.create_time() - rec.create_time) <= 0.05:
                proc.kill()


class Applier(Protocol):
    """What run_timeline needs: an EventRunner, or a wrapper around one."""

    def apply(self, event: Event) -> dict[str, Any]: ...


def run_timeline(
    runner: Applier,
    events: Sequence[Event],
    t0: float,
    stop: threading.Event | None = None,
) -> list[dict[str, Any]]:
    """Apply events in order, each at t0 + event.at (time.monotonic); each record gains
    "late_s" (how long after its time the event began: its "t" minus t0 + at).
    Returns early, without applying the rest, when `stop` is set."""
    records: list[dict[str, Any]] = []
    for event in events:
        due = t0 + event.at
        while True:
            if stop is not None and stop.is_set():
                return records
            left = due - time.monotonic()
            if left <= 0:
                break
            if stop is not None:
                stop.wait(left)
            else:
                time.sleep(left)
        began = time.monotonic()
        record = runner.apply(event)
        record["late_s"] = record.get("t", began) - due  # "t": when the action began
        records.append(record)
    return records


def inject_context(mesh: Mesh, backend: Backend, topo: Topology, node: str) -> Any:
    """What the forger needs from the live mesh: the hostile node's mesh interfaces (MAC,
    IPv6 link-local), and every other node's originator MAC (batman-adv: its first mesh
    interface's) and IPv4 address."""
    from meshstress.stress import inject as inj

    def macs(n: str) -> list[tuple[str, str, int]]:
        ipr = mesh.netlink(n)
        names = [i["ifname"] for i in mesh.state.interfaces.get(n, [])]
        links = {lk.get_attr("IFLA_IFNAME"): lk for lk in ipr.get_links()}
        return [(ifn, links[ifn].get_attr("IFLA_ADDRESS"), links[ifn]["index"])
                for ifn in names if ifn in links]  # fmt: skip

    ports = []
    ipr = mesh.netlink(node)
    for ifname, mac, index in macs(node):
        ll = None
        for a in ipr.get_addr(family=socket.AF_INET6, index=index):
            addr = a.get_attr("IFA_ADDRESS")
            if addr and addr.startswith("fe80:"):
                ll = addr
        ports.append(inj.Port(ifname, mac, ll))
    batman = backend.name == "batman-adv"
    honest = {}
    for other in mesh.nodes:
        if other != node:
            found = macs(other) if batman else []
            honest[other] = (found[0][1] if found else "", mesh.address(other))
    algo = backend.node_config(topo, node).get("algorithm", "BATMAN_IV") if batman else ""
    return inj.Context(node=node, address=mesh.address(node), ports=tuple(ports),
                       honest=honest, algorithm=algo or "BATMAN_IV")  # fmt: skip
