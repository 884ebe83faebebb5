"""meshstress.stress.live on real meshes (root): each context manager changes the kernel
state and puts it back on exit, also when the block raises; nesting; sweeps; the user's
processes. What is checked is read back from the kernel (interface flags, qdiscs, the
routing daemons' PIDs), not from the library's own bookkeeping."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import psutil
import pytest

from meshstress import doctor
from meshstress.errors import CapabilityError, InputError
from meshstress.model import generators
from meshstress.stress.live import LiveMesh, recovery_time

pytestmark = pytest.mark.network


class Boom(Exception):
    pass


def ifname(mesh: LiveMesh, node: str, peer: str) -> str:
    (name,) = [i["ifname"] for i in mesh.state.interfaces[node] if i.get("peer") == peer]
    return name


def if_flags(mesh: LiveMesh, node: str, peer: str) -> int:
    ipr = mesh.netlink(node)
    (link,) = ipr.get_links(ipr.link_lookup(ifname=ifname(mesh, node, peer))[0])
    return int(link["flags"])


def is_up(mesh: LiveMesh, node: str, peer: str) -> bool:
    """Carries frames, read back from the kernel: set up (IFF_UP) and not dropping
    (a radio-like cut's drop slot, mesh.events.dropping)."""
    return bool(if_flags(mesh, node, peer) & 1) and not mesh.events.dropping(
        node, ifname(mesh, node, peer)
    )


def root_qdisc(mesh: LiveMesh, node: str, peer: str) -> tuple[str, dict[str, int]]:
    """(kind, tbf parameters or {}) of the root qdisc on node's end toward peer."""
    ipr = mesh.netlink(node)
    index = ipr.link_lookup(ifname=ifname(mesh, node, peer))[0]
    for q in ipr.get_qdiscs(index=index):
        if q["parent"] == 0xFFFFFFFF:
            opts = q.get_attr("TCA_OPTIONS")
            parms = opts.get_attr("TCA_TBF_PARMS") if opts is not None else None
            return q.get_attr("TCA_KIND"), dict(parms or {})
    return "", {}


def tbf_rate_bits(mesh: LiveMesh, node: str, peer: str) -> int | None:
    kind, parms = root_qdisc(mesh, node, peer)
    return parms["rate"] * 8 if kind == "tbf" else None


def daemons(mesh: LiveMesh, node: str) -> list[int]:
    """PIDs of the live routing daemons of node, by the run's records."""
    out = []
    for rec in mesh.state.processes:
        if rec.node == node and rec.role == mesh.backend.role:
            try:
                p = psutil.Process(rec.pid)
                if abs(p.create_time() - rec.create_time) < 0.05 and p.status() != "zombie":
                    out.append(rec.pid)
            except psutil.NoSuchProcess:
                pass
    return out


def test_link_down_takes_both_ends_down_and_back_up_also_after_a_failure(mesh_factory) -> None:
    mesh = mesh_factory(generators.line(3), routing="static")
    assert mesh.ping("n0", "n2", count=1).ok
    with mesh.link_down("n1", "n0") as rec:
        assert rec["action"] == "link-down" and rec["t"] <= time.monotonic()
        assert not is_up(mesh, "n0", "n1") and not is_up(mesh, "n1", "n0")
        assert is_up(mesh, "n1", "n2")
        assert not mesh.ping("n0", "n1", count=1).ok
    assert is_up(mesh, "n0", "n1") and is_up(mesh, "n1", "n0")
    assert mesh.ping("n0", "n2", count=1).ok  # neighbour and static routes back too
    with pytest.raises(Boom, match="inside"):
        with mesh.link_down("n0", "n1"):
            assert not is_up(mesh, "n0", "n1")
            raise Boom("inside")
    assert is_up(mesh, "n0", "n1") and is_up(mesh, "n1", "n0")
    assert mesh.ping("n0", "n2", count=1).ok
    assert [r["action"] for r in mesh.records] == ["link-down", "link-up"] * 2


def test_rate_impairment_is_a_tbf_and_the_previous_qdisc_comes_back(mesh_factory) -> None:
    mesh = mesh_factory(generators.line(2), routing="static")
    assert root_qdisc(mesh, "n0", "n1")[0] != "tbf"
    with mesh.impair("n0", "n1", rate="2mbit"):
        assert tbf_rate_bits(mesh, "n0", "n1") == 2_000_000
        assert tbf_rate_bits(mesh, "n1", "n0") == 2_000_000
        with mesh.impair("n0", "n1", rate=500_000, direction="a_to_b"):  # SI number
            assert tbf_rate_bits(mesh, "n0", "n1") == 500_000
            assert tbf_rate_bits(mesh, "n1", "n0") == 2_000_000
        assert tbf_rate_bits(mesh, "n0", "n1") == 2_000_000  # the outer one is back
        with pytest.raises(Boom):
            with mesh.impair("n1", "n0", rate="1mbit", direction="a_to_b"):  # n1 -> n0
                assert tbf_rate_bits(mesh, "n1", "n0") == 1_000_000
                assert tbf_rate_bits(mesh, "n0", "n1") == 2_000_000
                raise Boom
        assert tbf_rate_bits(mesh, "n1", "n0") == 2_000_000
    assert root_qdisc(mesh, "n0", "n1")[0] != "tbf" and root_qdisc(mesh, "n1", "n0")[0] != "tbf"
    assert mesh.impairment("n0", "n1").rate is None


def test_a_topology_impairment_is_what_comes_back(mesh_factory) -> None:
    topo = generators.line(2)
    topo.links[0].ab = type(topo.links[0].ab)(rate=3_000_000)
    mesh = mesh_factory(topo, routing="static")
    assert tbf_rate_bits(mesh, "n0", "n1") == 3_000_000
    with mesh.impair("n0", "n1", rate="1mbit"):
        assert tbf_rate_bits(mesh, "n0", "n1") == 1_000_000
        assert tbf_rate_bits(mesh, "n1", "n0") == 1_000_000
    assert tbf_rate_bits(mesh, "n0", "n1") == 3_000_000
    assert root_qdisc(mesh, "n1", "n0")[0] != "tbf"


def test_loss_needs_netem(mesh_factory) -> None:
    """Where the kernel lacks netem: CapabilityError naming it, and nothing changed;
    where it has it: a netem qdisc for the block, gone after."""
    mesh = mesh_factory(generators.line(2), routing="static")
    if not doctor.has_qdisc("netem"):
        with pytest.raises(CapabilityError, match="netem"):
            with mesh.impair("n0", "n1", loss="5%", rate="1mbit"):
                pytest.fail("the block ran without netem")
        assert root_qdisc(mesh, "n0", "n1")[0] != "tbf" and mesh.records == []
    else:
        with mesh.impair("n0", "n1", loss="5%", delay="10ms"):
            assert root_qdisc(mesh, "n0", "n1")[0] == "netem"
        assert root_qdisc(mesh, "n0", "n1")[0] != "netem"


def test_bad_input_is_one_line_naming_the_field_and_changes_nothing(mesh_factory) -> None:
    mesh = mesh_factory(generators.line(3), routing="static")
    cases = [
        (lambda: mesh.link_down("n0", "n2"), "mesh.link_down: link: no link n0-n2"),
        (lambda: mesh.link_down("n0", "zz"), "mesh.link_down: link[1]: unknown node 'zz'"),
        (lambda: mesh.impair("n0", "n1", rate="fast"), "mesh.impair: rate: "),
        (lambda: mesh.impair("n0", "n1", loss=1.5), "mesh.impair: loss: "),
        (lambda: mesh.impair("n0", "n1", rate="1mbit", direction="up"), "mesh.impair: direction"),
        (lambda: mesh.crash("n9"), "mesh.crash: node: unknown node 'n9'"),
        (lambda: mesh.crash("n1", carrier="off"), "mesh.crash: carrier: must be one of keep"),
        (lambda: mesh.link_down("n0", "n1", carrier=1), "mesh.link_down: carrier: "),
        (lambda: mesh.partition([["n0"]], carrier="drop"), "mesh.partition: carrier: "),
        (lambda: mesh.partition([["n0"], ["n0", "n1"]]), "mesh.partition: groups[1][0]"),
        (
            lambda: mesh.partition([["n0", "n1", "n2"]]),
            "mesh.partition: groups: a partition needs two",
        ),
    ]
    for make, text in cases:
        with pytest.raises(InputError) as err:
            with make():
                pytest.fail("the block ran")
        assert str(err.value).startswith(text) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="mesh.sweep: steps\\[1\\]"):
        mesh.sweep("failed_links", [0, 5], lambda s: 1.0)
    assert mesh.records == []
    assert all(is_up(mesh, a, b) for a, b in (("n0", "n1"), ("n1", "n2")))


