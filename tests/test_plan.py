"""The plan is pure: names, addresses and routes for a topology, checked without root."""

from __future__ import annotations

import pytest

from meshstress.build.plan import IFNAMSIZ, OBJECT_RE, make_plan, new_run_id, run_prefix
from meshstress.build.state import ProcessRecord, RunState
from meshstress.model.topology import Impairment, Link, Node, Segment, Topology


def line(n: int) -> Topology:
    nodes = [Node(f"n{i}") for i in range(n)]
    links = [Link(f"n{i}", f"n{i + 1}") for i in range(n - 1)]
    return Topology("line", nodes, links)


def test_every_object_carries_the_run_prefix() -> None:
    topo = line(3)
    topo.segments.append(Segment("air", ["n0", "n1", "n2"]))
    p = make_plan(topo, "ab12")
    pre = run_prefix("ab12")
    names = [ns.name for ns in p.namespaces] + [b.ifname for b in p.bridges]
    for v in p.veths:
        names += [v.a.ifname, v.b.ifname]
    names.append(p.witness)
    assert all(n.startswith(pre) for n in names)
    assert all(OBJECT_RE.match(n).group(1) == "ab12" for n in names)  # type: ignore[union-attr]
    assert all(len(n) <= IFNAMSIZ for n in names if "~" not in n and n not in p.node_ns.values())


def test_line_has_one_veth_per_link_and_neighbour_routes_only() -> None:
    p = make_plan(line(3), "x")
    assert len(p.veths) == 2
    assert {ns.node for ns in p.namespaces} == {"n0", "n1", "n2"}
    assert p.node_addresses == {"n0": "10.201.0.1/16", "n1": "10.201.0.2/16", "n2": "10.201.0.3/16"}
    routes = {(r.ns, r.dst) for r in p.routes}
    assert routes == {
        ("ms-x-n0", "10.201.0.2/32"),
        ("ms-x-n1", "10.201.0.1/32"),
        ("ms-x-n1", "10.201.0.3/32"),
        ("ms-x-n2", "10.201.0.2/32"),
    }
    # n1 has two interfaces, both carrying its address
    assert [a.address for a in p.addresses if a.ns == "ms-x-n1"] == ["10.201.0.2/32"] * 2


def test_segment_is_a_bridge_in_its_own_namespace_with_one_port_per_member() -> None:
    topo = Topology("seg", [Node(f"n{i}") for i in range(5)])
    topo.segments.append(Segment("air", [f"n{i}" for i in range(5)], Impairment(loss=0.1)))
    p = make_plan(topo, "s1")
    hubs = [ns for ns in p.namespaces if ns.node is None]
    assert [h.segment for h in hubs] == ["air"]
    assert len(p.bridges) == 1 and p.bridges[0].ns == hubs[0].name
    assert len(p.veths) == 5
    assert all(v.master_a == p.bridges[0].ifname and v.a.ns == hubs[0].name for v in p.veths)
    assert all(v.b.egress.loss == 0.1 for v in p.veths)
    # every member routes to the four others
    assert len(p.routes) == 5 * 4


def test_link_and_segment_between_the_same_pair_keep_one_route() -> None:
    topo = line(2)
    topo.segments.append(Segment("air", ["n0", "n1"]))
    p = make_plan(topo, "d")
    assert len([r for r in p.routes if r.ns == "ms-d-n0"]) == 1


def test_segment_link_model_makes_a_two_port_bridge() -> None:
    topo = line(2)
    topo.links[0].model = "segment"
    topo.links[0].ab = Impairment(delay=0.01)
    p = make_plan(topo, "m")
    assert len(p.bridges) == 1 and len(p.veths) == 2
    assert {v.b.egress.delay for v in p.veths} == {0.01, 0.0}


def test_no_l3_means_no_addresses() -> None:
    p = make_plan(line(3), "n", l3=False, mtu=1560)
    assert p.addresses == [] and p.routes == []
    assert all(v.mtu == 1560 for v in p.veths)


