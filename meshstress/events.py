"""Timed events on a live mesh: link down/up, node crash/restart, partition/heal, impair.

Pure part: `parse_events` (the `[[events]]` array of a scenario -> sorted Events, with
every mistake an InputError naming the field), `target`, `partition_cuts`,
`link_interfaces`. Side effects: `EventRunner.apply` (netlink inside the nodes'
namespaces, the routing backend's stop_node/start_node) and `run_timeline`.
See docs/events.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from meshstress import impair, units
from meshstress.errors import MeshstressError
from meshstress.routing.base import freeze_processes, live_records
from meshstress.topofile import _IMPAIR_KEYS, _Ctx
from meshstress.topology import Impairment, Topology

if TYPE_CHECKING:
    from meshstress.build import Mesh
    from meshstress.routing.base import Backend

ACTIONS = ("link-down", "link-up", "node-crash", "node-restart", "partition", "heal", "impair")

# keys each action takes besides `at` and `action`
_KEYS: dict[str, tuple[str, ...]] = {
    "link-down": ("link", "for"),
    "link-up": ("link",),
    "node-crash": ("node", "for"),
    "node-restart": ("node",),
    "partition": ("groups", "for"),
    "heal": (),
    "impair": ("link", *_IMPAIR_KEYS, "a_to_b", "b_to_a"),
}
_REQUIRED = {"link-down": "link", "link-up": "link", "node-crash": "node",
             "node-restart": "node", "partition": "groups", "impair": "link"}  # fmt: skip
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
        if action == "impair":
            ab, ba = _impairments(ctx, table, where)
            ev = replace(ev, ab=ab, ba=ba)
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


class EventRunner:
    """Applies events to a live mesh and keeps track of what is down and why.

    An interface is up when its node is not crashed and its link is neither downed by a
    link-down nor cut by the partition in force."""

    def __init__(self, mesh: Mesh, backend: Backend, topo: Topology) -> None:
        self.mesh = mesh
        self.backend = backend
        self.topo = topo
        self.downed: set[frozenset[str]] = set()  # links down by link-down events
        self.cut: set[frozenset[str]] = set()  # links down by the partition in force
        self.crashed: set[str] = set()
        self.groups: tuple[tuple[str, ...], ...] | None = None
        self.mtu = backend.mtu or 1500

    # --- interface state ------------------------------------------------------

    def _should_be_up(self, node: str, iface: dict[str, Any]) -> bool:
        if node in self.crashed:
            return False
        peer = iface.get("peer")
        if peer is None:
            return True  # a shared segment: partitions never split one (parse time)
        key = link_key(node, peer)
        return key not in self.downed and key not in self.cut

    def _set(self, node: str, ifnames: Sequence[str], up: bool) -> list[str]:
        """Set interfaces up/down in node's namespace; returns those changed."""
        if not ifnames:
            return []
        ipr = self.mesh.netlink(node)
        links = {link.get_attr("IFLA_IFNAME"): link for link in ipr.get_links()}
        changed = []
        for ifname in ifnames:
            link = links.get(ifname)
            if link is None:
                raise MeshstressError(f"interface {ifname} of node {node} is gone")
            if bool(link["flags"] & 1) == up:
                continue
            ipr.link("set", index=link["index"], state="up" if up else "down")
            changed.append(ifname)
        return changed

    def _links_down(self, links: Sequence[Link]) -> dict[str, list[str]]:
        done: dict[str, list[str]] = {}
        for a, b in links:
            for node, ifname in link_interfaces(self.mesh.state.interfaces, a, b):
                if self._set(node, [ifname], up=False):
                    done.setdefault(node, []).append(ifname)
        return done

    def _sync_up(self, nodes: Sequence[str]) -> dict[str, list[str]]:
        """Bring up every interface of `nodes` that should be up; restore routes."""
        done: dict[str, list[str]] = {}
        for node in dict.fromkeys(nodes):
            want = [
                i["ifname"]
                for i in self.mesh.state.interfaces.get(node, [])
                if self._should_be_up(node, i)
            ]
            changed = self._set(node, want, up=True)
            if changed:
                done[node] = changed
                self.backend.links_up(self.mesh, self.topo, node)
        return done

    # --- actions ------------------------------------------------------------------

    def apply(self, event: Event) -> dict[str, Any]:
        """Apply `event` now; return a JSON-ready record of what was done."""
        start = time.monotonic()
        handler = getattr(self, "_" + event.action.replace("-", "_"), None)
        if handler is None:
            raise MeshstressError(f"unknown event action {event.action!r}")
        detail: dict[str, Any] = handler(event)
        now = time.monotonic()
        return {
            "at": event.at,
            "action": event.action,
            "target": target(event),
            "t": now,
            "took_s": now - start,
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

    def _link_down(self, event: Event) -> dict[str, Any]:
        a, b = self._need_link(event)
        self.downed.add(link_key(a, b))
        self.cut.discard(link_key(a, b))  # a heal must not bring it back now
        return {"down": self._links_down([(a, b)])}

    def _link_up(self, event: Event) -> dict[str, Any]:
        a, b = self._need_link(event)
        self.downed.discard(link_key(a, b))
        self.cut.discard(link_key(a, b))
        return {"up": self._sync_up([a, b])}

    def _node_crash(self, event: Event) -> dict[str, Any]:
        node = self._need_node(event)
        role = self.backend.role
        before = {p.pid for p in self.mesh.state.processes if p.node == node and p.role == role}
        self.crashed.add(node)
        # Freeze the daemons first (SIGSTOP), then take the interfaces down, then SIGKILL:
        # a crashed node sends nothing. A daemon left running while its interfaces go down
        # one by one (0.8-1.7 s for a 78-link hub) reacts on the ones still up, with
        # retractions and requests a crashed node never sends.
        freeze_processes(live_records(self.mesh, node, role) if role else [])
        down = self._set(
            node, [i["ifname"] for i in self.mesh.state.interfaces.get(node, [])], False
        )
        self.backend.stop_node(self.mesh, node, kill=True)
        return {"down": down, "killed": sorted(before)}

    def _node_restart(self, event: Event) -> dict[str, Any]:
        node = self._need_node(event)
        self.crashed.discard(node)
        up = self._sync_up([node]).get(node, [])
        role = self.backend.role
        before = {p.pid for p in self.mesh.state.processes if p.node == node and p.role == role}
        self.backend.start_node(self.mesh, self.topo, node)
        after = {p.pid for p in self.mesh.state.processes if p.node == node and p.role == role}
        return {"up": up, "started": sorted(after - before)}

    def _partition(self, event: Event) -> dict[str, Any]:
        if event.groups is None:
            raise MeshstressError("partition event without groups")
        healed = self._heal(event)["up"] if self.cut else {}
        cuts = partition_cuts(self.topo, event.groups)
        fresh = [(a, b) for a, b in cuts if link_key(a, b) not in self.downed]
        self.cut = {link_key(a, b) for a, b in fresh}
        self.groups = event.groups
        down = self._links_down(fresh)
        detail: dict[str, Any] = {"cut": [f"{a}-{b}" for a, b in fresh], "down": down}
        if healed:
            detail["healed_first"] = healed
        return detail

    def _heal(self, event: Event) -> dict[str, Any]:
        nodes = sorted({n for key in self.cut for n in key})
        restored = sorted("-".join(sorted(key)) for key in self.cut)
        self.cut = set()
        self.groups = None
        return {"restored": restored, "up": self._sync_up(nodes)}

    def _impair(self, event: Event) -> dict[str, Any]:
        a, b = self._need_link(event)
        ends = link_interfaces(self.mesh.state.interfaces, a, b)
        detail: dict[str, Any] = {}
        for (node, ifname), imp, direction in ((ends[0], event.ab, f"{a}->{b}"),
                                               (ends[1], event.ba, f"{b}->{a}")):  # fmt: skip
            if imp is None:
                continue
            ipr = self.mesh.netlink(node)
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                raise MeshstressError(f"interface {ifname} of node {node} is gone")
            if not imp.is_ideal():  # as the builder does: netem acts per packet
                impair.disable_offloads(self.mesh.ethtool(node), ifname)
            impair.replace(ipr, found[0], imp, mtu=self.mtu)
            detail[direction] = {"ifname": ifname, "impairment": impair.describe(imp)}
        return detail


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
    "late_s" (how long after its time the event began). Returns early, without applying
    the rest, when `stop` is set."""
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
        record["late_s"] = began - due
        records.append(record)
    return records