def test_crash_kills_the_daemons_and_takes_the_interfaces_down_then_restarts(
    mesh_factory,
) -> None:
    mesh = mesh_factory(generators.line(3), routing="babeld", settings={"hello_interval": "250ms"})
    (before,) = daemons(mesh, "n1")
    with pytest.raises(Boom):
        with mesh.crash("n1") as rec:
            assert rec["detail"]["killed"] == [before]
            assert daemons(mesh, "n1") == []
            assert not is_up(mesh, "n1", "n0") and not is_up(mesh, "n1", "n2")
            assert daemons(mesh, "n0") and daemons(mesh, "n2")  # the others run on
            raise Boom
    (after,) = daemons(mesh, "n1")
    assert after != before
    assert is_up(mesh, "n1", "n0") and is_up(mesh, "n1", "n2")
    assert mesh.wait_until(lambda: mesh.ping("n0", "n2", count=1, wait=0.5).ok, timeout=60)
    # radio-like (the default) kept the interfaces up; "lose" sets them down
    assert [r["detail"]["carrier"] for r in mesh.records] == ["keep", "keep"]
    with mesh.crash("n1", carrier="lose") as rec:
        assert rec["detail"]["carrier"] == "lose"
        assert not if_flags(mesh, "n1", "n0") & 1 and not if_flags(mesh, "n1", "n2") & 1
    assert is_up(mesh, "n1", "n0") and is_up(mesh, "n1", "n2")
    assert mesh.wait_until(lambda: mesh.ping("n0", "n2", count=1, wait=0.5).ok, timeout=60)


