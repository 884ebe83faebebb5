"""The capacity estimate (pure): per-unit costs times what a scenario asks for, the
host check, and calibration files (a bad one: an error naming it and the field)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from meshstress.errors import InputError
from meshstress.model import capacity, generators
from meshstress.model.capacity import Calibration, estimate, load_calibration
from meshstress.traffic.flows import FlowSpec

COSTS = {
    "namespace_mb": 0.5, "interface_mb": 0.1, "route_kb": 1.0,
    "packet_end_core_s": 1e-4, "packet_hop_core_s": 1e-5, "tcp_bulk_cores": 1.0,
    "agent_mb": 10.0, "probe_packet_share": 0.5, "probe_mb": 20.0,
    "snapshot_node_core_s": 1e-3, "meshstress_mb": 50.0, "meshstress_node_mb": 0.0,
}  # fmt: skip
BABELD = {"interval_s": 1.0, "iface_cores": 1e-3, "iface_node_cores": 1e-5, "daemon_mb": 2.0}


def cal() -> Calibration:
    return Calibration(dict(COSTS), {"babeld": dict(BABELD)}, source="test.json")


def part(est: capacity.Estimate, what: str) -> capacity.Part:
    return next(p for p in est.parts if p.what == what)


def test_routing_cost_scales_with_interfaces_nodes_and_the_hello_interval() -> None:
    topo = generators.grid4(3, 3)  # 9 nodes, 12 links: 24 interfaces
    topo.routing = "babeld"
    est = estimate(topo, [], cal(), route_interval=1.0)
    r = part(est, "routing")
    assert r.cores == pytest.approx(24 * (1e-3 + 1e-5 * 9))
    assert r.memory_mb == pytest.approx(9 * 2.0 + 9 * 8 * 1.0 / 1024)
    topo.routing_settings = {"hello_interval": "250ms"}  # 4 hellos a second: 4x the cost
    assert part(estimate(topo, [], cal()), "routing").cores == pytest.approx(4 * r.cores)
    topo.nodes[0].settings["routing"] = {"hello_interval": 1.0}  # n0 (2 interfaces) slower
    slower = part(estimate(topo, [], cal()), "routing").cores
    assert slower == pytest.approx(4 * r.cores - 3 * 2 * (1e-3 + 1e-5 * 9))


def test_namespaces_recorder_and_meshstress() -> None:
    topo = generators.line(4)  # 4 nodes, 6 interfaces
    est = estimate(topo, [], cal(), route_interval=0.5)
    assert part(est, "namespaces").memory_mb == pytest.approx(4 * 0.5 + 6 * 0.1)
    assert part(est, "recorder").cores == pytest.approx(4 * 1e-3 / 0.5)
    assert part(est, "routing").cores == 0  # routing none
    assert est.memory_mb == pytest.approx(2.6 + 50.0)
    assert estimate(topo, [], cal(), route_interval=None).parts[-2].what != "recorder"


def test_traffic_cost_per_packet_at_the_ends_and_per_hop() -> None:
    topo = generators.line(4)  # n0 .. n3: 3 hops
    flows = [
        FlowSpec("a", "udp", "n0", "n3", rate_pps=1000),
        FlowSpec("b", "ping", "n1", "n2", rate_pps=10),  # echo and reply: 20 pps, 1 hop
        FlowSpec("c", "tcp", "n0", "n1"),  # no cap: a core
    ]
    est = estimate(topo, flows, cal())
    t = part(est, "traffic")
    assert t.cores == pytest.approx(1000 * (1e-4 + 3e-5) + 20 * (1e-4 + 1e-5) + 1.0)
    assert t.memory_mb == 6 * 10.0
    probed = part(estimate(topo, flows[:1], cal(), probes=["traffic", "drops"]), "traffic")
    assert probed.cores == pytest.approx(1000 * (1e-4 + 3e-5) * 2.0)


def test_segments_count_as_neighbours_for_hops() -> None:
    topo = generators.line(3)
    from meshstress.model.topology import Segment

    topo.segments.append(Segment("s", ["n0", "n2"]))
    assert capacity.hops(capacity.adjacency(topo), "n0", "n2") == 1
    assert capacity.interfaces(topo) == {"n0": 2, "n1": 2, "n2": 2}


def test_an_uncalibrated_backend_and_processes_are_listed_not_guessed() -> None:
    topo = generators.line(2)
    topo.routing = "batmand"
    est = estimate(topo, [], cal(), processes=["server"])
    assert est.not_estimated == ["routing batmand (no calibration for it)", "process server"]
    assert any("not estimated" in line for line in est.lines())


def test_exceeds_says_what_the_host_lacks() -> None:
    est = capacity.Estimate([capacity.Part("x", 1.5, 1000.0)], "c.json", False)
    assert est.exceeds(cores=2, mem_available_mb=2000) == []
    cpu = est.exceeds(cores=2, mem_available_mb=2000, busy_now_cores=0.5)
    assert len(cpu) == 1 and cpu[0].startswith("CPU: needs 1.50 cores + 0.50 in use")
    assert est.exceeds(cores=1, mem_available_mb=500) == [
        "CPU: needs 1.50 cores, the host has 1 (0.95 below the 95% saturation limit)",
        "memory: needs 1000 MB, 500 MB available",
    ]


def calib_json(**over: object) -> str:
    data = Calibration(dict(COSTS), {"babeld": dict(BABELD)}).to_json()
    data.update(over)
    return json.dumps(data)


def test_calibration_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    capacity.store_calibration(cal(), str(path))
    got = load_calibration(str(path))
    assert got.costs == COSTS and got.routing == {"babeld": BABELD}
    assert got.source == str(path) and not got.default


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("{not json", "file"),
        ("[1]", "file"),
        (calib_json(version=7), "version"),
        (calib_json(costs=None), "costs"),
        (calib_json(costs={**COSTS, "route_kb": "big"}), "costs.route_kb"),
        (calib_json(costs={**COSTS, "agent_mb": -1}), "costs.agent_mb"),
        (calib_json(costs={k: v for k, v in COSTS.items() if k != "probe_mb"}), "costs.probe_mb"),
        (calib_json(routing={"babeld": {**BABELD, "interval_s": 0}}), "routing.babeld.interval_s"),
        (calib_json(routing={"babeld": 3}), "routing.babeld"),
    ],
)
def test_a_bad_calibration_file_names_itself_and_the_field(
    tmp_path: Path, text: str, field: str
) -> None:
    path = tmp_path / "cal.json"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_calibration(str(path))
    assert err.value.source == str(path)
    assert err.value.field == field
    assert str(err.value).startswith(f"{path}: {field}: ")


def test_a_missing_or_untrusted_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.json: file: "):
        load_calibration(str(tmp_path / "nope.json"))
    path = tmp_path / "open.json"
    path.write_text(calib_json())
    os.chmod(path, 0o666)
    with pytest.raises(InputError, match="not trusted"):
        load_calibration(str(path))


def test_without_a_stored_file_the_packaged_default_is_used(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(capacity, "STORED", str(tmp_path / "absent.json"))
    got = load_calibration()
    assert got.default and got.source == "meshstress/data/calibration.json"
    assert set(got.routing) >= {"static", "babeld", "batmand", "batman-adv"}
    est = estimate(generators.line(2), [], got)
    assert "(packaged default)" in est.lines()[0]


# --- the VM lab's own costs ---------------------------------------------------------


@pytest.mark.parametrize(
    ("chosen", "env", "where"),
    [
        (None, {}, "host"),
        ("host", {}, "host"),
        ("lab", {}, "lab"),  # the host runs it in the lab: the lab's costs
        (None, {"MESHSTRESS_LAB_GUEST": "1"}, "lab"),  # inside the guest (meshstress lab run)
        ("host", {"MESHSTRESS_WHERE_LABEL": "lab"}, "lab"),  # the runner's lab run, inside
        (None, {"MESHSTRESS_LAB_GUEST": "0", "MESHSTRESS_WHERE_LABEL": "host"}, "host"),
    ],
)
def test_a_run_in_the_lab_uses_the_lab_costs(
    chosen: str | None, env: dict[str, str], where: str
) -> None:
    assert capacity.where_of(chosen, env) == where


def test_the_lab_guest_mark_is_the_one_the_lab_sets() -> None:
    from meshstress.lab import guest, runner

    assert capacity.LAB_GUEST_ENV == guest.GUEST_ENV
    assert runner.guest_env({"PATH": "/bin", "GITHUB_TOKEN": "x"}) == {
        "PATH": "/bin", capacity.LAB_GUEST_ENV: "1"
    }  # fmt: skip


def test_the_lab_and_the_host_each_load_their_own_file(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    host, lab = tmp_path / "host.json", tmp_path / "lab.json"
    monkeypatch.setattr(capacity, "STORED", str(host))
    monkeypatch.setattr(capacity, "STORED_LAB", str(lab))
    # nothing stored: each place's packaged default
    assert load_calibration(where="lab").source == "meshstress/data/calibration-lab.json"
    assert load_calibration(where="host").source == "meshstress/data/calibration.json"
    capacity.store_calibration(cal(), str(lab))
    assert load_calibration(where="lab").source == str(lab)
    assert load_calibration(where="host").default  # the host's is not the lab's
    capacity.store_calibration(cal(), str(host))
    assert load_calibration().source == str(host)
    assert capacity.stored_path("lab") == str(lab) and capacity.stored_path("host") == str(host)


def test_the_packaged_lab_costs_were_measured_in_the_lab_with_batman_adv() -> None:
    lab = capacity.packaged_default("lab")
    host = capacity.packaged_default("host")
    assert lab.host["where"] == "lab"
    assert "routing.batman-adv" not in lab.host["kept"]  # measured there, not a guess
    assert "routing.batman-adv" in host.host["kept"]  # the host has no batman-adv
    assert lab.routing["batman-adv"] != host.routing["batman-adv"]
    assert lab.routing["batman-adv"]["iface_node_iface_cores"] > 0  # the global list


def test_the_lab_capacity_is_the_guests_as_calibrated() -> None:
    c = cal()
    assert capacity.lab_capacity(c) == (2, 1500.0, 0.0)  # not recorded: the lab's defaults
    c.host = {"cpus": 4, "mem_available_mb": 1700}
    assert capacity.lab_capacity(c) == (4, 1700.0, 0.0)
    c.host = {"cpus": "two", "mem_available_mb": -1}
    assert capacity.lab_capacity(c) == (2, 1500.0, 0.0)


def test_a_backend_can_give_its_own_recorder_cost_per_table_entry(tmp_path: Path) -> None:
    topo = generators.grid4(3, 3)  # 9 nodes: 72 entries (node, other node)
    topo.routing = "babeld"
    c = cal()
    plain = part(estimate(topo, [], c, route_interval=0.5), "recorder").cores
    assert plain == pytest.approx(9 * 1e-3 / 0.5)  # costs.snapshot_node_core_s
    c.routing["babeld"] |= {"snapshot_node_core_s": 2e-3, "snapshot_entry_core_s": 1e-4}
    own = part(estimate(topo, [], c, route_interval=0.5), "recorder").cores
    assert own == pytest.approx((9 * 2e-3 + 72 * 1e-4) / 0.5)
    path = tmp_path / "cal.json"  # kept in the file, checked when read
    capacity.store_calibration(c, str(path))
    assert load_calibration(str(path)).routing["babeld"]["snapshot_entry_core_s"] == 1e-4
    path.write_text(calib_json(routing={"babeld": {**BABELD, "snapshot_entry_core_s": -1}}))
    with pytest.raises(InputError, match=r"routing\.babeld\.snapshot_entry_core_s"):
        load_calibration(str(path))
    path.write_text(calib_json())  # without them: valid, and the costs' figure is used
    assert "snapshot_entry_core_s" not in load_calibration(str(path)).routing["babeld"]


def test_batman_adv_pays_per_node_and_per_interface_of_the_mesh() -> None:
    topo = generators.grid4(3, 3)  # 9 nodes, 24 interfaces
    topo.routing = "batman-adv"
    c = cal()
    c.routing["batman-adv"] = {"interval_s": 1.0, "iface_cores": 0.0, "iface_node_cores": 0.0,
                               "daemon_mb": 0.0, "iface_node_iface_cores": 1e-7}  # fmt: skip
    r = part(estimate(topo, [], c), "routing")
    assert r.cores == pytest.approx(24 * 1e-7 * 9 * 24)  # n x I^2
    big = generators.grid4(6, 6)  # 36 nodes, 120 interfaces: 4 x 5^2 = 100 times the cost
    big.routing = "batman-adv"
    assert part(estimate(big, [], c), "routing").cores == pytest.approx(100 * r.cores)


def test_a_flow_costs_its_own_share_besides_its_packets(tmp_path: Path) -> None:
    topo = generators.line(2)
    flows = [FlowSpec("a", "udp", "n0", "n1", rate_pps=100), FlowSpec("b", "tcp", "n0", "n1")]
    c = cal()
    c.costs["flow_cores"] = 0.01
    t = part(estimate(topo, flows, c), "traffic")
    assert t.cores == pytest.approx(0.01 + 100 * (1e-4 + 1e-5) + 1.0)  # tcp: bulk alone
    path = tmp_path / "cal.json"
    capacity.store_calibration(c, str(path))
    assert load_calibration(str(path)).costs["flow_cores"] == 0.01
    path.write_text(calib_json())  # an older file without it: no per-flow cost
    assert "flow_cores" not in load_calibration(str(path)).costs


def test_the_recorders_cost_per_entry_applies_to_every_backend_without_its_own() -> None:
    topo = generators.grid4(3, 3)  # 9 nodes: 72 entries
    c = cal()
    c.costs["snapshot_entry_core_s"] = 1e-5
    assert part(estimate(topo, [], c), "recorder").cores == pytest.approx(9 * 1e-3 + 72 * 1e-5)
    topo.routing = "babeld"
    c.routing["babeld"]["snapshot_entry_core_s"] = 1e-4  # the backend's own wins
    assert part(estimate(topo, [], c), "recorder").cores == pytest.approx(9 * 1e-3 + 72 * 1e-4)


def test_the_packaged_lab_costs_hold_only_what_was_measured_in_the_lab() -> None:
    lab = capacity.packaged_default("lab")
    assert set(lab.routing) == {"static", "batman-adv"}  # not the host's babeld, batmand
    topo = generators.line(2)
    topo.routing = "babeld"
    assert estimate(topo, [], lab).not_estimated == ["routing babeld (no calibration for it)"]
