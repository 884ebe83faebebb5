"""Fuzzing as tests (issue 11, item 5): topology TOML, meshnet-lab JSON, scenario TOML and
the command line's arguments. Every example ends in success (exit 0), or in one line
(exit 2 for bad input; 1 or 3 for a refusal that is not about the input); never a
traceback; and a rejected input creates nothing: no namespace, no link in the root
namespace, no state file, no run folder.

The bulk runs in-process (parsers, and the CLI through click's CliRunner); a handful of
bad inputs go through a real `python -m meshstress` subprocess. Good inputs are never
built: `up`'s bring_up and `run`'s runner.run/run_in_lab are replaced by a stand-in that
stops the command there (an "accepted" input), and the state file, which is written
before the first kernel object exists, is a tripwire that fails the test if reached.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from meshstress import runner
from meshstress.build import netns, state
from meshstress.cli import cli
from meshstress.cli import host as hostcli
from meshstress.errors import InputError
from meshstress.model import scenario, topofile
from meshstress.procs import spec as ps
from meshstress.routing.settings import BACKEND_NAMES
from meshstress.stress import events
from meshstress.traffic import flows

FUZZ = settings(max_examples=500, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])  # fmt: skip
RUN_IDS = ("fz1", "fz2", "fzq")  # --run ids the CLI fuzzing may pass (checked in the kernel)

# ------------------------------------------------------------------ a small TOML writer

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _tstr(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _tkey(k: str) -> str:
    return k if _BARE.fullmatch(k) else _tstr(k)


def _tval(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _tstr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_tval(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_tkey(k)} = {_tval(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def dumps(data: dict[str, Any]) -> str:
    """TOML for `data`: every root key as `key = value` (tables inline)."""
    return "".join(f"{_tkey(k)} = {_tval(v)}\n" for k, v in data.items())


def test_toml_writer_round_trips() -> None:
    import tomllib

    data = {"a b": [1, 2.5, "x\"\\\n\x7f"], "t": {"u": True, "v": [{"w": -3}]}, "n": -1e300}
    assert tomllib.loads(dumps(data)) == data


# ------------------------------------------------------------------ value strategies

NODES = ("n0", "n1", "n2", "n8", "a", "b", "zz", "", "-x", "../n0", "n0/x")
WORDS = (
    "20ms", "0s", "-1s", "1e9s", "5%", "100%", "101%", "0.3", "10mbit", "1kbit", "0bit",
    "100pps", "1s", "30s", "2h", "veth", "wifi", "bridge", "babeld", "static", "none",
    "batmand", "batman-adv", "udp", "tcp", "ping", "link-down", "heal", "impair", "auto",
    "host", "lab", "10.201.0.0/16", "10.0.0.0/30", "300.1.1.1/8", "::1/64", "fifo",
    "traffic", "drops", "tcp_retrans", "batman", "yes", "off", "n0", "n1", "n2", "n8",
)  # fmt: skip
leaf = st.one_of(
    st.sampled_from(WORDS),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 70000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
tree = st.recursive(
    leaf,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=8,
)
any_key = st.text(max_size=8)


def table(keys: tuple[str, ...], value: st.SearchStrategy[Any] = tree,
          extra: tuple[str, ...] = ("bogus",)) -> st.SearchStrategy[dict[str, Any]]:  # fmt: skip
    """Tables drawing keys the parser knows (and a few it does not) with `value`s."""
    return st.dictionaries(st.sampled_from(keys + extra) | any_key, value, max_size=len(keys))


def table_of(**known: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Every known key optional with its own strategy, plus the odd unknown key."""
    return st.fixed_dictionaries({}, optional={**known, "bogus": tree})


@st.composite
def mutated(draw: Any, good: dict[str, Any], paths: dict[tuple[Any, ...], Any]) -> dict[str, Any]:
    """`good` (a valid input) with 1-3 of its fields (every key the parser knows, by
    path, and a few unknown ones) set to a drawn value or deleted: deep examples, where
    whole-garbage inputs stop at the first field."""
    data = copy.deepcopy(good)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(sorted(paths, key=repr)))
        parent: Any = data
        for step in path[:-1]:
            if isinstance(parent, dict) and step in parent:
                parent = parent[step]
            elif isinstance(parent, list) and isinstance(step, int) and step < len(parent):
                parent = parent[step]
            else:
                parent = None
                break
        last = path[-1]
        if isinstance(parent, dict):
            if draw(st.integers(0, 5)) == 0:
                parent.pop(last, None)
            else:
                parent[last] = draw(paths[path])
        elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
            parent[last] = draw(paths[path])
    return data