def test_partition_cuts_between_groups_and_nesting_restores_each_layer(mesh_factory) -> None:
    topo = generators.ring(4)  # n0-n1-n2-n3-n0
    mesh = mesh_factory(topo, routing="static")
    with mesh.partition([["n0", "n1"]]) as rec:
        assert sorted(rec["detail"]["cut"]) == ["n1-n2", "n3-n0"]
        assert not is_up(mesh, "n1", "n2") and not is_up(mesh, "n0", "n3")
        assert is_up(mesh, "n0", "n1") and is_up(mesh, "n2", "n3")
        with mesh.partition([["n0"], ["n1"]]):  # another partition replaces it
            assert not is_up(mesh, "n0", "n1") and not is_up(mesh, "n1", "n2")
        # the outer partition again: n0-n1 back, the cuts still cut
        assert is_up(mesh, "n0", "n1")
        assert not is_up(mesh, "n1", "n2") and not is_up(mesh, "n0", "n3")
        with mesh.link_down("n1", "n2"):  # down already, by the partition
            assert not is_up(mesh, "n1", "n2")
        assert not is_up(mesh, "n1", "n2")  # still cut: the partition is in force
        with pytest.raises(Boom):
            with mesh.link_down("n0", "n1"):
                raise Boom
        assert is_up(mesh, "n0", "n1")
    assert all(
        is_up(mesh, a, b) for a, b in (("n0", "n1"), ("n1", "n2"), ("n2", "n3"), ("n3", "n0"))
    )
    assert mesh.ping("n0", "n2", count=1).ok


