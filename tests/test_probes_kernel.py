"""eBPF probes (BCC) on real meshes, in the VM lab (kernel headers, batman-adv, netem):

    .venv/bin/meshstress lab run --timeout 1800 -- env MESHSTRESS_REQUIRE=1 \\
        .venv/bin/python -m pytest -m kernel -p no:cacheprovider tests/test_probes_kernel.py -v

The probes compile once per session (about 70 s under emulation): one session fixture
shares them; each test watches its own mesh and reads counter deltas. The counts are
checked against what was sent and against the kernel's own counters: the interface
statistics (IFLA_STATS64 in the node's namespace), RetransSegs (/proc/net/snmp) and
netem's drop counter (qdisc statistics over netlink).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from impair_traffic import _UDP_RECV, _UDP_SEND, _ready, _start, pin_neighbour, udp_stream

from meshstress.build import Mesh
from meshstress.model import generators, topofile
from meshstress.observe.probes import Probes, delta

pytestmark = pytest.mark.kernel("bcc+headers")

ETH_HLEN = 14


@pytest.fixture(scope="session")
def probes() -> Iterator[Probes]:
    t0 = time.monotonic()
    p = Probes()
    print(
        f"\nprobes: compile {p.compile_seconds:.1f} s, attach {p.attach_seconds:.2f} s, "
        f"total {time.monotonic() - t0:.1f} s; hooks {p.hooks}; "
        f"drop reasons from {p.reasons_source} ({len(p.reasons)})"
    )
    try:
        yield p
    finally:
        p.close()
        p.close()  # idempotent


def toward(mesh: Mesh, node: str, peer: str) -> str:
    return next(i["ifname"] for i in mesh.state.interfaces[node] if i["peer"] == peer)


def measure(probes: Probes, mesh: Mesh, action: Any) -> dict[str, Any]:
    probes.watch(mesh)
    before = probes.snapshot()
    action()
    d = delta(before, probes.snapshot())
    print(f"\ndelta: {d}")
    return d


DISABLE_IPV6 = "open('/proc/sys/net/ipv6/conf/all/disable_ipv6', 'w').write('1')"


def quiet(mesh: Mesh) -> None:
    """No frame on the mesh but the test's own: IPv6 off in every node (no router
    solicitations, no MLD reports) and every neighbour pinned (no ARP)."""
    for node in mesh.nodes:
        mesh.run(node, [sys.executable, "-c", DISABLE_IPV6], check=True)
    for node in mesh.nodes:
        for iface in mesh.state.interfaces[node]:
            if iface["peer"]:
                pin_neighbour(mesh, node, iface["peer"])


KERNEL_COUNTERS = ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "tx_dropped")


def kernel_counts(mesh: Mesh) -> dict[str, dict[str, dict[str, int]]]:
    """The kernel's interface statistics (IFLA_STATS64), per node and interface."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for node in mesh.nodes:
        out[node] = {}
        for link in mesh.netlink(node).get_links():
            stats = link.get_attr("IFLA_STATS64")
            out[node][link.get_attr("IFLA_IFNAME")] = {k: stats[k] for k in KERNEL_COUNTERS}
    return out


def both(probes: Probes, mesh: Mesh) -> tuple[dict[str, Any], dict[str, Any]]:
    """A probe snapshot and the kernel's statistics of the same moment: the kernel's are
    read before and after the probes', again until nothing moved in between."""
    for _ in range(50):
        k1 = kernel_counts(mesh)
        p = probes.snapshot()
        if kernel_counts(mesh) == k1:
            return p, k1
        time.sleep(0.1)
    raise AssertionError("the interface counters never stood still for a snapshot")


def kernel_delta(k0: dict[str, Any], k1: dict[str, Any]) -> dict[str, Any]:
    return {
        node: {
            ifname: {k: c[k] - k0[node].get(ifname, {}).get(k, 0) for k in KERNEL_COUNTERS}
            for ifname, c in ifaces.items()
        }
        for node, ifaces in k1.items()
    }