node = st.sampled_from(NODES) | st.text(max_size=6)
duration = st.sampled_from(("0s", "1s", "5s", "20ms", "30s", "-1s", "1e400s", "x")) | leaf
impair_value = st.sampled_from(("5%", "20ms", "10mbit", "0", "150%", "2ms", "x")) | leaf
impair = {k: impair_value for k in topofile._IMPAIR_KEYS if k != "gemodel"}
gemodel = table_of(**{k: impair_value for k in topofile._GEMODEL_KEYS}) | tree
impair["gemodel"] = gemodel

# ------------------------------------------------------------------ topology TOML

topo_nodes = st.lists(
    node | table_of(name=node, label=leaf, routing=tree, pos=st.lists(leaf, max_size=3)),
    max_size=5,
)
topo_link = table_of(
    a=node, b=node, model=st.sampled_from(("veth", "wifi", "x")) | leaf, type=leaf,
    a_to_b=table_of(**impair) | tree, b_to_a=table_of(**impair) | tree, **impair,
)  # fmt: skip
topo_segment = table_of(name=node, nodes=st.lists(node, max_size=4) | tree, **impair)
topo_routing = st.fixed_dictionaries(
    {}, optional={**{b: table(("hello_interval", "orig_interval"), leaf) for b in BACKEND_NAMES},
                  "hello_interval": leaf, "orig_interval": leaf, "bogus": tree},
)  # fmt: skip
topologies = table_of(
    topology=table_of(name=leaf, prefix=leaf, link_model=leaf,
                      routing=st.sampled_from(BACKEND_NAMES) | leaf),  # fmt: skip
    routing=topo_routing | tree,
    nodes=topo_nodes | tree,
    links=st.lists(topo_link, max_size=5) | tree,
    segments=st.lists(topo_segment, max_size=3) | tree,
)


GOOD_TOPOLOGY: dict[str, Any] = {
    "topology": {"name": "t", "prefix": "10.9.0.0/16", "routing": "babeld", "link_model": "veth"},
    "routing": {"hello_interval": "1s", "babeld": {"update_interval": "4s"}},
    "nodes": ["n0", {"name": "n1", "label": "one", "pos": [0.0, 1.0]}, "n2", "n8"],
    "links": [
        {"a": "n0", "b": "n1", "loss": "5%", "delay": "10ms", "rate": "1mbit"},
        {"a": "n1", "b": "n2", "a_to_b": {"loss": "1%"}, "b_to_a": {"delay": "2ms"},
         "gemodel": {"p": "1%", "r": "50%"}},
    ],
    "segments": [{"name": "air", "nodes": ["n2", "n8", "n0"], "loss": "1%"}],
}  # fmt: skip
_topo_paths: dict[tuple[Any, ...], Any] = {
    **{("topology", k): leaf for k in topofile._TOPOLOGY_KEYS + ("bogus",)},
    **{("routing", k): leaf | tree for k in ("hello_interval", "babeld", "bogus", "static")},
    **{("nodes", 1, k): leaf | tree for k in topofile._NODE_KEYS + ("bogus",)},
    ("nodes", 0): node | tree, ("nodes", 3): node,
    **{("links", 0, k): impair.get(k, leaf) for k in topofile._LINK_KEYS + ("bogus",)},
    **{("links", 1, k): impair.get(k, node) for k in topofile._LINK_KEYS},
    **{("links", 1, "a_to_b", k): impair[k] for k in topofile._IMPAIR_KEYS},
    **{("links", 1, "gemodel", k): impair_value for k in topofile._GEMODEL_KEYS + ("bogus",)},
    **{("segments", 0, k): impair.get(k, tree) for k in topofile._SEGMENT_KEYS + ("bogus",)},
    ("segments", 0, "nodes", 1): node,
    **{(k,): tree for k in topofile._ROOT_KEYS + ("bogus",)},
}  # fmt: skip
topologies = mutated(GOOD_TOPOLOGY, _topo_paths) | topologies


def test_good_topology_is_good() -> None:
    topofile.loads_toml(dumps(GOOD_TOPOLOGY), "t.toml")


def _one_line_error(exc: InputError, sources: tuple[str, ...]) -> None:
    text = str(exc)
    assert "\n" not in text and "\r" not in text, text
    assert text.startswith(tuple(f"{s}: " for s in sources)), text


