"""Flows on a real 3-node line on the host (root): static routing, no netem, so loss is
made by setting the middle link down and up through netlink. Every wait is bounded."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from meshstress import generators
from meshstress.build import Mesh
from meshstress.flows import FlowSpec, start_flow
from meshstress.metrics import flow_metrics, outage_after, outages

pytestmark = pytest.mark.network


def line(mesh_factory) -> Mesh:
    topo = generators.line(3)
    mesh = mesh_factory(topo, routing="static", wait=True, timeout=30)
    mesh.topo = topo  # type: ignore[attr-defined]
    mesh.index = {  # type: ignore[attr-defined]
        (link.get_attr("IFLA_IFNAME"), node): link["index"]
        for node in mesh.nodes
        for link in mesh.netlink(node).get_links()
    }
    assert mesh.ping("n0", "n2", count=1, wait=1).ok
    return mesh


def gone(flow) -> bool:
    for _, p in flow.procs:
        try:
            if psutil.Process(p.pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def set_link(mesh: Mesh, a: str, b: str, state: str) -> None:
    """Both ends of the a-b veth pair up or down. Going down, the kernel flushes the static
    routes over them; after "up" the backend puts them back (as the link-up event does)."""
    for node, peer in ((a, b), (b, a)):
        (iface,) = [i for i in mesh.state.interfaces[node] if i["peer"] == peer]
        mesh.netlink(node).link("set", index=mesh.index[iface["ifname"], node], state=state)
    if state == "up":
        for node in (a, b):
            mesh.backend.links_up(mesh, mesh.topo, node)  # type: ignore[attr-defined]


def test_udp_delivers_every_packet_with_latency(mesh_factory, tmp_path: Path) -> None:
    mesh = line(mesh_factory)
    spec = FlowSpec("cbr", "udp", "n0", "n2", rate_pps=200, size=200)
    t0 = time.monotonic() + 0.5
    flow = start_flow(mesh, spec, str(tmp_path), t0, duration=3.0)
    pids = {p.pid for _, p in flow.procs}
    assert pids <= {r.pid for r in mesh.state.processes if r.role == "traffic"}
    flow.wait(timeout=10)
    rec = flow.record()
    m = flow_metrics(rec, t0)
    assert m["errors"] == []
    assert 580 <= m["sent"] <= 601, m["sent"]
    assert m["received"] == m["sent"] and m["lost"] == 0 and m["duplicates"] == 0
    assert m["delivery_ratio"] == 1.0
    assert m["outages"] == [] and m["longest_outage_s"] == 0.0
    lat = m["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"] < 1000
    assert m["jitter_ms"] is not None and m["jitter_ms"] >= 0
    assert m["throughput_bps"] == pytest.approx(200 * 200 * 8, rel=0.05)
    # the sender started on schedule
    assert 0 <= m["start_delay_s"] < 0.3 and abs(rec.sent[0][1] - t0) < 0.3
    assert gone(flow)


def test_link_down_makes_one_outage_of_its_length(mesh_factory, tmp_path: Path) -> None:
    mesh = line(mesh_factory)
    spec = FlowSpec("cut", "udp", "n0", "n2", rate_pps=200, size=100)
    t0 = time.monotonic() + 0.5
    flow = start_flow(mesh, spec, str(tmp_path), t0, duration=4.0)
    time.sleep(max(0.0, t0 + 1.5 - time.monotonic()))
    t_down = time.monotonic()
    set_link(mesh, "n1", "n2", "down")
    time.sleep(1.0)
    set_link(mesh, "n1", "n2", "up")
    t_up = time.monotonic()
    flow.wait(timeout=10)
    rec = flow.record()
    m = flow_metrics(rec, t0)
    assert m["delivery_ratio"] < 1.0
    assert 0.6 <= m["delivery_ratio"] <= 0.85, m["delivery_ratio"]
    outs = outages(rec)
    assert len(outs) == 1, m["outages"]
    (start, end) = outs[0]
    assert t_down - 0.1 <= start <= t_down + 0.2, start - t_down
    assert 0.8 <= end - start <= 1.6, end - start
    assert 0.8 <= m["longest_outage_s"] <= 1.6
    rec_s = outage_after(rec, t_down)
    assert rec_s is not None and 0.8 <= rec_s <= 1.6
    assert outage_after(rec, t_up) is not None and outage_after(rec, t_up) <= 0.6
    assert gone(flow)


def test_tcp_bulk_moves_bytes_and_counts_retransmissions(mesh_factory, tmp_path: Path) -> None:
    mesh = line(mesh_factory)
    spec = FlowSpec("bulk", "tcp", "n0", "n2")
    t0 = time.monotonic() + 0.5
    flow = start_flow(mesh, spec, str(tmp_path), t0, duration=2.0)
    flow.wait(timeout=10)
    m = flow_metrics(flow.record(), t0)
    assert m["errors"] == [], m["errors"]
    assert m["connected"] is True and 0 <= m["start_delay_s"] < 0.5
    # veth on 2 cores moves far more than 10 Mbit/s; every byte written arrived or was in flight
    assert m["bytes"] > 2 * 10_000_000 / 8, m["bytes"]
    assert m["bytes"] <= m["bytes_written"]
    assert m["goodput_bps"] > 10_000_000
    assert m["retransmissions"] is not None and m["retransmissions"] >= 0
    assert m["segments_out"] > 0 and 0 <= m["retransmission_rate"] <= 1
    assert len(m["series"]["t"]) == 20 and sum(m["series"]["goodput_bps"]) > 0
    assert gone(flow)


def test_tcp_capped_and_stalled_by_a_link_down(mesh_factory, tmp_path: Path) -> None:
    mesh = line(mesh_factory)
    spec = FlowSpec("capped", "tcp", "n0", "n2", rate_bps=4_000_000)
    t0 = time.monotonic() + 0.5
    flow = start_flow(mesh, spec, str(tmp_path), t0, duration=3.5)
    time.sleep(max(0.0, t0 + 1.0 - time.monotonic()))
    set_link(mesh, "n1", "n2", "down")
    time.sleep(1.0)
    set_link(mesh, "n1", "n2", "up")
    flow.wait(timeout=10)
    m = flow_metrics(flow.record(), t0)
    assert m["errors"] == [], m["errors"]
    # the cap holds (4 Mbit/s for 3.5 s = 1.75 MB at most, plus a socket buffer's worth)
    assert m["bytes"] <= 4_000_000 / 8 * 3.5 * 1.1
    assert m["bytes"] > 4_000_000 / 8 * 1.0
    assert len(m["stalls"]) >= 1 and m["longest_outage_s"] >= 0.8
    assert m["retransmissions"] >= 1  # segments sent into the down link were retransmitted
    assert gone(flow)


def test_ping_flow_and_early_stop(mesh_factory, tmp_path: Path) -> None:
    mesh = line(mesh_factory)
    spec = FlowSpec("echo", "ping", "n2", "n0", rate_pps=20, size=56)
    t0 = time.monotonic() + 0.3
    flow = start_flow(mesh, spec, str(tmp_path), t0, duration=60.0)
    udp = start_flow(mesh, FlowSpec("u", "udp", "n0", "n2", rate_pps=50), str(tmp_path), t0, 60.0)
    time.sleep(max(0.0, t0 + 2.0 - time.monotonic()))
    began = time.monotonic()
    flow.stop()
    udp.stop()
    udp.stop()  # idempotent
    assert time.monotonic() - began < 5
    m = flow_metrics(flow.record(), t0)
    assert 30 <= m["sent"] <= 45, m["sent"]
    assert m["received"] >= m["sent"] - 1 and m["delivery_ratio"] > 0.95
    rtt = m["rtt_ms"]
    assert 0 < rtt["p50"] <= rtt["max"] < 1000
    u = flow_metrics(udp.record(), t0)  # flushed on SIGTERM
    assert 80 <= u["sent"] <= 110 and u["received"] >= u["sent"] - 2
    assert gone(flow) and gone(udp)


def test_ping_sees_the_outage(mesh_factory, tmp_path: Path) -> None:
    mesh = line(mesh_factory)
    spec = FlowSpec("echo", "ping", "n0", "n2", rate_pps=20, size=56)
    t0 = time.monotonic() + 0.3
    flow = start_flow(mesh, spec, str(tmp_path), t0, duration=3.5)
    time.sleep(max(0.0, t0 + 1.0 - time.monotonic()))
    t_down = time.monotonic()
    set_link(mesh, "n1", "n2", "down")
    time.sleep(1.0)
    set_link(mesh, "n1", "n2", "up")
    flow.wait(timeout=10)
    rec = flow.record()
    m = flow_metrics(rec, t0)
    assert 0.55 <= m["delivery_ratio"] < 0.9, m
    assert len(m["outages"]) == 1 and 0.7 <= m["longest_outage_s"] <= 1.6, m["outages"]
    assert abs(outages(rec)[0][0] - t_down) < 0.2
    assert gone(flow)
