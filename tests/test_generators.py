"""Generators: node and link counts, connectivity, degree, determinism."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshstress.model import generators
from meshstress.model.topology import Impairment, Topology


def no_duplicates(t: Topology) -> bool:
    pairs = [frozenset((link.a, link.b)) for link in t.links]
    return len(set(pairs)) == len(pairs) and all(len(p) == 2 for p in pairs)


@pytest.mark.parametrize(
    ("t", "name", "nodes", "links", "diameter"),
    [
        (generators.line(3), "line3", 3, 2, 2),
        (generators.line(1), "line1", 1, 0, 0),
        (generators.ring(6), "ring6", 6, 6, 3),
        (generators.star(5), "star5", 5, 4, 2),
        (generators.full(5), "full5", 5, 10, 1),
        (generators.grid4(10, 10), "grid4-10x10", 100, 180, 18),
        (generators.grid4(32, 32), "grid4-32x32", 1024, 1984, None),
        (generators.grid8(3, 3), "grid8-3x3", 9, 20, 2),
        (generators.grid8(10, 10), "grid8-10x10", 100, 342, 9),
        (generators.tree(7, 2), "tree7-2", 7, 6, 4),
        (generators.tree(13, 3), "tree13-3", 13, 12, 4),
    ],
    ids=lambda v: v.name if isinstance(v, Topology) else str(v),
)
def test_shapes(t: Topology, name: str, nodes: int, links: int, diameter: int | None) -> None:
    assert t.name == name
    assert len(t.nodes) == nodes
    assert len(t.links) == links
    assert t.node_names() == [f"n{i}" for i in range(nodes)]
    assert t.is_connected()
    assert no_duplicates(t)
    if diameter is not None:  # (skip the all-pairs BFS for 1024 nodes)
        assert t.diameter() == diameter


def test_degrees() -> None:
    assert set(generators.ring(8).degree().values()) == {2}
    star = generators.star(6).degree()
    assert star["n0"] == 5 and {star[f"n{i}"] for i in range(1, 6)} == {1}
    assert set(generators.full(6).degree().values()) == {5}
    g4 = generators.grid4(5, 4).degree()
    assert sorted(set(g4.values())) == [2, 3, 4] and g4["n0"] == 2 and g4["n6"] == 4
    g8 = generators.grid8(5, 4).degree()
    assert g8["n0"] == 3 and g8["n6"] == 8
    tree = generators.tree(15, 2).degree()
    assert tree["n0"] == 2 and tree["n1"] == 3 and tree["n14"] == 1


def test_grid_is_row_major() -> None:
    t = generators.grid4(4, 3)
    adj = t.adjacency()
    assert adj["n5"] == {"n1", "n4", "n6", "n9"}
    assert t.nodes[6].pos == (2.0, 1.0)


def test_common_options() -> None:
    imp = Impairment(loss=0.05, delay=0.01)
    t = generators.ring(4, impairment=imp, model="segment", prefix="10.5.0.0/24", routing="babeld")
    assert all(link.ab == imp and link.ba == imp and link.model == "segment" for link in t.links)
    assert t.prefix == "10.5.0.0/24" and t.routing == "babeld"
    with pytest.raises(ValueError, match="model"):
        generators.line(3, model="fibre")
    with pytest.raises(ValueError, match="routing"):
        generators.line(3, routing="olsr")


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: generators.line(0), "n must be at least 1"),
        (lambda: generators.ring(2), "n must be at least 3"),
        (lambda: generators.grid4(0, 3), "width"),
        (lambda: generators.tree(5, 0), "fanout"),
        (lambda: generators.random_geometric(5, radius=-1), "radius"),
        (lambda: generators.random_geometric(5, degree=0), "degree"),
    ],
)
def test_bad_arguments(call: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        call()  # type: ignore[operator]


def test_random_is_seeded_and_connected() -> None:
    a = generators.random_geometric(50, seed=1)
    b = generators.random_geometric(50, seed=1)
    c = generators.random_geometric(50, seed=2)
    assert a == b
    assert a.links != c.links
    assert a.is_connected() and c.is_connected()
    assert len(a.nodes) == 50 and no_duplicates(a)
    assert all(n.pos is not None for n in a.nodes)
    mean = sum(a.degree().values()) / 50
    assert 2 <= mean <= 7  # target degree 4


def test_random_tiny_radius_is_joined_into_a_tree() -> None:
    t = generators.random_geometric(20, radius=0.0, seed=3)
    assert t.is_connected()
    assert len(t.links) == 19  # only the joining links


def test_random_big_radius_is_a_full_mesh() -> None:
    t = generators.random_geometric(10, radius=2.0, seed=0)
    assert len(t.links) == 45


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 60),
    st.one_of(st.none(), st.floats(0, 0.5)),
    st.integers(0, 2**32),
)
def test_random_always_connected(n: int, radius: float | None, seed: int) -> None:
    t = generators.random_geometric(n, radius=radius, seed=seed)
    assert t.is_connected()
    assert no_duplicates(t)
    assert t == generators.random_geometric(n, radius=radius, seed=seed)


def test_sizes_beyond_one_host_refused_before_generating() -> None:
    # grid4 100000 100000 used to build a list of 10^10 positions (MemoryError)
    for make, msg in (
        (lambda: generators.grid4(100000, 100000), "10000000000 nodes is too many"),
        (lambda: generators.full(1000), "499500 links is too many"),
        (lambda: generators.line(65535), "65535 nodes is too many"),
        (lambda: generators.random_geometric(2001), "2001 nodes is too many (at most 2000)"),
        (lambda: generators.random_geometric(2000, radius=2.0), "1999000 links is too many"),
    ):
        with pytest.raises(ValueError, match=re.escape(msg)):
            make()
    assert len(generators.line(65534).nodes) == 65534
    assert len(generators.full(707).links) == 249571