@FUZZ
@given(topologies)
@example({"topology": {"name": "x"}, "nodes": ["n0", "n1"], "links": [{"a": "n0", "b": "n1"}]})
def test_fuzz_topology_toml(data: dict[str, Any]) -> None:
    text = dumps(data)
    try:
        topofile.loads_toml(text, "fz.toml")
    except InputError as exc:
        _one_line_error(exc, ("fz.toml",))


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_topology_toml_text(text: str) -> None:
    try:
        topofile.loads_toml(text, "fz.toml")
    except InputError as exc:
        _one_line_error(exc, ("fz.toml",))


# ------------------------------------------------------------------ meshnet-lab JSON

json_id = st.integers(-2, 6) | st.sampled_from(("n0", "a", "")) | leaf
meshnet = st.fixed_dictionaries(
    {},
    optional={
        "nodes": st.lists(table_of(id=json_id, name=leaf, x=leaf, y=leaf, type=leaf),
                          max_size=6) | tree,  # fmt: skip
        "links": st.lists(table_of(source=json_id, target=json_id, source_tq=leaf,
                                   target_tq=leaf, type=leaf), max_size=6) | tree,  # fmt: skip
        "directed": st.booleans(),
        "graph": tree,
    },
) | tree


GOOD_MESHNET: dict[str, Any] = {
    "directed": False,
    "nodes": [{"id": 0, "name": "a", "x": 1.0, "y": 2.0}, {"id": 1}, {"id": "c"}],
    "links": [{"source": 0, "target": 1, "source_tq": 0.5, "target_tq": 1},
              {"source": 1, "target": "c"}],
}  # fmt: skip
meshnet = mutated(GOOD_MESHNET, {
    **{("nodes", 0, k): json_id | leaf for k in ("id", "name", "x", "y", "bogus")},
    **{("links", 0, k): json_id | leaf for k in ("source", "target", "source_tq", "target_tq")},
    ("links", 1, "target"): json_id, ("nodes", 2): tree, ("links", 1): tree,
    ("nodes",): tree, ("links",): tree, ("graph",): tree,
}) | meshnet  # fmt: skip


@FUZZ
@given(meshnet)
@example({"nodes": [{"id": 0}, {"id": 1}], "links": [{"source": 0, "target": 1, "source_tq": 0.5}]})
def test_fuzz_meshnet_json(data: Any) -> None:
    text = json.dumps(data)  # NaN and Infinity as JSON's extensions, as json.loads reads them
    try:
        topofile.loads_meshnet_json(text, "fz.json")
    except InputError as exc:
        _one_line_error(exc, ("fz.json",))


# ------------------------------------------------------------------ scenario TOML

GOOD_TOPO = 'nodes = ["n0", "n1", "n2"]\n[[links]]\na = "n0"\nb = "n1"\n[[links]]\na = "n1"\nb = "n2"\n'
GOOD_JSON = json.dumps({"nodes": [{"id": 0}, {"id": 1}], "links": [{"source": 0, "target": 1}]})


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fuzzbase")
    (d / "good.toml").write_text(GOOD_TOPO)
    (d / "good.json").write_text(GOOD_JSON)
    (d / "bad.toml").write_text('nodes = ["n0"]\n[[links]]\na = "n0"\nb = "zz"\n')
    (d / "bad.json").write_text('{"links": [{"source": 1}]}')
    (d / "binary.toml").write_bytes(b"\xff\xfe\x00nodes")
    (d / "dir.toml").mkdir()
    return d


TOPO_FILES = ("good.toml", "good.json", "bad.toml", "bad.json", "binary.toml", "dir.toml",
              "missing.toml", "x.yaml", "", "/", "../good.toml")  # fmt: skip
GENERATE = ("grid4 3 3", "line 2", "ring 3", "star 3", "full 4", "tree 7 2", "grid8 2 2",
            "random 5 seed=1", "random 5 radius=nan", "random 5 degree=inf", "random 5 x=1",
            "grid4 100000 100000", "full 1000000", "random 99999999", "line 0", "line -1",
            "line 1 2", "bogus 3", "", "'", "line 1e9", "grid4 3 3 seed=1")  # fmt: skip
