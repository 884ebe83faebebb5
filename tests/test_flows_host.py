"""Flows on a real 3-node line on the host (root): static routing, no netem, so loss is
made by setting the middle link down and up through netlink. Every wait is bounded.

Counts are checked against what the flow's record says was sent, and outages against the
times the test cut and restored the link: how many packets a sender manages in a given
time depends on the host's load, so no test expects a count from a nominal rate."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from meshstress.build import Mesh
from meshstress.judge.metrics import flow_metrics, outage_after, outages
from meshstress.model import generators
from meshstress.traffic.flows import FlowSpec, start_flow

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


def cut_for_a_while(mesh: Mesh, t_at: float, seconds: float) -> tuple[float, float, float]:
    """At t_at set the n1-n2 link down, `seconds` later up again. Returns (before the
    cut, the cut done, before the link came back up)."""
    time.sleep(max(0.0, t_at - time.monotonic()))
    t_cut0 = time.monotonic()
    set_link(mesh, "n1", "n2", "down")
    t_cut1 = time.monotonic()
    time.sleep(seconds)
    t_up0 = time.monotonic()
    set_link(mesh, "n1", "n2", "up")
    return t_cut0, t_cut1, t_up0


def one_outage_over_the_cut(rec, t_cut0: float, t_cut1: float, t_up0: float) -> tuple[float, float]:
    """The flow lost exactly one run of consecutive packets, and it covers the cut: every
    packet sent while the link was down was lost, at most the last one sent before the
    cut was lost with them (in flight), and delivery resumed only with a packet sent
    after the link was back. Returns the run's (start, end) as the metrics define it."""
    sent = sorted(rec.sent, key=lambda p: p[1])
    got = {p[0] for p in rec.received}
    lost = [i for i, (seq, _) in enumerate(sent) if seq not in got]
    assert lost, "nothing was lost"
    assert lost == list(range(lost[0], lost[-1] + 1)), "the losses are not one run"
    while_down = [seq for seq, ts in sent if t_cut1 <= ts <= t_up0]
    assert while_down, "the sender sent nothing while the link was down"
    assert not got & set(while_down), "packets sent while the link was down arrived"
    before = [i for i, (_, ts) in enumerate(sent) if ts < t_cut0]
    assert not before or lost[0] >= before[-1], "packets sent well before the cut were lost"
    assert lost[-1] + 1 < len(sent), "delivery never resumed"
    start, end = sent[lost[0]][1], sent[lost[-1] + 1][1]
    assert end >= t_up0, "a packet sent while the link was down arrived"
    assert outages(rec) == [(start, end)]
    return start, end


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
    # every packet sent, by the sender's record, arrived once (how many it managed in 3 s
    # depends on the host's load; never more than the schedule: 200 pps for 3 s)
    assert m["sent"] == len(rec.sent) and 0 < m["sent"] <= 601, m["sent"]
    assert {p[0] for p in rec.received} == {p[0] for p in rec.sent}
    assert m["received"] == m["sent"] and m["lost"] == 0 and m["duplicates"] == 0
    assert m["delivery_ratio"] == 1.0
    assert m["outages"] == [] and m["longest_outage_s"] == 0.0
    lat = m["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"] < 1000
    # RFC 3550 jitter, recomputed here from the record: J += (|D| - J) / 16
    transit = [tr - ts for _, ts, tr in rec.received]
    j = 0.0
    for a, b in zip(transit, transit[1:], strict=False):
        j += (abs(b - a) - j) / 16
    assert m["jitter_ms"] == pytest.approx(j * 1000, abs=0.001)
    assert 0 < m["jitter_ms"] <= lat["max"] - lat["min"]
    # throughput from what arrived over the span it was sent in
    assert m["throughput_bps"] == pytest.approx(m["received"] * 200 * 8 / m["span_s"], rel=0.01)
    # the sender did not start early, and start_delay_s is its first send
    assert rec.sent[0][1] >= t0 and m["start_delay_s"] == round(rec.sent[0][1] - t0, 3)
    assert gone(flow)


