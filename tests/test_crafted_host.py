"""Crafted flows on a real 3-node static line on the host (root): the receiving node's
SNMP counters (read inside its namespace) move by exactly the packets the flow's record
says were sent. n0 - n1 - n2: ttl1 frames to n2 expire at n1; bad checksums die at n1."""

from __future__ import annotations

import pytest

from meshstress.model import generators
from meshstress.observe import snmp
from meshstress.traffic import crafted
from meshstress.traffic.flows import FlowSpec, release, start_flow

pytestmark = pytest.mark.network
pytest.importorskip("scapy", reason="scapy not installed (pip install scapy)")


@pytest.fixture(scope="module")
def line(request):
    from meshstress import build
    from meshstress.build import bringup

    topo = generators.line(3)
    topo.routing = "static"
    up = bringup.bring_up(topo, wait=True, timeout=30)
    mesh = build.Mesh(up.state)
    try:
        assert mesh.ping("n0", "n2", count=1, wait=1).ok
        # every time-exceeded is sent (no ICMP rate limit on the router)
        mesh.run("n1", ["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"], check=True)
        yield mesh
    finally:
        mesh.close()
        build.teardown(up.state)


def send(mesh, tmp_path, frame, dst, seconds=1.0, pps=200.0, **kw):
    """Run one crafted flow n0 -> dst; return (its record, the counter deltas per node)."""
    cs = crafted.CraftedSpec(frame=frame, **kw)
    spec = FlowSpec(name=f"c-{frame}", kind="crafted", src="n0", dst=dst, rate_pps=pps,
                    size=crafted.default_size(frame), crafted=cs)  # fmt: skip
    before = {n: snmp.read(mesh, n) for n in ("n1", "n2")}
    go = str(tmp_path / "go")
    flow = start_flow(mesh, spec, str(tmp_path), 0.0, seconds, go=go)
    try:
        release([flow], go, lead=0.3, timeout=60)
        flow.wait(timeout=seconds + 15)
    finally:
        flow.stop()
    rec = flow.record()
    assert not rec.errors
    assert rec.sent and rec.send_errors == 0
    assert rec.frames_sent == len(rec.sent) * rec.frames_per_packet
    after = {n: snmp.read(mesh, n) for n in ("n1", "n2")}  # counted on receive: no wait
    return rec, {n: snmp.delta(before[n], after[n]) for n in before}


def test_ttl1_expires_at_the_first_router(line, tmp_path):
    rec, d = send(line, tmp_path, "ttl1", "n2")
    n = len(rec.sent)
    assert d["n1"]["Ip"]["InHdrErrors"] == n
    assert d["n1"]["Icmp"]["OutTimeExcds"] == n
    assert "Ip" not in d["n2"] or d["n2"]["Ip"].get("InReceives", 0) == 0


def test_bad_ip_checksum_dies_on_receive(line, tmp_path):
    rec, d = send(line, tmp_path, "bad-checksum", "n1", checksum="ip")
    n = len(rec.sent)
    assert (d["n1"]["IpExt"]["InCsumErrors"], d["n1"]["Ip"]["InHdrErrors"]) == (n, n)
    assert d["n1"]["Ip"].get("InDelivers", 0) == 0


def test_bad_udp_checksum_dies_at_udp(line, tmp_path):
    rec, d = send(line, tmp_path, "bad-checksum", "n1", checksum="udp")
    n = len(rec.sent)
    assert (d["n1"]["Udp"]["InCsumErrors"], d["n1"]["Udp"]["InErrors"]) == (n, n)
    assert "IpExt" not in d["n1"] or d["n1"]["IpExt"].get("InCsumErrors", 0) == 0


def test_fragments_reassemble_once_per_datagram(line, tmp_path):
    rec, d = send(line, tmp_path, "fragmented-udp", "n1", fragment=1024)
    n = len(rec.sent)
    assert rec.frames_per_packet == 3
    assert d["n1"]["Ip"]["ReasmReqds"] == 3 * n
    assert d["n1"]["Ip"]["ReasmOKs"] == n


def test_oversized_datagrams_fail_reassembly(line, tmp_path):
    rec, d = send(line, tmp_path, "oversized-udp", "n1", pps=50.0)
    n = len(rec.sent)
    assert d["n1"]["Ip"]["ReasmFails"] == n
    assert d["n1"]["Ip"].get("ReasmOKs", 0) == 0


def test_broadcast_storm_reaches_the_neighbour_as_broadcast(line, tmp_path):
    rec, d = send(line, tmp_path, "broadcast-storm", "n1")
    assert d["n1"]["IpExt"]["InBcastPkts"] == len(rec.sent)