ASSERTS = ("flows.cbr.delivery_ratio >= 90%", "events[0].recovery_s.cbr <= 10s",
           "flows.zz.delivery_ratio >= 1", "events[9].at < 1s", "mesh.nodes == 9",
           "bogus.x > 1", "flows >", "", "run.passed == true", "events[0].recovery_s.zz < 1s",
           "flows.cbr.p99_ms < 1e999", "probes.x.y >= -1")  # fmt: skip

flow_values: dict[str, Any] = {
    "name": st.sampled_from(("cbr", "ping", "bulk", "a/b", "..", "-x")) | leaf,
    "kind": st.sampled_from(flows.KINDS) | leaf,
    "from": node, "to": node, "start": duration, "duration": duration,
    "rate": st.sampled_from(("100pps", "1mbit", "0pps", "-1pps", "1e12pps")) | leaf,
    "size": st.integers(-1, 70000) | leaf, "port": st.integers(-1, 70000) | leaf,
}  # fmt: skip
event_values: dict[str, Any] = {
    "action": st.sampled_from(events.ACTIONS) | leaf, "at": duration, "for": duration,
    "link": st.lists(node, max_size=3) | leaf, "node": node,
    "groups": st.lists(st.lists(node, max_size=3), max_size=3) | tree,
}  # fmt: skip
flow = table_of(
    name=st.sampled_from(("cbr", "ping", "bulk", "a/b", "..", "-x")) | leaf,
    kind=st.sampled_from(flows.KINDS) | leaf,
    **{"from": node, "to": node},
    start=duration, duration=duration,
    rate=st.sampled_from(("100pps", "1mbit", "0pps", "-1pps", "1e12pps")) | leaf,
    size=st.integers(-1, 70000) | leaf, port=st.integers(-1, 70000) | leaf,
)  # fmt: skip
link_ref = st.lists(node, min_size=0, max_size=3) | leaf
regex = st.sampled_from(("x", "rtt=([0-9.]+)", "(", "", "(?P<value>\\d+)")) | leaf
proc_values: dict[str, Any] = {
    "name": st.sampled_from(("echo", "a.b", "a/b", "..", "-x", "x@y")) | leaf,
    "nodes": st.lists(node, max_size=3) | node,
    "command": st.lists(st.sampled_from(("true", "@n0", "--x=@zz", "a\x00b", "")), max_size=3)
    | st.sampled_from(("true", "sleep 1", "x 'y", "", "@n1")) | leaf,
    "ready": table_of(line=regex, port=st.integers(-1, 70000) | leaf,
                      proto=st.sampled_from(("tcp", "udp", "sctp")) | leaf, timeout=duration)
    | tree,
    "env": st.dictionaries(st.sampled_from(("A", "1X", "MESHSTRESS_METRICS", "")) | any_key,
                           st.sampled_from(("x", "@n0", "@zz")) | leaf, max_size=3) | tree,
    "on_exit": st.sampled_from(("fail", "ignore", "restart", "x")) | leaf,
    "max_restarts": st.integers(-1, 2000) | leaf, "start": duration,
    "cwd": st.sampled_from((".", "", "/tmp", "a\x00")) | leaf,
    "metrics": st.lists(table_of(name=st.sampled_from(("ok", "exit_code", "t", "a b")) | leaf,
                                 regex=regex), max_size=3) | tree,
}  # fmt: skip
proc_table = table_of(**proc_values)
event_table = st.fixed_dictionaries(
    {"action": st.sampled_from(events.ACTIONS) | leaf},
    optional={"at": duration, "link": link_ref, "node": node, "for": duration,
              "groups": st.lists(st.lists(node, max_size=3), max_size=3) | tree,
              "a_to_b": table_of(**impair) | tree, "b_to_a": table_of(**impair) | tree,
              **impair, "bogus": tree},
)  # fmt: skip
scenarios = st.fixed_dictionaries(
    {},
    optional={
        "scenario": table_of(
            name=st.sampled_from(("ok", "a/b", "..", "-x", "x" * 80)) | leaf,
            description=leaf, duration=duration, where=st.sampled_from(("auto", "host", "lab"))
            | leaf, probes=st.lists(st.sampled_from(("traffic", "drops", "x")), max_size=3)
            | leaf, warmup=duration, route_interval=duration,
        ) | tree,  # fmt: skip
        "mesh": table_of(
            topology=st.sampled_from(TOPO_FILES) | leaf,
            generate=st.sampled_from(GENERATE) | leaf,
            routing=st.sampled_from(BACKEND_NAMES) | leaf,
            settings=table(("hello_interval", "orig_interval", "update_interval"), duration)
            | tree,
            prefix=st.sampled_from(("10.9.0.0/16", "10.0.0.0/30", "x", "1.2.3.4/40")) | leaf,
            ideal=leaf, converge_timeout=duration, require_converged=leaf,
        ) | tree,  # fmt: skip
        "traffic": st.lists(flow, max_size=3) | tree,
        "events": st.lists(event_table, max_size=3) | tree,
        "verdict": table_of(**{"assert": st.lists(st.sampled_from(ASSERTS) | leaf,
                                                  max_size=3) | leaf}) | tree,  # fmt: skip
        "process": st.lists(proc_table, max_size=2) | tree,
        # tables the parser does not know (yet): each is refused in one line
        "sweep": table(("param", "values")) | tree,
        "bogus": tree,
    },
)
GOOD_PROCESS: dict[str, Any] = {
    "name": "echo", "nodes": ["n8"], "command": ["python3", "echo.py", "--peer", "@n0"],
    "ready": {"line": "listening", "timeout": "5s"}, "env": {"MODE": "x"}, "on_exit": "restart",
    "max_restarts": 2, "start": "1s", "metrics": [{"name": "rtt_ms", "regex": "rtt=([0-9.]+)"}],
}  # fmt: skip
GOOD_SCENARIO: dict[str, Any] = {
    "scenario": {"name": "ok", "duration": "5s"},
    "mesh": {"generate": "grid4 3 3", "routing": "babeld"},
    "traffic": [{"name": "cbr", "kind": "udp", "from": "n0", "to": "n8", "rate": "100pps"}],
    "events": [{"at": "1s", "action": "link-down", "link": ["n0", "n1"], "for": "1s"}],
    "verdict": {"assert": ["flows.cbr.delivery_ratio >= 90%", "events[0].recovery_s.cbr <= 10s"]},
    "process": [GOOD_PROCESS],
}