def side_by_side(d: dict[str, Any], kd: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per interface: the probes' counts next to the kernel's (printed)."""
    rows = []
    for node, ifaces in sorted(kd.items()):
        for ifname, k in sorted(ifaces.items()):
            p = d["nodes"][node]["interfaces"][ifname]
            rows.append({"node": node, "if": ifname,
                         "probe_tx": p["tx_packets"], "kernel_tx": k["tx_packets"],
                         "kernel_tx_dropped": k["tx_dropped"],
                         "probe_rx": p["rx_packets"], "kernel_rx": k["rx_packets"],
                         "probe_tx_bytes": p["tx_bytes"], "kernel_tx_bytes": k["tx_bytes"],
                         "probe_rx_bytes": p["rx_bytes"], "kernel_rx_bytes": k["rx_bytes"]})  # fmt: skip
    print("\n".join(["", *map(json.dumps, rows)]))
    return rows


def assert_equal_to_kernel(mesh: Mesh, rows: list[dict[str, Any]]) -> None:
    """Packets equal on every interface; bytes too on the veths (tx with the Ethernet
    header on both sides; the kernel's rx bytes include it, the probe's do not)."""
    for r in rows:
        assert (r["probe_tx"], r["probe_rx"]) == (r["kernel_tx"], r["kernel_rx"]), r
        if r["if"].startswith(mesh.prefix):
            assert r["probe_tx_bytes"] == r["kernel_tx_bytes"], r
            assert r["probe_rx_bytes"] + ETH_HLEN * r["probe_rx"] == r["kernel_rx_bytes"], r


def test_ping_counted_exactly_per_node_and_interface(probes: Probes, mesh_factory) -> None:
    mesh = mesh_factory(generators.line(3), routing="static")
    quiet(mesh)
    probes.watch(mesh)
    p0, k0 = both(probes, mesh)
    ping = mesh.ping("n0", "n1", count=50, interval=0.02)
    p1, k1 = both(probes, mesh)
    assert (ping.sent, ping.received) == (50, 50), ping
    d = delta(p0, p1)
    nodes = d["nodes"]
    assert set(nodes) == {"n0", "n1", "n2"}
    out = nodes["n0"]["interfaces"][toward(mesh, "n0", "n1")]
    into = nodes["n1"]["interfaces"][toward(mesh, "n1", "n0")]
    # exactly the 50 echo requests one way and the 50 replies back, nothing else: 98
    # bytes each on tx (Ethernet header included), 84 on rx (IP only)
    one_way = {"tx_packets": 50, "tx_bytes": 50 * 98, "rx_packets": 50, "rx_bytes": 50 * 84}
    assert {k: out[k] for k in one_way} == one_way, out
    assert {k: into[k] for k in one_way} == one_way, into
    assert out["batman_tx_packets"] == 0 and into["batman_rx_packets"] == 0
    # the link n1 - n2 carried nothing
    for node, peer in (("n1", "n2"), ("n2", "n1")):
        idle = nodes[node]["interfaces"][toward(mesh, node, peer)]
        assert idle["tx_packets"] == 0 and idle["rx_packets"] == 0, (node, idle)
    assert_equal_to_kernel(mesh, side_by_side(d, kernel_delta(k0, k1)))
    assert d["dt"] > 0


LOAD = 12_000  # datagrams


def test_interface_counts_equal_the_kernels_quiet_and_under_load(
    probes: Probes, mesh_factory
) -> None:
    mesh = mesh_factory(generators.line(3), routing="static")
    quiet(mesh)
    probes.watch(mesh)
    p0, k0 = both(probes, mesh)
    assert mesh.ping("n0", "n2", count=20, interval=0.02).received == 20
    p1, k1 = both(probes, mesh)
    print("\nquiet: 20 pings n0 -> n2")
    assert_equal_to_kernel(mesh, side_by_side(delta(p0, p1), kernel_delta(k0, k1)))

    # load: LOAD datagrams n0 -> n2 as fast as the sender goes, forwarded by n1
    recv = _start(mesh, "n2", _UDP_RECV, mesh.address("n2"), 5301, 300, 3.0)
    try:
        _ready(recv)
        send = _start(mesh, "n0", _UDP_SEND, mesh.address("n2"), 5301, LOAD, 0.0)
        assert send.wait(timeout=300) == 0, send.stderr.read() if send.stderr else ""
        out, err = recv.communicate(timeout=330)
    finally:
        if recv.poll() is None:
            recv.kill()
    assert recv.returncode == 0, err
    received = len(json.loads(out.strip().splitlines()[-1]))
    p2, k2 = both(probes, mesh)
    print(f"\nload: {LOAD} datagrams n0 -> n2, {received} received")
    rows = side_by_side(delta(p1, p2), kernel_delta(k1, k2))
    first = next(r for r in rows if r["node"] == "n0" and r["if"] == toward(mesh, "n0", "n1"))
    assert first["probe_tx"] == LOAD  # what was sent left n0, once each (no other frame)
    for r in rows:
        for way in ("tx", "rx"):
            probe, kernel = r[f"probe_{way}"], r[f"kernel_{way}"]
            assert abs(probe - kernel) <= 0.01 * kernel, (way, r)


SEND_UDP = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    s.sendto(b"x" * 32, (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.01)
"""


def test_udp_to_closed_port_counted_as_no_socket_drops(probes: Probes, mesh_factory) -> None:
    mesh = mesh_factory(generators.line(2), routing="static")
    assert mesh.ping("n0", "n1", count=1).ok  # neighbours resolved: nothing queued on ARP

    def send() -> None:
        argv = [sys.executable, "-c", SEND_UDP, mesh.address("n1"), "9", "30"]
        mesh.run("n0", argv, check=True, timeout=60)

    d = measure(probes, mesh, send)
    assert d["nodes"]["n1"]["drops"].get("NO_SOCKET") == 30, d["nodes"]["n1"]["drops"]
    assert d["nodes"]["n0"]["drops"].get("NO_SOCKET", 0) == 0


def lossy_line(loss: str) -> Any:
    """Two nodes, n0 -> n1 losing `loss` (the builder's netem, offloads off); the way
    back is ideal."""
    return topofile.loads_toml(
        f'nodes = ["n0", "n1"]\n[[links]]\na = "n0"\nb = "n1"\na_to_b = {{ loss = "{loss}" }}\n',
        "lossy.toml",
    )


def netem_drops(mesh: Mesh, node: str, ifname: str) -> int:
    """Drops of the netem qdisc on the node's interface, from its own statistics."""
    sock = mesh.netlink(node)
    index = sock.link_lookup(ifname=ifname)[0]
    netem = next(
        q
        for q in sock.get_qdiscs(index=index)
        if q["index"] == index and q.get_attr("TCA_KIND") == "netem"
    )
    return int(netem.get_attr("TCA_STATS2").get_attr("TCA_STATS_QUEUE")["drops"])


@pytest.mark.kernel("bcc+headers", "netem")
def test_netem_loss_counted_as_qdisc_drops_like_netems_counter(
    probes: Probes, mesh_factory
) -> None:
    # UDP: one skb is one datagram, so netem's counter (per skb) counts datagrams
    mesh = mesh_factory(lossy_line("20%"), routing="static")
    quiet(mesh)  # no frame but the datagrams: netem's drops are all datagrams
    lossy_if = toward(mesh, "n0", "n1")
    probes.watch(mesh)
    before, netem_before = probes.snapshot(), netem_drops(mesh, "n0", lossy_if)
    stream = udp_stream(mesh, "n0", "n1", 3000)
    d = delta(before, probes.snapshot())
    netem = netem_drops(mesh, "n0", lossy_if) - netem_before
    counted = d["nodes"]["n0"]["drops"].get("QDISC_DROP", 0)
    lost = stream.sent - stream.distinct
    print(f"\ndrops: probe QDISC_DROP {counted}, netem {netem}, stream lost {lost} of "
          f"{stream.sent}; n0 {d['nodes']['n0']['drops']}, n1 {d['nodes']['n1']['drops']}")  # fmt: skip
    assert netem > 0 and lost > 0  # 20% of 3000: about 600
    assert abs(counted - netem) <= 0.01 * netem, (counted, netem)
    assert lost == netem, (lost, netem)  # the receiver lost none itself
    assert d["nodes"]["n1"]["drops"].get("QDISC_DROP", 0) == 0  # n1 -> n0 is ideal


SERVER = """
import socket, sys
srv = socket.create_server((sys.argv[1], 5001))
print("listening", flush=True)
conn, _ = srv.accept()
total = 0
while chunk := conn.recv(65536):
    total += len(chunk)
print(total, flush=True)
"""

CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], 5001), timeout=60) as s:
    s.sendall(b"x" * int(sys.argv[2]))