def test_link_down_makes_one_outage_of_its_length(mesh_factory, tmp_path: Path) -> None:
    mesh = line(mesh_factory)
    spec = FlowSpec("cut", "udp", "n0", "n2", rate_pps=200, size=100)
    t0 = time.monotonic() + 0.5
    flow = start_flow(mesh, spec, str(tmp_path), t0, duration=4.0)
    t_cut0, t_cut1, t_up0 = cut_for_a_while(mesh, t0 + 1.5, 1.0)
    flow.wait(timeout=10)
    rec = flow.record()
    m = flow_metrics(rec, t0)
    start, end = one_outage_over_the_cut(rec, t_cut0, t_cut1, t_up0)
    assert m["lost"] == m["sent"] - m["received"] > 0
    assert m["delivery_ratio"] == round(m["received"] / m["sent"], 6) < 1.0
    assert m["longest_outage_s"] == round(end - start, 3)
    # the recovery time after the cut: until delivery resumed
    assert outage_after(rec, t_cut0) == pytest.approx(end - t_cut0)
    assert gone(flow)


def test_tcp_bulk_moves_bytes_and_counts_retransmissions(mesh_factory, tmp_path: Path) -> None:
    mesh = line(mesh_factory)
    spec = FlowSpec("bulk", "tcp", "n0", "n2")
    t0 = time.monotonic() + 0.5
    flow = start_flow(mesh, spec, str(tmp_path), t0, duration=2.0)
    flow.wait(timeout=10)
    m = flow_metrics(flow.record(), t0)
    assert m["errors"] == [], m["errors"]
    assert m["connected"] is True and m["start_delay_s"] >= 0
    # bytes moved (how many depends on the host's load); none arrived that were not written
    assert 0 < m["bytes"] <= m["bytes_written"], m
    assert m["goodput_bps"] == pytest.approx(m["bytes"] * 8 / m["span_s"], rel=0.01)
    # the sender's tcp_info: retransmitted segments are a part of the segments sent
    retrans, segs = m["retransmissions"], m["segments_out"]
    assert isinstance(retrans, int) and isinstance(segs, int) and 0 <= retrans <= segs
    assert segs > 0 and m["retransmission_rate"] == round(retrans / segs, 6)
    assert len(m["series"]["t"]) == 20 and sum(m["series"]["goodput_bps"]) > 0
    assert gone(flow)


def test_tcp_capped_and_stalled_by_a_link_down(mesh_factory, tmp_path: Path) -> None:
    mesh = line(mesh_factory)
    spec = FlowSpec("capped", "tcp", "n0", "n2", rate_bps=4_000_000)
    t0 = time.monotonic() + 0.5
    flow = start_flow(mesh, spec, str(tmp_path), t0, duration=3.5)
    t_cut0, t_cut1, t_up0 = cut_for_a_while(mesh, t0 + 1.0, 1.0)
    flow.wait(timeout=10)
    rec = flow.record()
    m = flow_metrics(rec, t0)
    assert m["errors"] == [], m["errors"]
    # the cap holds (4 Mbit/s for 3.5 s = 1.75 MB at most, plus a socket buffer's worth)
    assert 0 < m["bytes"] <= 4_000_000 / 8 * 3.5 * 1.1
    # bytes arrived before the cut and again after the link came back
    assert any(n > 0 for t, n in rec.bins if t + rec.bin_s <= t_cut0), rec.bins
    assert any(n > 0 for t, n in rec.bins if t >= t_up0), rec.bins
    # no byte arrived while the link was down: a stall at least as long as the cut (less
    # the two 100 ms bins it may share with traffic)
    assert m["longest_outage_s"] >= t_up0 - t_cut1 - 2 * rec.bin_s, (m["stalls"], t_up0 - t_cut1)
    assert m["retransmissions"] >= 1  # segments sent into the down link were retransmitted
    assert gone(flow)