_sc_paths: dict[tuple[Any, ...], Any] = {
    **{("scenario", k): duration | leaf for k in scenario.SCENARIO_KEYS + ("bogus",)},
    ("scenario", "where"): st.sampled_from(("auto", "host", "lab", "moon")) | leaf,
    ("scenario", "probes"): st.lists(st.sampled_from(("traffic", "drops", "x")), max_size=3) | leaf,
    **{("mesh", k): duration | leaf for k in scenario.MESH_KEYS + ("bogus",)},
    ("mesh", "topology"): st.sampled_from(TOPO_FILES) | leaf,
    ("mesh", "generate"): st.sampled_from(GENERATE) | leaf,
    ("mesh", "routing"): st.sampled_from(BACKEND_NAMES) | leaf,
    ("mesh", "settings"): table(("hello_interval", "orig_interval", "update_interval"), duration) | tree,
    **{("traffic", 0, k): flow_values.get(k, leaf) for k in flows.KEYS + ("bogus",)},
    ("traffic", 1): flow, ("events", 1): event_table,
    **{("events", 0, k): event_values.get(k, impair.get(k, leaf))
       for k in ("at", "action", "link", "node", "for", "groups", "a_to_b", "b_to_a",
                 *topofile._IMPAIR_KEYS, "bogus")},
    ("verdict", "assert"): st.lists(st.sampled_from(ASSERTS) | leaf, max_size=3) | leaf,
    ("verdict", "bogus"): leaf,
    **{(k,): tree for k in scenario.ROOT_KEYS},
    ("process",): st.lists(proc_table, max_size=2) | tree,
    **{("process", 0, k): proc_values.get(k, leaf) | tree for k in (*ps.KEYS, "bogus")},
    ("process", 1): proc_table,
    ("sweep",): table(("loss", "rate", "failed_links", "churn", "links", "nodes", "step",
                       "settle", "repeat", "fresh", "seed", "param")) | tree,
}  # fmt: skip
scenarios = mutated(GOOD_SCENARIO, _sc_paths) | scenarios


def test_good_scenario_is_good(base: Path) -> None:
    sc = scenario.loads(dumps(GOOD_SCENARIO), "g.toml", base=base)
    assert len(sc.flows) == 1 and len(sc.events) == 2 and len(sc.assertions) == 2