"""


def snmp(mesh: Mesh, node: str, path: str, group: str, field: str) -> int:
    """A counter of /proc/net/snmp or /proc/net/netstat in the node's namespace."""
    text = mesh.run(node, ["cat", path], capture_output=True, text=True, check=True).stdout
    head, values = [line.split() for line in text.splitlines() if line.startswith(group)][:2]
    return int(values[head.index(field)])


def retrans_counters(mesh: Mesh, node: str) -> tuple[int, int]:
    """(RetransSegs, TCPRetransFail) of the node's namespace."""
    return (
        snmp(mesh, node, "/proc/net/snmp", "Tcp:", "RetransSegs"),
        snmp(mesh, node, "/proc/net/netstat", "TcpExt:", "TCPRetransFail"),
    )


@pytest.mark.kernel("bcc+headers", "netem")
def test_tcp_retransmits_equal_retranssegs_under_netem_loss(probes: Probes, mesh_factory) -> None:
    mesh = mesh_factory(lossy_line("30%"), routing="static")
    size = 100_000
    server = mesh.popen(
        "n1", [sys.executable, "-c", SERVER, mesh.address("n1")], stdout=subprocess.PIPE, text=True
    )
    mesh.record_process(server, "n1", "traffic")
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        start = {n: retrans_counters(mesh, n) for n in ("n0", "n1")}

        def transfer() -> None:
            argv = [sys.executable, "-c", CLIENT, mesh.address("n1"), str(size)]
            mesh.run("n0", argv, check=True, timeout=300)
            out, _ = server.communicate(timeout=120)
            assert int(out.strip()) == size

        d = measure(probes, mesh, transfer)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    end = {n: retrans_counters(mesh, n) for n in ("n0", "n1")}
    segs = {n: end[n][0] - start[n][0] for n in end}
    failed = {n: end[n][1] - start[n][1] for n in end}
    counted = {n: d["nodes"][n]["tcp_retransmits"] for n in end}
    print(f"\nretransmitted segments: probe {counted}, RetransSegs {segs}, failed {failed}")
    # 30% of ~70 data segments lost one way: the sender retransmitted; each segment the
    # kernel added to RetransSegs is counted once, except failed sends (none expected)
    assert counted["n0"] >= 1, (counted, segs)
    for n in end:
        assert counted[n] == segs[n] - failed[n], (n, counted, segs, failed)


