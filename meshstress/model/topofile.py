"""Topology files: meshstress TOML (read and write) and meshnet-lab JSON (read).

`load(path)` picks the reader by suffix. Every problem raises
`InputError(source, field, message)` naming the file and the field path, e.g.
`links[3].loss` or `segments[0].nodes[1]`. The format is described in
docs/topology.md.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import tomllib
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from meshstress.errors import InputError
from meshstress.model import units
from meshstress.model.topology import (
    DEFAULT_PREFIX,
    LINK_MODELS,
    ROUTINGS,
    GilbertElliott,
    Impairment,
    Link,
    Node,
    Segment,
    Topology,
    name_problem,
    simple_gilbert,
)

__all__ = [
    "dumps_toml",
    "load",
    "load_meshnet_json",
    "loads_meshnet_json",
    "loads_toml",
    "meshnet_to_topology",
]

_ROOT_KEYS = ("topology", "routing", "nodes", "links", "segments")
_TOPOLOGY_KEYS = ("name", "prefix", "link_model", "routing")
_IMPAIR_KEYS = (
    "loss",
    "delay",
    "jitter",
    "rate",
    "loss_burst",
    "gemodel",
    "duplicate",
    "corrupt",
    "reorder",
    "reorder_gap",
    "queue",
)
_GEMODEL_KEYS = ("p", "r", "bad_loss", "good_loss")
_NODE_KEYS = ("name", "label", "routing", "pos")
_LINK_KEYS = ("a", "b", *_IMPAIR_KEYS, "model", "type", "a_to_b", "b_to_a")
_SEGMENT_KEYS = ("name", "nodes", *_IMPAIR_KEYS)


# --- entry points ------------------------------------------------------------


def load(path: str | Path) -> Topology:
    """Read a topology file: `.toml` (meshstress format) or `.json` (meshnet-lab)."""
    source = str(path)
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise InputError(
            source,
            "file",
            f"unknown topology file type {p.suffix or '(none)'!r}; "
            "use .toml (meshstress) or .json (meshnet-lab)",
        )
    text = read_text(p, source)
    if suffix == ".toml":
        return loads_toml(text, source)
    return loads_meshnet_json(text, source)


def read_text(path: Path, source: str) -> str:
    """A UTF-8 input file's text; a missing or unreadable file is an InputError ("file")."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(source, "file", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(source, "file", f"cannot read: {_one_line(str(exc))}") from None
    except ValueError:  # a NUL in the path: no file system call takes one
        raise InputError(source, "file", "cannot read: the path contains a NUL character") from None


def loads_toml(text: str, source: str = "<memory>") -> Topology:
    """Parse and validate a meshstress TOML topology."""
    return _from_toml_data(toml_data(text, source), source)