@FUZZ
@given(scenarios)
@example(GOOD_SCENARIO)
@example({**GOOD_SCENARIO, "process": [{"name": "iperf", "node": "n0"}]})
@example({**GOOD_SCENARIO, "process": [{**GOOD_PROCESS, "ready": {"port": 70000}}]})
@example({**GOOD_SCENARIO, "sweep": {"param": "loss", "values": ["1%", "5%"]}})
# a generator asked for 10^10 nodes used to try (minutes, then all memory)
@example({"mesh": {"generate": "grid4 100000 100000"}})
@example({"mesh": {"generate": "full 1000000"}})
# a NUL in a file name was a ValueError from the file system call
@example({"mesh": {"topology": "a\x00b.toml"}})
@example({"scenario": {"0\n": "20ms"}, "bogus": []})
@example({"mesh": {"generate": '"'}})  # shlex.split: ValueError No closing quotation
@example({"mesh": {"generate": "line 2 'x"}})
def test_fuzz_scenario_toml(base: Path, data: dict[str, Any]) -> None:
    text = dumps(data)
    src = str(base / "fz.toml")
    try:
        sc = scenario.loads(text, src, base=base)
    except InputError as exc:
        event(f"rejected: {exc.field.split('.')[0].split('[')[0]}")
        _one_line_error(exc, (src, str(base), *(str(base / f) for f in TOPO_FILES)))
        if set(data) - set(scenario.ROOT_KEYS):  # refused first, by name
            assert re.match(rf"{re.escape(src)}: bogus: unknown key", str(exc))
        return
    event("accepted")
    assert "bogus" not in data
    assert sc.duration > 0 and sc.topology.nodes


def test_unknown_scenario_tables_refused(base: Path) -> None:
    for extra, where in (("[sweep]\nparam = 'loss'\n", "sweep.param"),
                         ("[bogus]\nx = 1\n", "bogus")):  # fmt: skip
        text = dumps(GOOD_SCENARIO) + extra
        with pytest.raises(InputError) as err:
            scenario.loads(text, "s.toml", base=base)
        assert str(err.value).startswith(f"s.toml: {where}: unknown key")


# ------------------------------------------------------------------ the command line


class Accepted(Exception):
    """A good input reached the point where the command would build or run."""


class Tripwire(Exception):
    """Something was about to be created: fails the test wherever it is raised."""


def _kernel_names() -> set[str]:
    ns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    links = set(os.listdir("/sys/class/net"))
    return {n for n in ns | links if n.startswith(tuple(f"ms-{r}" for r in RUN_IDS))}