@pytest.mark.kernel("bcc+headers", "batman-adv")
def test_batman_ogms_counted_per_interface(probes: Probes, mesh_factory) -> None:
    mesh = mesh_factory(generators.line(3), routing="batman-adv")
    d = measure(probes, mesh, lambda: time.sleep(4))
    nodes = d["nodes"]
    assert "bat0" in nodes["n1"]["interfaces"], sorted(nodes["n1"]["interfaces"])
    for node, peer in (("n1", "n0"), ("n1", "n2"), ("n0", "n1"), ("n2", "n1")):
        i = nodes[node]["interfaces"][toward(mesh, node, peer)]
        # one OGM a second per interface (orig_interval 1 s), plus forwarded ones
        assert i["batman_tx_packets"] >= 2 and i["batman_rx_packets"] >= 2, (node, peer, i)
        assert i["batman_types"]["iv_ogm"]["tx_packets"] >= 2, i["batman_types"]
        assert i["tx_packets"] >= i["batman_tx_packets"] and i["tx_bytes"] > 0
        # what one end sent, the other received (give or take frames in flight)
        j = nodes[peer]["interfaces"][toward(mesh, peer, node)]
        assert abs(i["batman_tx_packets"] - j["batman_rx_packets"]) <= 2, (i, j)
    # batman-adv frames never appear on bat0 itself (it carries the payload)
    assert nodes["n1"]["interfaces"]["bat0"]["batman_tx_packets"] == 0


RUN = """
[scenario]
name = "probed-line"
duration = "4s"
warmup = "0.2s"

[mesh]
generate = "line 3"
routing = "static"

[[traffic]]
name = "cbr"
kind = "udp"
from = "n0"
to = "n2"
rate = "100pps"
size = "300B"
"""


STRAY = 20  # frames of the mesh's own per interface in a 4 s run: ARP, IPv6 RS/MLD