def test_ping_flow_and_early_stop(mesh_factory, tmp_path: Path) -> None:
    mesh = line(mesh_factory)
    spec = FlowSpec("echo", "ping", "n2", "n0", rate_pps=20, size=56)
    t0 = time.monotonic() + 0.3
    flow = start_flow(mesh, spec, str(tmp_path), t0, duration=60.0)
    udp = start_flow(mesh, FlowSpec("u", "udp", "n0", "n2", rate_pps=50), str(tmp_path), t0, 60.0)
    time.sleep(max(0.0, t0 + 2.0 - time.monotonic()))
    flow.stop()
    udp.stop()
    udp.stop()  # idempotent
    stopped = time.monotonic()
    assert stopped < t0 + 60  # stopped early: the flows were to run 60 s
    m = flow_metrics(flow.record(), t0)
    # what was sent until the stop, no more than the schedule allows (20 pps), answered
    # but for the last echo (in flight at the stop)
    assert 0 < m["sent"] <= 20 * (stopped - t0) + 1, m["sent"]
    assert m["received"] >= m["sent"] - 1, m
    rtt = m["rtt_ms"]
    assert 0 < rtt["p50"] <= rtt["max"] < 1000
    u = flow_metrics(udp.record(), t0)  # flushed on SIGTERM: both ends' records exist
    assert 0 < u["sent"] <= 50 * (stopped - t0) + 1 and u["received"] >= u["sent"] - 2, u
    assert gone(flow) and gone(udp)


def test_ping_sees_the_outage(mesh_factory, tmp_path: Path) -> None:
    mesh = line(mesh_factory)
    spec = FlowSpec("echo", "ping", "n0", "n2", rate_pps=20, size=56)
    t0 = time.monotonic() + 0.3
    flow = start_flow(mesh, spec, str(tmp_path), t0, duration=3.5)
    t_cut0, t_cut1, t_up0 = cut_for_a_while(mesh, t0 + 1.0, 1.0)
    flow.wait(timeout=10)
    rec = flow.record()
    m = flow_metrics(rec, t0)
    start, end = one_outage_over_the_cut(rec, t_cut0, t_cut1, t_up0)
    assert m["delivery_ratio"] == round(m["received"] / m["sent"], 6) < 1.0, m
    assert len(m["outages"]) == 1 and m["longest_outage_s"] == round(end - start, 3)
    assert gone(flow)


def test_start_barrier_a_slow_start_costs_no_traffic(mesh_factory, tmp_path: Path) -> None:
    """With a go file, the agents start, say they are up and wait: however long the
    release takes (here 2 s, as on a loaded host or in the emulated lab), every flow
    starts at the t0 it gives, not before, and sends for its whole duration."""
    from meshstress.traffic.flows import release

    mesh = line(mesh_factory)
    go = str(tmp_path / "go")
    udp = start_flow(mesh, FlowSpec("cbr", "udp", "n0", "n2", rate_pps=50), str(tmp_path),
                     0.0, duration=2.0, go=go)  # fmt: skip
    ping = start_flow(mesh, FlowSpec("p", "ping", "n2", "n0", rate_pps=5), str(tmp_path),
                      0.0, duration=2.0, go=go)  # fmt: skip
    time.sleep(2.0)  # everything is up long before the release; nothing may be sent yet
    assert not (tmp_path / "cbr.send.json").exists()
    t0 = release([udp, ping], go, lead=0.3, timeout=30)
    assert (udp.t_start, udp.t_end) == (t0, t0 + 2.0) and ping.t_start == t0
    for flow in (udp, ping):
        flow.wait(timeout=15)
    rec = udp.record()
    assert rec.errors == []
    assert rec.sent[0][1] >= t0 and rec.sent[-1][1] <= t0 + 2.0
    # sent on schedule from t0: 50 pps for 2 s is 100 packets; a sender that started late
    # would have sent fewer (it never catches up beyond its end)
    assert len(rec.sent) >= 90, len(rec.sent)
    m = flow_metrics(ping.record(), t0)
    assert m["sent"] == 10 and m["errors"] == []


def test_start_barrier_names_an_agent_that_ended_before_it_was_up(
    mesh_factory, tmp_path: Path
) -> None:
    from meshstress.errors import MeshstressError
    from meshstress.traffic.flows import release

    mesh = line(mesh_factory)
    go = str(tmp_path / "go")
    flow = start_flow(mesh, FlowSpec("cbr", "udp", "n0", "n2", rate_pps=50), str(tmp_path),
                      0.0, duration=2.0, go=go)  # fmt: skip
    role, victim = flow.procs[0]
    time.sleep(1.0)  # up or not: an agent gone before the release is named either way
    victim.kill()
    victim.wait(timeout=10)
    try:
        with pytest.raises(MeshstressError, match=f"cbr: its {role} agent ended before"):
            release([flow], go, lead=0.3, timeout=30)
        assert not Path(go).exists()  # nobody was released
    finally:
        flow.stop()
