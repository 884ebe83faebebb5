"""Topology files: TOML reading/writing, meshnet-lab JSON import, validation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshstress.errors import InputError
from meshstress.model import generators, topofile
from meshstress.model.topology import GilbertElliott, Impairment, Link, Node, Segment, Topology

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "freifunk"
DATA = Path(__file__).resolve().parent / "data"

FULL = """
[topology]
name = "mixed"
prefix = "10.9.0.0/24"
link_model = "veth"
routing = "batman-adv"

[routing]
algorithm = "BATMAN_IV"
orig_interval = "1000ms"

[[nodes]]
name = "a"
label = "Roof of the town hall"
routing = { hop_penalty = 30 }

[[nodes]]
name = "b"

[[nodes]]
name = "c"
pos = [1.5, 2]

[[nodes]]
name = "d"

[[links]]
a = "a"
b = "b"
loss = "5%"
delay = "10ms"
jitter = "2ms"
rate = "10mbit"
type = "wifi"
a_to_b = { loss = "20%" }
b_to_a = { delay = "30ms" }

[[links]]
a = "b"
b = "c"
model = "segment"

[[segments]]
name = "air0"
nodes = ["b", "c", "d"]
loss = "2%"
delay = "5ms"
"""


def load_err(text: str) -> InputError:
    with pytest.raises(InputError) as info:
        topofile.loads_toml(text, "t.toml")
    err = info.value
    assert "\n" not in str(err)
    assert str(err).startswith(f"t.toml: {err.field}: ")
    return err


# --- reading ---------------------------------------------------------------------


def test_full_example_loads() -> None:
    t = topofile.loads_toml(FULL, "mixed.toml")
    assert t.name == "mixed"
    assert t.prefix == "10.9.0.0/24"
    assert t.routing == "batman-adv"
    assert t.routing_settings == {"algorithm": "BATMAN_IV", "orig_interval": "1000ms"}
    assert t.source == "mixed.toml"
    assert t.node_names() == ["a", "b", "c", "d"]
    a = t.nodes[0]
    assert a.label == "Roof of the town hall"
    assert a.settings == {"routing": {"hop_penalty": 30}}
    assert t.nodes[2].pos == (1.5, 2.0)
    ab = t.links[0]
    assert ab.ab == Impairment(loss=0.2, delay=0.01, jitter=0.002, rate=10_000_000)
    assert ab.ba == Impairment(loss=0.05, delay=0.03, jitter=0.002, rate=10_000_000)
    assert ab.kind == "wifi" and ab.model == "veth"
    assert t.links[1].model == "segment"
    assert t.links[1].ab.is_ideal()
    seg = t.segments[0]
    assert seg == Segment("air0", ["b", "c", "d"], Impairment(loss=0.02, delay=0.005))
    assert t.degree() == {"a": 1, "b": 3, "c": 2, "d": 2}


def test_shorthand_nodes_and_defaults() -> None:
    t = topofile.loads_toml('nodes = ["x", "y"]\nlinks = [{ a = "x", b = "y" }]\n', "dir/pair.toml")
    assert t.name == "pair"  # from the file name
    assert t.routing == "none"
    assert t.prefix == "10.201.0.0/16"
    assert t.links == [Link("x", "y")]


def test_link_model_default_applies() -> None:
    t = topofile.loads_toml(
        'nodes = ["x", "y", "z"]\n[topology]\nlink_model = "segment"\n'
        '[[links]]\na = "x"\nb = "y"\n[[links]]\na = "y"\nb = "z"\nmodel = "veth"\n'
    )
    assert [link.model for link in t.links] == ["segment", "veth"]


def test_load_dispatches_on_suffix(tmp_path: Path) -> None:
    p = tmp_path / "x.toml"
    p.write_text('nodes = ["a"]\n')
    assert topofile.load(p).node_names() == ["a"]
    j = tmp_path / "x.json"
    j.write_text(json.dumps({"nodes": [{"id": 1}], "links": []}))
    assert topofile.load(j).node_names() == ["1"]
    y = tmp_path / "x.yaml"
    y.write_text("")
    with pytest.raises(InputError) as info:
        topofile.load(y)
    assert info.value.field == "file" and ".yaml" in info.value.message
    with pytest.raises(InputError, match="no such file"):
        topofile.load(tmp_path / "missing.toml")


# --- validation: one test per kind of error -----------------------------------------

BASE = 'nodes = ["a", "b", "c"]\n'


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        # syntax
        ("nodes = [\n", "toml", "end of document) (line 2, column 1)"),
        ('nodes = ["a"]\nnodes = ["b"]\n', "toml", "syntax error"),
        # unknown keys at every level
        (BASE + "[topologgy]\n", "topologgy", "unknown key"),
        (BASE + '[topology]\nnmae = "x"\n', "topology.nmae", "unknown key"),
        ('[[nodes]]\nname = "a"\nlable = "x"\n', "nodes[0].lable", "unknown key"),
        (BASE + '[[links]]\na = "a"\nb = "b"\nlos = "5%"\n', "links[0].los", "unknown key"),
        (
            BASE + '[[links]]\na = "a"\nb = "b"\na_to_b = { lost = "5%" }\n',
            "links[0].a_to_b.lost",
            "unknown key",
        ),
        (
            BASE + '[[segments]]\nname = "s"\nnodes = ["a", "b"]\nmembers = []\n',
            "segments[0].members",
            "unknown key",
        ),
        # missing required fields
        ("[topology]\nname = 'x'\n", "nodes", "missing"),
        ("nodes = []\n", "nodes", "no nodes"),
        ('[[nodes]]\nlabel = "x"\n', "nodes[0].name", "missing"),
        (BASE + '[[links]]\na = "a"\n', "links[0].b", "missing"),
        (BASE + '[[segments]]\nnodes = ["a", "b"]\n', "segments[0].name", "missing"),
        (BASE + '[[segments]]\nname = "s"\n', "segments[0].nodes", "missing"),
        # node names
        ('nodes = ["a", "a"]\n', "nodes[1]", "duplicate node name"),
        ('[[nodes]]\nname = "a"\n[[nodes]]\nname = "a"\n', "nodes[1].name", "duplicate"),
        ('nodes = ["ok", "has space"]\n', "nodes[1]", "letters, digits"),
        ('nodes = ["-dash"]\n', "nodes[0]", "start with '-'"),
        ('nodes = ["abcdefghijklmnop"]\n', "nodes[0]", "at most 15"),
        ('nodes = [""]\n', "nodes[0]", "empty"),
        ('nodes = ["a/b"]\n', "nodes[0]", "letters, digits"),
        ("nodes = [3]\n", "nodes[0]", "expected a table"),
        ("[[nodes]]\nname = 3\n", "nodes[0].name", "expected a string"),
        # links
        (BASE + '[[links]]\na = "a"\nb = "zz"\n', "links[0].b", "unknown node"),
        (BASE + '[[links]]\na = "a"\nb = "a"\n', "links[0].b", "itself"),
        (
            BASE + '[[links]]\na = "a"\nb = "b"\n[[links]]\na = "b"\nb = "a"\n',
            "links[1].b",
            "duplicate link",
        ),
        (BASE + 'links = [{a = "a", b = "b", model = "wire"}]\n', "links[0].model", "one of"),
        (BASE + 'links = [{a = "a", b = "b", type = 4}]\n', "links[0].type", "expected a string"),
        (BASE + 'links = "a-b"\n', "links", "expected an array"),
        # units and ranges
        (BASE + 'links = [{a = "a", b = "b", loss = "150%"}]\n', "links[0].loss", "above 100%"),
        (BASE + 'links = [{a = "a", b = "b", loss = "lots"}]\n', "links[0].loss", "percentage"),
        (BASE + 'links = [{a = "a", b = "b", delay = "-5ms"}]\n', "links[0].delay", "duration"),
        (BASE + 'links = [{a = "a", b = "b", delay = -5}]\n', "links[0].delay", "negative"),
        (BASE + 'links = [{a = "a", b = "b", delay = 10}]\n', "links[0].delay", "needs a unit"),
        (BASE + 'links = [{a = "a", b = "b", rate = "0mbit"}]\n', "links[0].rate", "positive"),
        (
            BASE + 'links = [{a = "a", b = "b", b_to_a = {jitter = "x"}}]\n',
            "links[0].b_to_a.jitter",
            "duration",
        ),
        (
            BASE + 'links = [{a = "a", b = "b", a_to_b = 5}]\n',
            "links[0].a_to_b",
            "expected a table",
        ),
        (
            BASE + '[[segments]]\nname = "s"\nnodes = ["a", "b"]\nloss = "2"\n',
            "segments[0].loss",
            "above 100%",
        ),
        # segments
        (BASE + '[[segments]]\nname = "s"\nnodes = ["a"]\n', "segments[0].nodes", "at least 2"),
        (
            BASE + '[[segments]]\nname = "s"\nnodes = ["a", "b", "a"]\n',
            "segments[0].nodes[2]",
            "already a member",
        ),
        (
            BASE + '[[segments]]\nname = "s"\nnodes = ["a", "q"]\n',
            "segments[0].nodes[1]",
            "unknown node",
        ),
        (
            BASE + '[[segments]]\nname = "s"\nnodes = ["a", "b"]\n[[segments]]\nname = "s"\n'
            'nodes = ["b", "c"]\n',
            "segments[1].name",
            "duplicate segment",
        ),
        (
            BASE + '[[segments]]\nname = "s s"\nnodes = ["a", "b"]\n',
            "segments[0].name",
            "segment name",
        ),
        # topology header
        (BASE + '[topology]\nprefix = "10.1.2.3.4/8"\n', "topology.prefix", "IPv4"),
        (BASE + '[topology]\nprefix = "fd00::/64"\n', "topology.prefix", "IPv4"),
        (BASE + '[topology]\nprefix = "10.0.0.0"\n', "topology.prefix", "prefix length"),
        (BASE + '[topology]\nprefix = "10.0.0.0/31"\n', "topology.prefix", "too few for 3"),
        (BASE + '[topology]\nrouting = "olsr"\n', "topology.routing", "one of"),
        (BASE + '[topology]\nlink_model = "wifi"\n', "topology.link_model", "one of"),
        (BASE + '[topology]\nname = ""\n', "topology.name", "empty"),
        (BASE + "topology = 5\n", "topology", "expected a table"),
        # settings tables
        (BASE + "[routing]\nx = [1, 2]\n", "routing.x", "scalar"),
        (BASE + "[routing.sub]\nx = 1\n", "routing.sub", "scalar"),
        ("[[nodes]]\nname = 'a'\nrouting = 5\n", "nodes[0].routing", "expected a table"),
        ("[[nodes]]\nname = 'a'\npos = [1]\n", "nodes[0].pos", "[x, y]"),
        ("[[nodes]]\nname = 'a'\npos = [1, 'x']\n", "nodes[0].pos[1]", "number"),
    ],
)
def test_validation(text: str, field: str, words: str) -> None:
    err = load_err(text)
    assert err.field == field, str(err)
    assert words in err.message, str(err)


def test_prefix_exactly_big_enough() -> None:
    four = 'nodes = ["a", "b"]\n[topology]\nprefix = "10.0.0.0/30"\n'
    assert len(topofile.loads_toml(four).addresses()) == 2
    assert topofile.loads_toml('nodes = ["a", "b"]\n[topology]\nprefix = "10.0.0.0/31"\n')


def test_syntax_error_names_line_and_column() -> None:
    err = load_err('nodes = ["a"]\n[[links]\n')
    assert err.field == "toml"
    assert "line 2" in err.message and "column" in err.message


# --- meshnet-lab JSON --------------------------------------------------------------


def meshnet(data: Any, source: str = "m.json") -> Topology:
    return topofile.loads_meshnet_json(json.dumps(data), source)


def meshnet_err(data: Any) -> InputError:
    with pytest.raises(InputError) as info:
        meshnet(data)
    assert "\n" not in str(info.value)
    return info.value


def test_meshnet_mapping() -> None:
    t = meshnet(
        {
            "nodes": [
                {"id": 0, "name": "Gateway", "x": 48.1, "y": 11.5},
                {"id": 1, "name": "Roof"},
                {"id": 2, "type": "vpn"},
            ],
            "links": [
                {"source": 0, "target": 1, "source_tq": 0.75, "target_tq": 0.5, "type": "wifi"},
                {"source": 1, "target": 2, "type": "vpn"},
                {"source": 2, "target": 0, "source_tq": 0, "target_tq": 1},
            ],
            "directed": False,
        },
        "data/freifunk-x.json",
    )
    assert t.name == "freifunk-x"
    assert t.node_names() == ["0", "1", "2"]
    assert t.nodes[0].label == "Gateway" and t.nodes[0].pos == (48.1, 11.5)
    assert t.nodes[1].pos is None and t.nodes[2].label is None
    first = t.links[0]
    assert (first.a, first.b, first.kind) == ("0", "1", "wifi")
    assert first.ab.loss == pytest.approx(0.25) and first.ba.loss == pytest.approx(0.5)
    assert t.links[1].ab.is_ideal() and t.links[1].ba.is_ideal()
    assert t.links[2].ab.loss == 1.0  # a dead direction is kept
    assert t.links[2].ba.loss == 0.0


def test_meshnet_without_nodes_derives_them_numerically() -> None:
    t = meshnet({"links": [{"source": 10, "target": 2}, {"source": 2, "target": 7}]})
    assert t.node_names() == ["2", "7", "10"]
    t = meshnet({"links": [{"source": "b", "target": "a"}, {"source": "a", "target": "c"}]})
    assert t.node_names() == ["b", "a", "c"]


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        (
            {
                "nodes": [{"id": 0}, {"id": 1}],
                "links": [{"source": 0, "target": 1, "source_tq": 1.3}],
            },
            "links[0].source_tq",
            "must be between 0 and 1, got 1.3",
        ),
        (
            {
                "nodes": [{"id": 0}, {"id": 1}],
                "links": [{"source": 0, "target": 1, "target_tq": -0.1}],
            },
            "links[0].target_tq",
            "between 0 and 1",
        ),
        (
            {
                "nodes": [{"id": 0}, {"id": 1}],
                "links": [{"source": 0, "target": 1, "target_tq": "x"}],
            },
            "links[0].target_tq",
            "expected a number",
        ),
        (
            {"nodes": [{"id": 0}], "links": [{"source": 0, "target": 5}]},
            "links[0].target",
            "unknown node id 5",
        ),
        ({"nodes": [{"id": 0}, {"id": 0}]}, "nodes[1].id", "duplicate node id"),
        ({"nodes": [{"id": 0}, {"id": "0"}]}, "nodes[1].id", "duplicate node id"),
        ({"nodes": [{"name": "x"}]}, "nodes[0].id", "missing"),
        ({"nodes": [{"id": "a b"}]}, "nodes[0].id", "letters, digits"),
        ({"nodes": [{"id": 1.5}]}, "nodes[0].id", "integer or string"),
        ({"nodes": [{"id": 0, "x": 1}]}, "nodes[0].y", "missing"),
        (
            {"nodes": [{"id": 0}, {"id": 1}], "links": [{"source": 0, "target": 0}]},
            "links[0].target",
            "itself",
        ),
        (
            {
                "nodes": [{"id": 0}, {"id": 1}],
                "links": [{"source": 0, "target": 1}, {"source": 1, "target": 0}],
            },
            "links[1].target",
            "duplicate link",
        ),
        ({"nodes": []}, "nodes", "no nodes"),
        ([1, 2], "json", "expected an object"),
        ({"links": {}}, "links", "expected an array"),
    ],
)
def test_meshnet_validation(data: Any, field: str, words: str) -> None:
    err = meshnet_err(data)
    assert err.field == field, str(err)
    assert words in err.message, str(err)


def test_meshnet_error_text_is_the_documented_one() -> None:
    links = [{"source": 0, "target": i} for i in range(1, 13)]
    links.append({"source": 1, "target": 2, "source_tq": 1.3})
    data = {"nodes": [{"id": i} for i in range(13)], "links": links}
    with pytest.raises(InputError) as info:
        meshnet(data, "freifunk-x.json")
    assert str(info.value) == (
        "freifunk-x.json: links[12].source_tq: must be between 0 and 1, got 1.3"
    )


def test_meshnet_json_syntax_error() -> None:
    with pytest.raises(InputError) as info:
        topofile.loads_meshnet_json("{", "bad.json")
    assert info.value.field == "json" and "\n" not in str(info.value)


def test_bundled_ulm_loads() -> None:
    t = topofile.load(DATA / "freifunk-ulm.json")
    assert (len(t.nodes), len(t.links)) == (217, 447)
    assert t.is_connected()
    assert all(0 <= link.ab.loss <= 1 and 0 <= link.ba.loss <= 1 for link in t.links)
    assert {link.kind for link in t.links} == {"wifi", "vpn", "other"}
    assert (DATA / "LICENSE.meshnet-lab").is_file()


@pytest.mark.parametrize(
    ("name", "nodes", "links"),
    [("ulm", 217, 447), ("leipzig", 210, 413), ("bielefeld", 246, 483), ("altdorf", 660, 1348)],
)
def test_shared_freifunk_loads(name: str, nodes: int, links: int) -> None:
    if not SHARED.is_dir():
        pytest.skip(f"shared data directory {SHARED} is absent")
    t = topofile.load(SHARED / f"freifunk-{name}.json")
    assert (len(t.nodes), len(t.links)) == (nodes, links)
    assert t.is_connected()
    # and it survives a trip through the TOML format unchanged
    assert topofile.loads_toml(topofile.dumps_toml(t), t.source) == t


# --- writing: round trips ---------------------------------------------------------


def test_full_example_round_trips() -> None:
    t = topofile.loads_toml(FULL, "mixed.toml")
    text = topofile.dumps_toml(t)
    assert topofile.loads_toml(text, "mixed.toml") == t


def test_dumps_uses_units() -> None:
    t = generators.line(2, impairment=Impairment(loss=0.05, delay=0.01, rate=10**7))
    text = topofile.dumps_toml(t)
    assert 'loss = "5%"' in text and 'delay = "10ms"' in text and 'rate = "10mbit"' in text


NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789_-"
names = st.text(NAME_CHARS, min_size=1, max_size=15).filter(lambda s: not s.startswith("-"))
scalars = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
)
flat_settings = st.dictionaries(st.text(min_size=1, max_size=8), scalars, max_size=3)
settings_tables = st.builds(
    lambda flat, nested: {**flat, **nested},
    flat_settings,
    st.dictionaries(
        st.sampled_from(["babeld", "batman-adv", "batmand"]), flat_settings, max_size=2
    ),
)
fractions = st.one_of(st.just(0.0), st.floats(0, 1))
counts = st.one_of(st.none(), st.integers(1, 2**32 - 1))


@st.composite
def impairments(draw: st.DrawFn) -> Impairment:
    """Any valid impairment: independent, bursty (loss_burst) or gemodel loss; reorder only
    with a delay, reorder_gap only with reorder."""
    delay = draw(st.floats(0, 10))
    form = draw(st.sampled_from(["loss", "burst", "gemodel"]))
    loss, burst, ge = 0.0, None, None
    if form == "loss":
        loss = draw(st.floats(0, 1))
    elif form == "burst":
        loss = draw(st.floats(1e-6, 0.9))
        least = max(1.0, loss / (1 - loss) * 1.001)
        burst = draw(st.one_of(st.floats(least, 1000), st.integers(math.ceil(least), 1000)))
        burst = float(burst)
    else:
        ge = draw(st.builds(GilbertElliott, *(st.floats(0, 1) for _ in range(4))))
    reorder = draw(fractions) if delay > 0 else 0.0
    return Impairment(
        loss=loss,
        delay=delay,
        jitter=draw(st.floats(0, 1)),
        rate=draw(st.one_of(st.none(), st.integers(1, 10**12))),
        loss_burst=burst,
        gemodel=ge,
        duplicate=draw(fractions),
        corrupt=draw(fractions),
        reorder=reorder,
        reorder_gap=draw(counts) if reorder > 0 else None,
        queue=draw(counts),
    )


sparse_impairments = st.one_of(st.just(Impairment()), impairments())


@st.composite
def topologies(draw: st.DrawFn) -> Topology:
    node_names = draw(st.lists(names, min_size=1, max_size=8, unique=True))
    nodes = []
    for n in node_names:
        label = draw(st.one_of(st.none(), st.text(max_size=20)))
        routing = draw(st.one_of(st.none(), settings_tables))
        pos = draw(st.one_of(st.none(), st.tuples(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6))))
        nodes.append(
            Node(n, label=label, settings={} if routing is None else {"routing": routing}, pos=pos)
        )
    pairs = [(a, b) for i, a in enumerate(node_names) for b in node_names[i + 1 :]]
    chosen = (
        draw(st.lists(st.sampled_from(pairs), unique_by=lambda p: frozenset(p), max_size=10))
        if pairs
        else []
    )
    links = []
    for a, b in chosen:
        if draw(st.booleans()):
            a, b = b, a
        ab = draw(sparse_impairments)
        ba = ab if draw(st.booleans()) else draw(sparse_impairments)
        links.append(
            Link(
                a,
                b,
                ab,
                ba,
                draw(st.sampled_from(["veth", "segment"])),
                draw(st.one_of(st.none(), st.sampled_from(["wifi", "vpn", "other", 'x y"z']))),
            )
        )
    segments = []
    if len(node_names) >= 2:
        for seg_name in draw(st.lists(names, max_size=3, unique=True)):
            members = draw(st.lists(st.sampled_from(node_names), min_size=2, unique=True))
            segments.append(Segment(seg_name, members, draw(sparse_impairments)))
    return Topology(
        name=draw(st.text(min_size=1, max_size=20).filter(str.strip)),
        nodes=nodes,
        links=links,
        segments=segments,
        prefix=draw(st.sampled_from(["10.201.0.0/16", "192.168.7.0/24", "10.0.0.0/8"])),
        routing=draw(st.sampled_from(["none", "batman-adv", "babeld", "batmand", "static"])),
        routing_settings=draw(settings_tables),
        source="gen.toml",
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies())
def test_dumps_loads_round_trip(t: Topology) -> None:
    text = topofile.dumps_toml(t)
    back = topofile.loads_toml(text, "gen.toml")
    assert back == t


@pytest.mark.parametrize(
    "t",
    [
        generators.line(3),
        generators.grid8(4, 3),
        generators.random_geometric(30, seed=2),
        generators.full(5, model="segment", impairment=Impairment(0.1, 0.02, 0.001, 5000)),
    ],
    ids=lambda t: t.name,
)
def test_generated_round_trip(t: Topology) -> None:
    assert topofile.loads_toml(topofile.dumps_toml(t), t.source) == t


toml_fragments = st.sampled_from(
    [
        "[topology]",
        "[[nodes]]",
        "[[links]]",
        "[[segments]]",
        "[routing]",
        'name = "a"',
        'nodes = ["a", "b"]',
        'a = "a"',
        'b = "b"',
        'loss = "5%"',
        "delay = 3",
        'rate = "0bit"',
        'prefix = "10.0.0.0/30"',
        "nodes = [1]",
        'routing = "babeld"',
        "x = {}",
        "= =",
        '"',
        "links = []",
        'model = "segment"',
        "a_to_b = { loss = 2 }",
        "pos = [1, 2]",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.lists(toml_fragments, max_size=12).map("\n".join)))
def test_garbage_loads_or_raises_input_error(text: str) -> None:
    try:
        t = topofile.loads_toml(text, "g.toml")
    except InputError as exc:
        assert "\n" not in str(exc)
        assert str(exc).startswith("g.toml: ")
        return
    assert t.nodes


tqs = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 2))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), tqs, tqs), max_size=10))
def test_meshnet_random_tq(raw: list[tuple[int, int, Any, Any]]) -> None:
    links = []
    for s, t, sq, tq in raw:
        link: dict[str, Any] = {"source": s, "target": t}
        if sq is not None:
            link["source_tq"] = sq
        if tq is not None:
            link["target_tq"] = tq
        links.append(link)
    data = {"nodes": [{"id": i} for i in range(6)], "links": links}
    try:
        topo = topofile.meshnet_to_topology(data, "r.json")
    except InputError as exc:
        assert "\n" not in str(exc)
        assert exc.field.startswith("links[")
        return
    for (_s, _t, sq, tq), link in zip(raw, topo.links, strict=True):
        for q, imp in ((sq, link.ab), (tq, link.ba)):
            assert 0 <= imp.loss <= 1
            expected = 0.0 if q is None else 1 - q
            assert math.isclose(imp.loss, expected)


def test_documented_example_loads() -> None:
    doc = (ROOT / "docs" / "topology.md").read_text()
    block = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    t = topofile.loads_toml(block, "village.toml")
    assert t.name == "village" and len(t.nodes) == 3 and len(t.segments) == 1
    assert t.links[0].ab.loss == 0.2 and t.links[0].ba.delay == 0.03


def test_deep_nesting_is_an_input_error() -> None:
    with pytest.raises(InputError) as info:
        topofile.loads_toml("a = " + "[" * 100_000, "deep.toml")
    assert info.value.field == "toml"
    with pytest.raises(InputError) as info:
        topofile.loads_meshnet_json('{"nodes": [{"id": ' + "9" * 5000 + "}]}", "big.json")
    assert info.value.field == "json"


_KEYS = st.sampled_from(
    [
        "topology",
        "nodes",
        "links",
        "segments",
        "routing",
        "name",
        "a",
        "b",
        "loss",
        "delay",
        "rate",
        "jitter",
        "model",
        "prefix",
        "a_to_b",
        "pos",
        "label",
        "id",
        "source",
        "target",
        "source_tq",
        "target_tq",
        "x",
        "y",
        "type",
        "link_model",
        "zz",
    ]
)
_LEAVES = st.one_of(
    st.sampled_from(["a", "b", "c", "5%", "10ms", "1mbit", "veth", "segment", "none", "", "-x"]),
    st.integers(-3, 3),
    st.floats(),
    st.booleans(),
    st.datetimes().map(lambda d: d),
    st.none(),
)
_TREES = st.recursive(
    _LEAVES,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(_KEYS, kids, max_size=5)),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_KEYS, _TREES, max_size=6))
def test_structured_garbage_only_raises_input_error(data: dict[str, Any]) -> None:
    no_none = json.loads(json.dumps(data, default=str).replace("null", '"x"'))
    for convert in (
        lambda: topofile._from_toml_data(no_none, "s.toml"),
        lambda: topofile.meshnet_to_topology(data, "s.json"),
    ):
        try:
            t = convert()
        except InputError as exc:
            assert "\n" not in str(exc)
            continue
        assert t.nodes
        # anything that loads can be written and read back
        assert topofile.loads_toml(topofile.dumps_toml(t), t.source) == t


@pytest.mark.parametrize("table", ["topology", "routing"])
def test_misplaced_root_key_gets_a_hint(table: str) -> None:
    err = load_err(f'[{table}]\nnodes = ["a"]\n')
    assert err.field == f"{table}.nodes"
    assert "must come before the first [table]" in err.message


def test_backend_blocks_in_routing_settings() -> None:
    t = topofile.loads_toml(
        'nodes = ["a", { name = "b", routing = { babeld = { hello_interval = "2s" } } }]\n'
        '[routing]\nhello_interval = "1s"\n[routing.babeld]\nupdate_interval = "4s"\n'
        '[routing.batman-adv]\norig_interval = "500ms"\n',
        "r.toml",
    )
    assert t.routing_settings == {
        "hello_interval": "1s",
        "babeld": {"update_interval": "4s"},
        "batman-adv": {"orig_interval": "500ms"},
    }
    assert t.nodes[1].settings == {"routing": {"babeld": {"hello_interval": "2s"}}}
    assert topofile.loads_toml(topofile.dumps_toml(t), "r.toml") == t
    err = load_err('nodes = ["a"]\n[routing.babeld.deeper]\nx = 1\n')
    assert err.field == "routing.babeld.deeper"


def test_ulm_gateway_cut_is_the_generators_output_and_keeps_the_hub() -> None:
    """tests/data/freifunk-ulm-gw104.json (scenarios/freifunk-ulm-gw104-crash.toml) is what
    tests/data/ulm_gateway_cut.py makes of freifunk-ulm.json: hub 104 with all its 78
    neighbours, and a 3->95 detour of 5 hops when 104 is gone."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ulm_cut", DATA / "ulm_gateway_cut.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    full = json.loads((DATA / "freifunk-ulm.json").read_text())
    assert mod.cut(full) == json.loads((DATA / "freifunk-ulm-gw104.json").read_text())
    t = topofile.load(DATA / "freifunk-ulm-gw104.json")
    degree: dict[str, set[str]] = {n.name: set() for n in t.nodes}
    for link in t.links:
        degree[link.a].add(link.b)
        degree[link.b].add(link.a)
    full_hub = {str(x["target"]) for x in full["links"] if str(x["source"]) == "104"} | {
        str(x["source"]) for x in full["links"] if str(x["target"]) == "104"
    }
    assert len(t.nodes) == 94 and degree["104"] == full_hub and len(full_hub) == 78
    dist = {"3": 0}
    queue = ["3"]
    for x in queue:
        for y in sorted(degree[x]):
            if y not in dist and y != "104":
                dist[y] = dist[x] + 1
                queue.append(y)
    assert dist["95"] == 5