def test_sweep_sets_each_step_while_measuring_and_restores_after(mesh_factory) -> None:
    mesh = mesh_factory(generators.line(3), routing="static")
    seen: list[tuple[object, int | None, int | None]] = []

    def measure(step: object) -> tuple[int, int]:
        seen.append((step, tbf_rate_bits(mesh, "n0", "n1"), tbf_rate_bits(mesh, "n2", "n1")))
        return (len(seen), 4)

    curve = mesh.sweep("rate", ["4mbit", "1mbit", 250_000], measure, metric="ok_ratio")
    assert seen == [
        ("4mbit", 4_000_000, 4_000_000),
        ("1mbit", 1_000_000, 1_000_000),
        (250_000, 250_000, 250_000),
    ]
    assert curve.axis == "rate" and curve.unit == "bit/s" and curve.falls
    assert curve.stress == (4e6, 1e6, 250e3) and curve.counts == ((1, 4), (2, 4), (3, 4))
    assert curve.values == (0.25, 0.5, 0.75)
    assert tbf_rate_bits(mesh, "n0", "n1") is None and tbf_rate_bits(mesh, "n2", "n1") is None

    downs: list[list[bool]] = []

    def count_down(step: object) -> float:
        downs.append([not is_up(mesh, "n0", "n1"), not is_up(mesh, "n1", "n2")])
        return float(sum(downs[-1]))

    links = [("n1", "n2"), ("n0", "n1")]
    failed = mesh.sweep("failed_links", [0, 1, 2], count_down, links=links, better="lower")
    assert downs == [[False, False], [False, True], [True, True]]
    assert failed.values == (0.0, 1.0, 2.0) and failed.counts is None and failed.unit == ""
    assert is_up(mesh, "n0", "n1") and is_up(mesh, "n1", "n2")

    def broken(step: object) -> float:
        assert tbf_rate_bits(mesh, "n0", "n1") == 1_000_000
        raise Boom(str(step))

    with pytest.raises(Boom, match="1mbit"):
        mesh.sweep("rate", ["1mbit", "500kbit"], broken)
    assert tbf_rate_bits(mesh, "n0", "n1") is None


SLEEPER = "import sys, time; print('ready', flush=True); time.sleep(600)"


def test_process_runs_inside_the_node_recorded_and_stopped_also_after_a_failure(
    mesh_factory,
) -> None:
    mesh = mesh_factory(generators.line(2), routing="static")
    with pytest.raises(Boom):
        with mesh.process(
            "n1", [sys.executable, "-c", SLEEPER], name="sleeper", ready="ready"
        ) as p:
            assert any(r.pid == p.pid and r.role == "user" for r in mesh.state.processes)
            ns = subprocess.run(
                ["ip", "netns", "identify", str(p.pid)], capture_output=True, text=True
            )
            assert ns.stdout.strip() == mesh.ns("n1")
            raise Boom
    assert p.poll() is not None  # stopped and reaped
    assert all(r.pid != p.pid for r in mesh.state.processes)
    with open(p.log_path) as f:  # type: ignore[attr-defined]
        assert "ready" in f.read()
    from meshstress.errors import MeshstressError

    with pytest.raises(MeshstressError, match="exited with 3 before it was ready: oops"):
        with mesh.process("n1", [sys.executable, "-c", "print('oops'); raise SystemExit(3)"],
                          ready="never"):  # fmt: skip
            pass


def test_recovery_time_counts_from_since_until_the_probe_succeeds() -> None:
    calls = []

    def probe() -> bool:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise OSError("timed out")
        return True

    start = time.monotonic()
    took = recovery_time(probe, timeout=10, since=start, interval=0.01)
    assert len(calls) == 3 and took >= calls[-1] - start
    assert recovery_time(lambda: False, timeout=0.05, interval=0.01) == math.inf