def test_a_run_reports_probe_counters_per_node(probes: Probes, tmp_path) -> None:
    """`meshstress run` with probes (here the session's, to compile once): the UDP flow's
    packets show on each hop's interfaces, once each, and the totals add them up. Counts
    are checked against what the run itself sent (how many depends on the host's speed)."""
    from meshstress import runner
    from meshstress.model import scenario

    r = runner.run(scenario.loads(RUN, "probed-line.toml"), tmp_path, probes=probes)
    cbr = r["flows"]["cbr"]
    sent = cbr["sent"]
    assert sent > 0 and cbr["received"] == sent, cbr
    nodes = r["probes"]["nodes"]

    hops = {
        "n0 tx": sum(c["tx_packets"] for n, c in nodes["n0"]["interfaces"].items() if n != "lo"),
        "n1 rx": sum(c["rx_packets"] for n, c in nodes["n1"]["interfaces"].items() if n != "lo"),
        "n1 tx": sum(c["tx_packets"] for n, c in nodes["n1"]["interfaces"].items() if n != "lo"),
        "n2 rx": sum(c["rx_packets"] for n, c in nodes["n2"]["interfaces"].items() if n != "lo"),
    }
    print(f"\nsent {sent}, received {cbr['received']}; probes {hops}")
    # every datagram left n0, crossed n1 and reached n2, each counted once (n1's
    # interfaces carry it in and out; a few frames of the mesh's own besides)
    for hop, count in hops.items():
        assert sent <= count <= sent + 2 * STRAY, (hop, count, sent)
    totals = r["probes"]["totals"]
    assert 2 * sent <= totals["tx_packets"] <= 2 * sent + 4 * STRAY  # two hops, 4 veths
    assert totals["tx_bytes"] >= 2 * sent * 300
    assert totals["tcp_retransmits"] == 0 and totals["batman_control_tx_bytes"] == 0
    assert (tmp_path / "results.json").exists()


# --- deterministic drop reasons from crafted frames (docs/forge.md) ---------------------

# What the 6.1 kernel (Debian 12's, the lab's) reports; see test docstrings.
TTL_REASON = "IP_INHDR"
CSUM_REASON = "IP_CSUM"


def crafted_send(mesh: Mesh, tmp_path: Any, frame: str, dst: str, **kw: Any) -> int:
    """One crafted flow n0 -> dst for 1 s at 100 pps; return the packets its record says
    were sent (every one of them: no send error)."""
    from meshstress.traffic import crafted
    from meshstress.traffic.flows import FlowSpec, release, start_flow

    cs = crafted.CraftedSpec(frame=frame, **kw)
    spec = FlowSpec(name=f"c-{frame}", kind="crafted", src="n0", dst=dst, rate_pps=100.0,
                    size=crafted.default_size(frame), crafted=cs)  # fmt: skip
    go = str(tmp_path / f"go-{frame}")
    flow = start_flow(mesh, spec, str(tmp_path), 0.0, 1.0, go=go)
    try:
        release([flow], go, lead=1.0, timeout=120)
        flow.wait(timeout=60)
    finally:
        flow.stop()
    rec = flow.record()
    assert not rec.errors and rec.send_errors == 0 and rec.frames_per_packet == 1, rec.errors
    assert rec.sent
    return len(rec.sent)


def _crafted_line(mesh_factory: Any) -> Mesh:
    pytest.importorskip("scapy", reason="scapy not installed (pip install scapy)")
    mesh = mesh_factory(generators.line(3), routing="static")
    assert mesh.ping("n0", "n2", count=1, wait=2).ok
    quiet(mesh)
    return mesh


def test_ttl1_frames_counted_as_drops_on_the_router(probes: Probes, mesh_factory, tmp_path) -> None:
    """n0 -> n2 (two hops) with TTL 1: each packet dies in n1's ip_forward. The 6.1
    kernel has no TTL drop reason of its own: ip_forward's too_many_hops sets
    SKB_DROP_REASON_IP_INHDR (as it counts Ip InHdrErrors), so that is what the probe
    reports, once per packet sent."""
    mesh = _crafted_line(mesh_factory)
    sent = 0

    def go() -> None:
        nonlocal sent
        sent = crafted_send(mesh, tmp_path, "ttl1", "n2")

    d = measure(probes, mesh, go)
    drops = {n: d["nodes"].get(n, {}).get("drops", {}) for n in mesh.nodes}
    assert drops["n1"].get(TTL_REASON) == sent, (sent, drops)
    assert drops["n2"].get(TTL_REASON, 0) == 0  # none got through


def test_bad_ip_checksum_counted_as_ip_csum_drops(probes: Probes, mesh_factory, tmp_path) -> None:
    """n0 -> n1 with a wrong IPv4 header checksum: each packet dies in n1's ip_rcv_core
    with SKB_DROP_REASON_IP_CSUM, once per packet sent."""
    mesh = _crafted_line(mesh_factory)
    sent = 0

    def go() -> None:
        nonlocal sent
        sent = crafted_send(mesh, tmp_path, "bad-checksum", "n1", checksum="ip")

    d = measure(probes, mesh, go)
    drops = {n: d["nodes"].get(n, {}).get("drops", {}) for n in mesh.nodes}
    assert drops["n1"].get(CSUM_REASON) == sent, (sent, drops)
    assert drops["n0"].get(CSUM_REASON, 0) == 0