def test_bad_run_ids_are_refused() -> None:
    for bad in ("", "UPPER", "toolong7", "a-b"):
        with pytest.raises(ValueError):
            make_plan(line(2), bad)
    assert len({new_run_id() for _ in range(50)}) > 40


def test_state_round_trips_through_its_file(tmp_path, monkeypatch) -> None:
    from meshstress.build import state

    monkeypatch.setattr(state, "STATE_DIR", str(tmp_path))
    st = RunState(run_id="rt", topology="t", namespaces=["ms-rt-a"])
    st.processes.append(ProcessRecord(pid=1, create_time=2.0, node="a", role="babeld"))
    st.save()
    back = state.load("rt")
    assert back is not None and back.namespaces == ["ms-rt-a"]
    assert back.processes[0].role == "babeld"
    assert [r.run_id for r in state.all_runs()] == ["rt"]
    back.remove()
    assert state.load("rt") is None


def test_a_segment_named_like_a_link_hub_does_not_clash() -> None:
    topo = line(2)
    topo.links[0].model = "segment"
    topo.segments.append(Segment("l0", ["n0", "n1"]))
    p = make_plan(topo, "c")
    hubs = [ns.name for ns in p.namespaces if ns.node is None]
    assert len(hubs) == len(set(hubs)) == 2


def test_impaired_interfaces_are_the_node_ends_with_egress_impairments() -> None:
    topo = line(3)
    topo.links[0].ab = Impairment(loss=0.2)  # n0 -> n1: at n0's end
    topo.segments.append(Segment("air", ["n0", "n2"], Impairment(delay=0.005)))
    p = make_plan(topo, "im")
    got = sorted((e.ns, e.egress.loss, e.egress.delay) for e in p.impaired())
    assert got == [("ms-im-n0", 0.0, 0.005), ("ms-im-n0", 0.2, 0.0), ("ms-im-n2", 0.0, 0.005)]
    assert make_plan(topo, "im", impair=False).impaired() == []
    assert topo.links[0].ab.loss == 0.2  # the topology itself is left as it was


def test_netem_args() -> None:
    from meshstress.build.impair import describe, netem_args

    assert netem_args(Impairment()) == {"limit": 1000}
    args = netem_args(Impairment(loss=0.05, delay=0.02, jitter=0.002, rate=10_000_000))
    assert args["loss"] == pytest.approx(5.0)
    assert args["delay"] == 20000 and args["jitter"] == 2000
    assert "rate" not in args  # the rate is a tbf child now (impair.chain)
    # a long delay at a high rate needs a deeper queue than netem's 1000 packets
    assert netem_args(Impairment(delay=1.0))["limit"] > 1000
    assert describe(Impairment(loss=0.05, delay=0.02)) == "loss 5%, delay 20ms"


def test_interfaces_by_node_are_each_nodes_ends_in_creation_order() -> None:
    from meshstress.model import generators

    topo = generators.grid4(5, 4)
    topo.segments.append(Segment("air", ["n0", "n7", "n12"]))
    p = make_plan(topo, "ab")
    by_node = p.interfaces_by_node()
    assert set(by_node) == set(p.node_ns)
    for node, ns in p.node_ns.items():
        ends = [end for v in p.veths for end in (v.a, v.b) if end.ns == ns]
        ends.sort(key=lambda i: int(i.ifname.rsplit("i", 1)[-1]))
        assert by_node[node] == ends == p.interfaces(node)
        assert [int(e.ifname.rsplit("i", 1)[-1]) for e in ends] == list(range(len(ends)))


def test_state_file_dict_is_asdict() -> None:
    from dataclasses import asdict

    st = RunState(run_id="ab", topology="t", namespaces=["ms-ab-n0"], node_ns={"n0": "ms-ab-n0"})
    st.interfaces = {"n0": [{"ifname": "ms-ab-i0", "peer": "n1", "segment": None}]}
    st.processes.append(ProcessRecord(pid=1, create_time=2.0, node="n0", role="x", argv=["a"]))
    st.extra["static_routes"] = 3
    assert st.to_dict() == asdict(st)
    assert RunState.from_dict(st.to_dict()) == st