def _tree(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


@pytest.fixture
def cli_env(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    statedir = tmp_path / "state"  # inside pytest's 0700 tmp: passes the state dir checks
    work = tmp_path / "work"  # the cwd: results/ lands here
    work.mkdir()
    monkeypatch.setattr(state, "STATE_DIR", str(statedir))
    monkeypatch.chdir(work)

    def accepted(*a: Any, **k: Any) -> Any:
        raise Accepted()

    def tripwire(*a: Any, **k: Any) -> Any:
        raise Tripwire("something was about to be created")

    monkeypatch.setattr(hostcli, "bring_up", accepted)
    monkeypatch.setattr(runner, "run", accepted)
    monkeypatch.setattr(runner, "run_in_lab", accepted)
    monkeypatch.setattr(runner, "missing_here", lambda sc: [])  # no doctor probes: fast
    monkeypatch.setattr(state.RunState, "save", tripwire)
    monkeypatch.setattr(netns, "ensure_netns_dir", tripwire)
    # scenarios for `run`, next to the topologies
    (base / "good-sc.toml").write_text(dumps(GOOD_SCENARIO))
    (base / "process-sc.toml").write_text(dumps(GOOD_SCENARIO) + "[[process]]\nname = 'x'\n")
    (base / "sweep-sc.toml").write_text(dumps(GOOD_SCENARIO) + "[sweep]\nparam = 'loss'\n")
    (base / "bad-sc.toml").write_text('[mesh]\ngenerate = "line 2"\n[[traffic]]\nkind = "x"\n')
    rdir = tmp_path / "rundir"
    rdir.mkdir()
    (rdir / "results.json").write_text('{"flows": 3}')
    return {"base": base, "state": statedir, "work": work, "rundir": rdir}


GOOD_FILES = ("good.toml", "good.json", "good-sc.toml")
BAD_FILES = ("bad.toml", "bad.json", "binary.toml", "process-sc.toml", "sweep-sc.toml",
             "bad-sc.toml", "missing.toml", "x.yaml")  # fmt: skip
tok = st.sampled_from(("--json", "--help", "-h", "--", "-", "--bogus", "@n0", "n0", "")) | st.text(
    max_size=8
)
num = st.sampled_from(("1", "0", "-1", "1e9", "nan", "inf", "2.5", "x", "99999999999999999999"))
file_arg = st.sampled_from(GOOD_FILES) | st.sampled_from(BAD_FILES + ("dir.toml", "", "-"))
# now and then a stray token (most of them usage errors, which stop before the file)
maybe_tok = st.sampled_from((0, 0, 0, 1)).flatmap(
    lambda k: tok.map(lambda t: [t]) if k else st.just([])
)


def _opts(**choices: st.SearchStrategy[list[str]]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.one_of(*choices.values()), max_size=4).map(lambda xs: sum(xs, []))


def _opt(name: str, value: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[list[str]]:
    if value is None:
        return st.just([name])
    return value.map(lambda v: [name, v])


run_id = st.sampled_from((*RUN_IDS, "BAD", "toolong7", "../x", "")) | st.text(max_size=7)
up_args = st.tuples(file_arg, _opts(
    routing=_opt("--routing", st.sampled_from(BACKEND_NAMES) | st.text(max_size=6)),
    run=_opt("--run", run_id), prefix=_opt("--prefix", st.sampled_from(
        ("10.9.0.0/16", "10.0.0.0/31", "x", "1.2.3.4/40", "10.0.0.0/8"))),
    wait=st.sampled_from((["--wait"], ["--no-wait"])), timeout=_opt("--timeout", num),
    ideal=_opt("--ideal"), dry=_opt("--dry-run"), json=_opt("--json"),
), maybe_tok).map(lambda t: ["up", t[0], *t[1], *t[2]])  # fmt: skip
run_args = st.tuples(st.lists(file_arg, max_size=1), _opts(
    where=_opt("--where", st.sampled_from(("auto", "host", "lab", "moon"))),
    out=_opt("--out", st.text("abcxyz", min_size=1, max_size=6)),
    duration=_opt("--duration", st.sampled_from(("1s", "100s", "0s", "-1s", "x", "3s"))),
    timeout=_opt("--timeout", num), json=_opt("--json"), check=_opt("--check"),
), maybe_tok).map(lambda t: ["run", *t[0], *t[1], *t[2]])  # fmt: skip
gen_args = st.tuples(
    st.sampled_from(("line", "ring", "star", "full", "grid4", "grid8", "tree", "random", "x")),
    st.lists(st.sampled_from(("0", "1", "3", "4", "-2", "x", "100000", "99999999999999")),
             max_size=3),  # fmt: skip
    _opts(seed=_opt("--seed", num), radius=_opt("--radius", num), loss=_opt("--loss", st.sampled_from(
        ("5%", "150%", "x", "-1%"))), delay=_opt("--delay", st.sampled_from(("1ms", "-1ms", "x"))),
        rate=_opt("--rate", st.sampled_from(("1mbit", "0bit", "x"))),
        model=_opt("--model", st.sampled_from(("veth", "wifi", "x"))),
        prefix=_opt("--prefix", st.sampled_from(("10.0.0.0/30", "x", "10.0.0.0/8"))),
        name=_opt("--name", st.text(max_size=6))),
).map(lambda t: ["topo", "gen", t[0], *t[1], *t[2]])  # fmt: skip
other_args = st.one_of(
    st.tuples(file_arg, st.lists(tok, max_size=2)).map(lambda t: ["topo", "show", t[0], *t[1]]),
    st.lists(tok | st.sampled_from(("--run", "fz1")), max_size=3).map(lambda t: ["status", *t]),
    st.lists(tok | st.sampled_from(("--run", "fz1", "--all")), max_size=3).map(lambda t: ["down", *t]),
    st.lists(tok | st.sampled_from(("--run", "--watch", "1", "--interval", "0")),
             max_size=4).map(lambda t: ["routes", *t]),  # fmt: skip
    st.lists(tok, max_size=4).map(lambda t: ["exec", *t]),
    st.lists(st.sampled_from(("RUNDIR", "missing", "")) | tok, max_size=2).map(lambda t: ["report", *t]),
    st.lists(tok, max_size=3),
)
argvs = st.one_of(up_args, run_args, up_args, run_args, gen_args, other_args)


def _resolve(argv: list[str], env: dict[str, Path]) -> list[str]:
    files = set(GOOD_FILES + BAD_FILES + ("dir.toml",))
    out = []
    for a in argv:
        if a in files:
            out.append(str(env["base"] / a))
        elif a == "RUNDIR":
            out.append(str(env["rundir"]))
        else:
            out.append(a)
    return out


def _check_outcome(argv: list[str], code: int, stderr: str, exc: BaseException | None) -> None:
    assert not isinstance(exc, Tripwire), f"{argv}: {exc}"
    assert exc is None or isinstance(exc, SystemExit), f"{argv}: traceback: {exc!r}"
    assert "Traceback" not in stderr, f"{argv}: {stderr}"
    assert code in (0, 1, 2, 3), (argv, code, stderr)
    if code != 0:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, (argv, code, stderr)
        assert lines[0].startswith("meshstress"), (argv, stderr)


@FUZZ
@given(argvs)
@example(["up", "bad.toml", "--run", "fz1"])
@example(["run", "process-sc.toml", "--where", "host"])
@example(["run", "sweep-sc.toml"])
@example(["up"])  # a usage error: it used to be a four-line usage block
@example(["run", "--duration", "x"])
# a generator asked for 10^10 nodes used to try (minutes, then all memory)
@example(["topo", "gen", "grid4", "100000", "100000"])
@example(["topo", "gen", "full", "99999999999999"])
@example(["run", "\r"])  # a file name with a line break: the message was two lines
@example(["up", "a\u2028b.toml"])
@example(["report", "\x00"])  # click's Path(exists=True): ValueError embedded null byte
@example(["up", "a\x00.toml"])
@example(["report", "RUNDIR"])  # results.json {"flows": 3}: used to be an AttributeError
@example([])
def test_fuzz_cli_arguments(cli_env: dict[str, Path], argv: list[str]) -> None:
    before_kernel = _kernel_names()
    before_work = _tree(cli_env["work"])
    args = _resolve(argv, cli_env)
    result = CliRunner().invoke(cli, args, prog_name="meshstress")
    event(f"{argv[:1]} -> {'accepted' if isinstance(result.exception, Accepted) else result.exit_code}")
    if isinstance(result.exception, Accepted):
        # a good input got as far as building: only `run` may have made its run folder
        assert argv[0] in ("up", "run"), argv
        for made in _tree(cli_env["work"]) - before_work:
            p = cli_env["work"] / made
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        return
    _check_outcome(argv, result.exit_code, result.stderr, result.exception)
    expects_bad = {"bad.toml", "bad.json", "binary.toml", "process-sc.toml", "sweep-sc.toml",
                   "bad-sc.toml", "missing.toml", "x.yaml"}  # fmt: skip
    if argv[:1] in (["up"], ["run"]) and expects_bad & set(argv) and "--help" not in argv \
            and "-h" not in argv:  # fmt: skip
        assert result.exit_code == 2, (argv, result.output)
    if result.exit_code != 0:
        # a rejected input created nothing
        assert _tree(cli_env["work"]) == before_work, argv
        assert not cli_env["state"].exists() or not os.listdir(cli_env["state"]), argv
        assert _kernel_names() <= before_kernel, argv


# a handful of bad inputs through a real process: exit 2, one line, nothing created
SUBPROCESS_CASES = (
    ["up", "bad.toml", "--run", "fz1"],
    ["up", "good.toml", "--run", "fz2", "--prefix", "10.0.0.0/31"],
    ["up", "bad.json", "--run", "fzq", "--routing", "babeld"],
    ["run", "process-sc.toml", "--where", "host"],
    ["run", "sweep-sc.toml", "--out", "outdir"],
    ["run", "good-sc.toml", "--duration", "-1s"],
    ["topo", "gen", "grid4", "100000", "100000"],
    ["up", "--bogus"],
)


@pytest.mark.parametrize("argv", SUBPROCESS_CASES, ids=lambda a: "-".join(a[:2]))
def test_cli_bad_input_subprocess(cli_env: dict[str, Path], argv: list[str]) -> None:
    before_kernel = _kernel_names()
    env = {**os.environ, "MESHSTRESS_STATE_DIR": str(cli_env["state"])}
    proc = subprocess.run([sys.executable, "-m", "meshstress", *_resolve(argv, cli_env)],
                          cwd=cli_env["work"], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
    _check_outcome(argv, proc.returncode, proc.stderr, None)
    assert not any(cli_env["work"].iterdir()), argv  # no results/, no run folder
    assert not cli_env["state"].exists() or not os.listdir(cli_env["state"])
    assert _kernel_names() <= before_kernel