def toml_data(text: str, source: str) -> dict[str, Any]:
    """tomllib.loads, with a syntax error as one InputError line (field "toml")."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = _one_line(str(exc))
        if "end of document" in message:
            line = text.count("\n") + 1
            column = len(text) - text.rfind("\n")
            message += f" (line {line}, column {column})"
        raise InputError(source, "toml", f"syntax error: {message}") from None
    except RecursionError:
        raise InputError(source, "toml", "syntax error: nested too deeply") from None
    return data


def load_meshnet_json(path: str | Path) -> Topology:
    """Read a meshnet-lab JSON file (e.g. the Freifunk maps)."""
    source = str(path)
    return loads_meshnet_json(read_text(Path(path), source), source)


def loads_meshnet_json(text: str, source: str = "<memory>", name: str | None = None) -> Topology:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(source, "json", f"syntax error: {_one_line(str(exc))}") from None
    except RecursionError:
        raise InputError(source, "json", "syntax error: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        raise InputError(source, "json", f"cannot read: {_one_line(str(exc))}") from None
    return meshnet_to_topology(data, source, name)


# --- helpers -------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _stem(source: str) -> str:
    if source.startswith("<"):
        return "topology"
    return Path(source).stem or "topology"


def _show(value: object) -> str:
    """A short rendering of a bad value for a message."""
    text = (
        json.dumps(value, ensure_ascii=False, default=str)
        if not isinstance(value, float)
        else repr(value)
    )
    text = _one_line(text)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


class _Ctx:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, message: str) -> InputError:
        return InputError(self.source, field, _one_line(message))

    def table(self, value: object, field: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, f"expected a table, got {_type_name(value)}")
        return value

    def keys(self, table: dict[str, Any], allowed: tuple[str, ...], field: str) -> None:
        for key in table:
            if key not in allowed:
                where = f"{field}.{key}" if field else key
                hint = ""
                if field in ("topology", "routing") and key in ("nodes", "links", "segments"):
                    hint = f"; a root key like {key} = [...] must come before the first [table]"
                raise self.fail(where, f"unknown key (allowed: {', '.join(allowed)}){hint}")

    def string(self, value: object, field: str) -> str:
        if not isinstance(value, str):
            raise self.fail(field, f"expected a string, got {_type_name(value)}")
        return value

    def choice(self, value: object, field: str, choices: tuple[str, ...]) -> str:
        text = self.string(value, field)
        if text not in choices:
            raise self.fail(field, f"must be one of {', '.join(choices)}, got {_show(text)}")
        return text

    def name(self, value: object, field: str, what: str = "name") -> str:
        text = self.string(value, field)
        problem = name_problem(text)
        if problem:
            raise self.fail(field, f"{what} {_show(text)} {problem}")
        return text

    def unit(self, value: object, field: str, parse: Callable[[object], Any]) -> Any:
        try:
            return parse(value)
        except (ValueError, OverflowError) as exc:
            raise self.fail(field, str(exc)) from None

    def scalars(self, value: object, field: str, nested: bool = True) -> dict[str, Any]:
        """A free-form settings table: scalar values (checked later by the backends).

        With `nested`, a key named after a routing backend (e.g. `babeld`) may hold
        a table of scalars: settings for that backend only."""
        table = self.table(value, field)
        out: dict[str, Any] = {}
        for key, item in table.items():
            where = f"{field}.{key}"
            if isinstance(item, dict) and nested and key in ROUTINGS:
                out[key] = self.scalars(item, where, nested=False)
                continue
            if isinstance(item, dict | list):
                hint = ""
                if field == "routing" and key in ("nodes", "links", "segments"):
                    hint = f"; a root key like {key} = [...] must come before the first [table]"
                elif isinstance(item, dict) and nested:
                    hint = f" (tables are allowed only for backends: {', '.join(ROUTINGS)})"
                raise self.fail(
                    where,
                    f"expected a scalar (string, number, boolean), got {_type_name(item)}{hint}",
                )
            if isinstance(item, float) and math.isnan(item):
                raise self.fail(where, "nan is not a usable setting")
            if not isinstance(item, str | int | float | bool):
                raise self.fail(
                    where,
                    f"expected a string, number or boolean, got {_type_name(item)}",
                )
            out[key] = item
        return out

    def impairment(
        self,
        table: dict[str, Any],
        field: str,
        base: Impairment | None = None,
        check: bool = True,
    ) -> Impairment:
        """Read the impairment keys of `table`, starting from `base` (keys not in
        `table` keep base's value). `gemodel` in `table` replaces base's `loss` and
        `loss_burst`, and `loss`/`loss_burst` replace base's `gemodel`. With `check`,
        the rules between fields (bursts need loss, reorder needs delay) are enforced
        on the result; without, only each value itself is checked."""
        b = base or Impairment()
        pre = f"{field}." if field else ""
        values: dict[str, Any] = {}
        if "gemodel" in table:
            for other in ("loss", "loss_burst"):
                if other in table:
                    raise self.fail(
                        pre + "gemodel",
                        f"gemodel and {other} are two ways to give loss: use one",
                    )
            values["gemodel"] = self.gemodel(table["gemodel"], pre + "gemodel")
            values["loss"] = 0.0
            values["loss_burst"] = None
        elif "loss" in table or "loss_burst" in table:
            values["gemodel"] = None
        for key, parse in (
            ("loss", units.parse_fraction),
            ("delay", units.parse_duration),
            ("jitter", units.parse_duration),
            ("rate", units.parse_rate),
            ("duplicate", units.parse_fraction),
            ("corrupt", units.parse_fraction),
            ("reorder", units.parse_fraction),
        ):
            if key in table:
                values[key] = self.unit(table[key], pre + key, parse)
        if "loss_burst" in table:
            values["loss_burst"] = self.number(
                table["loss_burst"], pre + "loss_burst", "a mean burst length in packets", 1
            )
        for key, what in (("reorder_gap", "a gap in packets"), ("queue", "a queue in packets")):
            if key in table:
                values[key] = self.integer(table[key], pre + key, what, 1)
        imp = replace(b, **values)
        if check:
            self.check_impairment(imp, pre)
        return imp

    def check_impairment(self, imp: Impairment, pre: str) -> None:
        """Rules between fields; `pre` is the field prefix ("links[0]." or "")."""
        if imp.loss_burst is not None:
            if imp.loss == 0:
                raise self.fail(pre + "loss_burst", "needs a loss above 0% (loss = ...)")
            try:
                simple_gilbert(imp.loss, imp.loss_burst)
            except ValueError as exc:
                raise self.fail(pre + "loss_burst", str(exc)) from None
        if imp.reorder and imp.delay == 0:
            raise self.fail(
                pre + "reorder",
                "reordering needs a delay above 0 (netem reorders by sending some packets "
                "without the delay the others get)",
            )
        if imp.reorder_gap is not None and imp.reorder == 0:
            raise self.fail(pre + "reorder_gap", "needs reorder above 0%")

    def gemodel(self, value: object, field: str) -> GilbertElliott:
        table = self.table(value, field)
        self.keys(table, _GEMODEL_KEYS, field)
        got: dict[str, float] = {}
        for key in _GEMODEL_KEYS:
            if key in table:
                got[key] = self.unit(table[key], f"{field}.{key}", units.parse_fraction)
            elif key in ("p", "r"):
                raise self.fail(
                    f"{field}.{key}",
                    "missing (gemodel needs p and r; bad_loss and good_loss are optional)",
                )
        return GilbertElliott(**got)

    def number(self, value: object, field: str, what: str, minimum: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(field, f"expected {what}, got {_type_name(value)}")
        if not math.isfinite(value) or value < minimum:
            raise self.fail(field, f"must be at least {minimum:g}, got {_show(value)}")
        return float(value)

    def integer(self, value: object, field: str, what: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"expected {what} (an integer), got {_type_name(value)}")
        if value < minimum:
            raise self.fail(field, f"must be at least {minimum}, got {value}")
        if value > 2**32 - 1:
            raise self.fail(field, f"must be below 2^32, got {value}")
        return value


def _prefix_capacity(net: ipaddress.IPv4Network) -> int:
    return net.num_addresses - 2 if net.prefixlen <= 30 else net.num_addresses


def _check_prefix(ctx: _Ctx, value: object, field: str) -> str:
    text = ctx.string(value, field)
    try:
        ipaddress.IPv4Network(text, strict=False)
    except ValueError as exc:
        raise ctx.fail(field, f'not an IPv4 network like "10.201.0.0/16": {exc}') from None
    if "/" not in text:
        raise ctx.fail(field, f'needs a prefix length, like "{text}/16"')
    return text


def _check_whole(ctx: _Ctx, topo: Topology, prefix_field: str) -> None:
    """Checks that need the whole topology: the prefix is big enough."""
    net = ipaddress.IPv4Network(topo.prefix, strict=False)
    cap = _prefix_capacity(net)
    if cap < len(topo.nodes):
        raise ctx.fail(
            prefix_field,
            f"{topo.prefix} holds {cap} addresses, too few for {len(topo.nodes)} nodes",
        )


class _LinkIndex:
    """Rejects self-links and duplicate links (either orientation)."""

    def __init__(self, ctx: _Ctx) -> None:
        self.ctx = ctx
        self.seen: dict[frozenset[str], int] = {}

    def add(self, a: str, b: str, index: int, field: str, where: str) -> None:
        if a == b:
            raise self.ctx.fail(field, f"link from {a} to itself")
        pair = frozenset((a, b))
        if pair in self.seen:
            raise self.ctx.fail(
                field,
                f"duplicate link between {a} and {b} (already {where}[{self.seen[pair]}])",
            )
        self.seen[pair] = index


# --- TOML reading ----------------------------------------------------------------


def _from_toml_data(data: dict[str, Any], source: str) -> Topology:
    ctx = _Ctx(source)
    ctx.keys(data, _ROOT_KEYS, "")

    head = ctx.table(data.get("topology", {}), "topology")
    ctx.keys(head, _TOPOLOGY_KEYS, "topology")
    name = _stem(source)
    if "name" in head:
        name = ctx.string(head["name"], "topology.name")
        if not name.strip():
            raise ctx.fail("topology.name", "must not be empty")
    prefix = DEFAULT_PREFIX
    if "prefix" in head:
        prefix = _check_prefix(ctx, head["prefix"], "topology.prefix")
    default_model = "veth"
    if "link_model" in head:
        default_model = ctx.choice(head["link_model"], "topology.link_model", LINK_MODELS)
    routing = "none"
    if "routing" in head:
        routing = ctx.choice(head["routing"], "topology.routing", ROUTINGS)
    routing_settings: dict[str, Any] = {}
    if "routing" in data:
        routing_settings = ctx.scalars(data["routing"], "routing")

    # nodes
    raw_nodes = data.get("nodes")
    if raw_nodes is None:
        raise ctx.fail("nodes", 'missing: declare every node, e.g. nodes = ["a", "b"]')
    if not isinstance(raw_nodes, list):
        raise ctx.fail("nodes", f"expected an array, got {_type_name(raw_nodes)}")
    if not raw_nodes:
        raise ctx.fail("nodes", "empty topology: no nodes")
    nodes: list[Node] = []
    index_of: dict[str, int] = {}
    for i, raw in enumerate(raw_nodes):
        field = f"nodes[{i}]"
        if isinstance(raw, str):
            node = Node(name=ctx.name(raw, field, "node name"))
        else:
            table = ctx.table(raw, field)
            ctx.keys(table, _NODE_KEYS, field)
            if "name" not in table:
                raise ctx.fail(f"{field}.name", "missing")
            node = Node(name=ctx.name(table["name"], f"{field}.name", "node name"))
            if "label" in table:
                node.label = ctx.string(table["label"], f"{field}.label")
            if "routing" in table:
                node.settings["routing"] = ctx.scalars(table["routing"], f"{field}.routing")
            if "pos" in table:
                node.pos = _pos(ctx, table["pos"], f"{field}.pos")
            field = f"{field}.name"
        if node.name in index_of:
            raise ctx.fail(
                field, f"duplicate node name {node.name} (already nodes[{index_of[node.name]}])"
            )
        index_of[node.name] = i
        nodes.append(node)

    # links
    raw_links = data.get("links", [])
    if not isinstance(raw_links, list):
        raise ctx.fail("links", f"expected an array of tables, got {_type_name(raw_links)}")
    links: list[Link] = []
    pairs = _LinkIndex(ctx)
    for i, raw in enumerate(raw_links):
        field = f"links[{i}]"
        table = ctx.table(raw, field)
        ctx.keys(table, _LINK_KEYS, field)
        ends = []
        for end in ("a", "b"):
            if end not in table:
                raise ctx.fail(f"{field}.{end}", "missing")
            value = ctx.string(table[end], f"{field}.{end}")
            if value not in index_of:
                raise ctx.fail(f"{field}.{end}", f"unknown node {_show(value)}")
            ends.append(value)
        a, b = ends
        pairs.add(a, b, i, f"{field}.b", "links")
        # the shared values are checked as a whole only where a direction uses them as is
        both = ctx.impairment(table, field, check=not ("a_to_b" in table and "b_to_a" in table))
        ab = both
        ba = both
        for key, which in (("a_to_b", "ab"), ("b_to_a", "ba")):
            if key in table:
                sub = ctx.table(table[key], f"{field}.{key}")
                ctx.keys(sub, _IMPAIR_KEYS, f"{field}.{key}")
                imp = ctx.impairment(sub, f"{field}.{key}", both)
                if which == "ab":
                    ab = imp
                else:
                    ba = imp
        model = default_model
        if "model" in table:
            model = ctx.choice(table["model"], f"{field}.model", LINK_MODELS)
        kind = None
        if "type" in table:
            kind = ctx.string(table["type"], f"{field}.type")
        links.append(Link(a=a, b=b, ab=ab, ba=ba, model=model, kind=kind))

    # segments
    raw_segments = data.get("segments", [])
    if not isinstance(raw_segments, list):
        raise ctx.fail("segments", f"expected an array of tables, got {_type_name(raw_segments)}")
    segments: list[Segment] = []
    seg_index: dict[str, int] = {}
    for i, raw in enumerate(raw_segments):
        field = f"segments[{i}]"
        table = ctx.table(raw, field)
        ctx.keys(table, _SEGMENT_KEYS, field)
        if "name" not in table:
            raise ctx.fail(f"{field}.name", "missing")
        seg_name = ctx.name(table["name"], f"{field}.name", "segment name")
        if seg_name in seg_index:
            raise ctx.fail(
                f"{field}.name",
                f"duplicate segment name {seg_name} (already segments[{seg_index[seg_name]}])",
            )
        seg_index[seg_name] = i
        if "nodes" not in table:
            raise ctx.fail(f"{field}.nodes", "missing")
        members_raw = table["nodes"]
        if not isinstance(members_raw, list):
            raise ctx.fail(f"{field}.nodes", f"expected an array, got {_type_name(members_raw)}")
        members: list[str] = []
        for j, m in enumerate(members_raw):
            mf = f"{field}.nodes[{j}]"
            member = ctx.string(m, mf)
            if member not in index_of:
                raise ctx.fail(mf, f"unknown node {_show(member)}")
            if member in members:
                raise ctx.fail(mf, f"node {member} is already a member")
            members.append(member)
        if len(members) < 2:
            raise ctx.fail(
                f"{field}.nodes", f"a segment needs at least 2 members, got {len(members)}"
            )
        segments.append(
            Segment(name=seg_name, members=members, egress=ctx.impairment(table, field))
        )

    topo = Topology(
        name=name,
        nodes=nodes,
        links=links,
        segments=segments,
        prefix=prefix,
        routing=routing,
        routing_settings=routing_settings,
        source=source,
    )
    _check_whole(ctx, topo, "topology.prefix")
    return topo


def _pos(ctx: _Ctx, value: object, field: str) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise ctx.fail(field, f"expected [x, y], got {_show(value)}")
    out = []
    for k, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ctx.fail(f"{field}[{k}]", f"expected a finite number, got {_show(v)}")
        out.append(float(v))
    return (out[0], out[1])


# --- meshnet-lab JSON ---------------------------------------------------------------


def meshnet_to_topology(
    data: object, source: str = "<memory>", name: str | None = None
) -> Topology:
    """Convert parsed meshnet-lab JSON (`nodes`, `links`) into a Topology.

    Node name = str(id), label = the JSON `name`, pos = (x, y). A link's
    `source_tq` is the quality of source->target, `target_tq` of target->source;
    loss = 1 - tq, a missing tq means no loss. Keys meshstress does not use
    (networkx's `directed`, `graph`, a node's `type`, ...) are ignored."""
    ctx = _Ctx(source)
    if not isinstance(data, dict):
        raise ctx.fail("json", f"expected an object with nodes and links, got {_type_name(data)}")
    raw_links = data.get("links", [])
    if not isinstance(raw_links, list):
        raise ctx.fail("links", f"expected an array, got {_type_name(raw_links)}")
    nodes: list[Node] = []
    ids: dict[str, int] = {}
    if "nodes" in data:
        raw_nodes = data["nodes"]
        if not isinstance(raw_nodes, list):
            raise ctx.fail("nodes", f"expected an array, got {_type_name(raw_nodes)}")
        for i, raw in enumerate(raw_nodes):
            field = f"nodes[{i}]"
            table = ctx.table(raw, field)
            if "id" not in table:
                raise ctx.fail(f"{field}.id", "missing")
            nid = _json_id(ctx, table["id"], f"{field}.id")
            if nid in ids:
                raise ctx.fail(
                    f"{field}.id", f"duplicate node id {nid} (already nodes[{ids[nid]}])"
                )
            ids[nid] = i
            node = Node(name=nid)
            if "name" in table and table["name"] is not None:
                node.label = ctx.string(table["name"], f"{field}.name")
            has_x = table.get("x") is not None
            has_y = table.get("y") is not None
            if has_x != has_y:
                missing = "y" if has_x else "x"
                raise ctx.fail(f"{field}.{missing}", "missing (x and y come together)")
            if has_x:
                node.pos = (
                    _json_num(ctx, table["x"], f"{field}.x"),
                    _json_num(ctx, table["y"], f"{field}.y"),
                )
            nodes.append(node)
    else:
        # no node list: the link endpoints, numerically if all are integers
        seen: dict[str, object] = {}
        for i, raw in enumerate(raw_links):
            table = ctx.table(raw, f"links[{i}]")
            for end in ("source", "target"):
                if end not in table:
                    raise ctx.fail(f"links[{i}].{end}", "missing")
                nid = _json_id(ctx, table[end], f"links[{i}].{end}")
                seen.setdefault(nid, table[end])
        order = list(seen)
        if all(isinstance(v, int) for v in seen.values()):
            order.sort(key=lambda k: int(k))
        for i, nid in enumerate(order):
            ids[nid] = i
            nodes.append(Node(name=nid))
    if not nodes:
        raise ctx.fail("nodes", "empty topology: no nodes")

    links: list[Link] = []
    pairs = _LinkIndex(ctx)
    for i, raw in enumerate(raw_links):
        field = f"links[{i}]"
        table = ctx.table(raw, field)
        ends = []
        for end in ("source", "target"):
            if end not in table:
                raise ctx.fail(f"{field}.{end}", "missing")
            nid = _json_id(ctx, table[end], f"{field}.{end}")
            if nid not in ids:
                raise ctx.fail(f"{field}.{end}", f"unknown node id {nid}")
            ends.append(nid)
        a, b = ends
        pairs.add(a, b, i, f"{field}.target", "links")
        ab = Impairment(loss=_tq_loss(ctx, table.get("source_tq"), f"{field}.source_tq"))
        ba = Impairment(loss=_tq_loss(ctx, table.get("target_tq"), f"{field}.target_tq"))
        kind = None
        if table.get("type") is not None:
            kind = ctx.string(table["type"], f"{field}.type")
        links.append(Link(a=a, b=b, ab=ab, ba=ba, kind=kind))

    topo = Topology(name=name or _stem(source), nodes=nodes, links=links, source=source)
    _check_whole(ctx, topo, "nodes")
    return topo


def _json_id(ctx: _Ctx, value: object, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ctx.fail(field, f"expected an integer or string id, got {_type_name(value)}")
    return ctx.name(str(value), field, "node id")


def _json_num(ctx: _Ctx, value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ctx.fail(field, f"expected a finite number, got {_show(value)}")
    return float(value)


def _tq_loss(ctx: _Ctx, value: object, field: str) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ctx.fail(field, f"expected a number between 0 and 1, got {_type_name(value)}")
    if not (0.0 <= value <= 1.0):  # also rejects nan
        raise ctx.fail(field, f"must be between 0 and 1, got {_show(value)}")
    return 1.0 - float(value)


# --- meshnet-lab JSON writing ----------------------------------------------------------


def dumps_meshnet_json(topology: Topology) -> str:
    """Write `topology` as meshnet-lab JSON (`network.py apply FILE` builds it, and
    loads_meshnet_json reads it back): nodes (id, label as `name`, x/y) and links, a
    lossy direction as its tq (1 - loss). What that format cannot hold (shared segments,
    delay, jitter, rate, bursts, routing, prefix) raises ValueError."""
    t = topology
    if t.segments or any(link.model == "segment" for link in t.links):
        raise ValueError("meshnet-lab JSON has no shared segments")
    nodes: list[dict[str, Any]] = []
    for n in t.nodes:
        node: dict[str, Any] = {"id": n.name}
        if n.label is not None:
            node["name"] = n.label
        if n.pos is not None:
            node["x"], node["y"] = n.pos
        nodes.append(node)
    links: list[dict[str, Any]] = []
    for link in t.links:
        row: dict[str, Any] = {"source": link.a, "target": link.b}
        for key, imp in (("source_tq", link.ab), ("target_tq", link.ba)):
            if imp != Impairment(loss=imp.loss):
                raise ValueError(
                    f"link {link.a}-{link.b}: meshnet-lab JSON holds only loss (as tq)"
                )
            if imp.loss:
                row[key] = 1.0 - imp.loss
        if link.kind is not None:
            row["type"] = link.kind
        links.append(row)
    return json.dumps({"nodes": nodes, "links": links}, indent=1) + "\n"


# --- TOML writing --------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _str(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            raise ValueError(f"cannot write a lone surrogate in {text!r}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _str(key)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            raise ValueError("cannot write nan")
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text
    if isinstance(value, str):
        return _str(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return _inline(value)
    raise ValueError(f"cannot write {type(value).__name__} to TOML")


def _inline(table: dict[str, Any]) -> str:
    if not table:
        return "{}"
    return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in table.items()) + " }"


def _gemodel_table(ge: GilbertElliott) -> dict[str, str]:
    out = {"p": units.format_fraction(ge.p), "r": units.format_fraction(ge.r)}
    if ge.bad_loss != 1.0:
        out["bad_loss"] = units.format_fraction(ge.bad_loss)
    if ge.good_loss != 0.0:
        out["good_loss"] = units.format_fraction(ge.good_loss)
    return out


def _count(x: float) -> int | float:
    return int(x) if x == int(x) and abs(x) < 2**53 else x


def _impair_fields(imp: Impairment) -> dict[str, Any]:
    """The TOML keys of `imp` that differ from "off", in _IMPAIR_KEYS order."""
    out: dict[str, Any] = {}
    if imp.loss:
        out["loss"] = units.format_fraction(imp.loss)
    if imp.delay:
        out["delay"] = units.format_duration(imp.delay)
    if imp.jitter:
        out["jitter"] = units.format_duration(imp.jitter)
    if imp.rate is not None:
        out["rate"] = units.format_rate(imp.rate)
    if imp.loss_burst is not None:
        out["loss_burst"] = _count(imp.loss_burst)
    if imp.gemodel is not None:
        out["gemodel"] = _gemodel_table(imp.gemodel)
    for key in ("duplicate", "corrupt", "reorder"):
        if getattr(imp, key):
            out[key] = units.format_fraction(getattr(imp, key))
    for key in ("reorder_gap", "queue"):
        if getattr(imp, key) is not None:
            out[key] = getattr(imp, key)
    return out


def _link_table(link: Link, default_model: str) -> dict[str, Any]:
    """Values both directions share go on the link; the rest into a_to_b / b_to_a (a key
    missing there is "off", since the link level holds only shared keys)."""
    table: dict[str, Any] = {"a": link.a, "b": link.b}
    fa = _impair_fields(link.ab)
    fb = _impair_fields(link.ba)
    ab: dict[str, Any] = {}
    ba: dict[str, Any] = {}
    for f in _IMPAIR_KEYS:
        x = fa.get(f)
        y = fb.get(f)
        if x == y:
            if x is not None:
                table[f] = x
            continue
        if x is not None:
            ab[f] = x
        if y is not None:
            ba[f] = y
    if link.model != default_model:
        table["model"] = link.model
    if link.kind is not None:
        table["type"] = link.kind
    if ab:
        table["a_to_b"] = ab
    if ba:
        table["b_to_a"] = ba
    return table


def dumps_toml(topology: Topology) -> str:
    """Write `topology` in the meshstress TOML format; loads_toml reads it back equal.

    The output uses inline tables, one node/link/segment per line, so that
    generated files of a thousand nodes stay readable."""
    t = topology
    models = Counter(link.model for link in t.links)
    default_model = models.most_common(1)[0][0] if models else "veth"
    lines = [
        f"# meshstress topology: {len(t.nodes)} nodes, {len(t.links)} links, "
        f"{len(t.segments)} segments"
    ]
    head = {"name": t.name, "prefix": t.prefix, "routing": t.routing, "link_model": default_model}
    lines.append(f"topology = {_inline(head)}")

    plain = all(n.label is None and not n.settings and n.pos is None for n in t.nodes)
    if plain:
        lines.append("nodes = [")
        names = [_str(n.name) for n in t.nodes]
        for k in range(0, len(names), 10):
            lines.append("  " + ", ".join(names[k : k + 10]) + ",")
        lines.append("]")
    else:
        lines.append("nodes = [")
        for n in t.nodes:
            table: dict[str, Any] = {"name": n.name}
            if n.label is not None:
                table["label"] = n.label
            for key in n.settings:
                if key != "routing":
                    raise ValueError(f"node {n.name}: cannot write setting {key!r}")
            if "routing" in n.settings:
                table["routing"] = n.settings["routing"]
            if n.pos is not None:
                table["pos"] = [float(n.pos[0]), float(n.pos[1])]
            lines.append(f"  {_inline(table)},")
        lines.append("]")

    if t.links:
        lines.append("links = [")
        for link in t.links:
            lines.append(f"  {_inline(_link_table(link, default_model))},")
        lines.append("]")
    if t.segments:
        lines.append("segments = [")
        for seg in t.segments:
            seg_table: dict[str, Any] = {"name": seg.name, "nodes": list(seg.members)}
            seg_table.update(_impair_fields(seg.egress))
            lines.append(f"  {_inline(seg_table)},")
        lines.append("]")
    if t.routing_settings:
        lines.append("")
        lines.append("[routing]")
        for key, value in t.routing_settings.items():
            lines.append(f"{_key(key)} = {_value(value)}")
    return "\n".join(lines) + "\n"
