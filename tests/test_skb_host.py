"""Every skb a qdisc sees is one wire packet (build.ONE_PACKET_PER_SKB), on the host.

netem's loss, delay and counters act per skb. TCP builds GSO skbs of up to 64 KB whatever
the interface's offload features say, so the builder caps every veth end at one segment
per skb. These tests read the cap back and watch the skbs themselves (tracepoint
net:net_dev_queue) at a forwarding node, where a lossy link in the middle of a path sat.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from meshstress import build
from meshstress.model.topology import Link, Node, Topology
from meshstress.observe.skbtrace import SkbTrace, parse_lengths

pytestmark = pytest.mark.network

FRAME = 1514  # MTU 1500 plus the Ethernet header: the largest wire packet of a veth

RECV = """
import socket, sys
srv = socket.socket()
srv.bind((sys.argv[1], 5001)); srv.listen(1); print("ready", flush=True)
c, _ = srv.accept(); n = 0
while (b := c.recv(65536)):
    n += len(b)
print(n, flush=True)
"""
SEND = """
import socket, sys
with socket.create_connection((sys.argv[1], 5001), timeout=60) as s:
    s.sendall(b"x" * int(sys.argv[2]))
"""


def line3() -> Topology:
    return Topology("l3", [Node("a"), Node("b"), Node("c")], [Link("a", "b"), Link("b", "c")])


def tcp(mesh: build.Mesh, src: str, dst: str, size: int) -> None:
    recv = mesh.popen(
        dst, [sys.executable, "-c", RECV, mesh.address(dst)], stdout=subprocess.PIPE, text=True
    )
    mesh.record_process(recv, dst, "test-traffic")
    try:
        assert recv.stdout is not None and recv.stdout.readline().strip() == "ready"
        mesh.run(src, [sys.executable, "-c", SEND, mesh.address(dst), str(size)], check=True)
        out, _ = recv.communicate(timeout=60)
        assert int(out) == size
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()


def test_every_veth_end_carries_one_segment_per_skb(mesh_factory) -> None:
    mesh = mesh_factory(line3(), routing="static")
    seen = 0
    for node in mesh.nodes:
        mine = {i["ifname"] for i in mesh.state.interfaces[node]}
        for link in mesh.netlink(node).get_links():
            if link.get_attr("IFLA_IFNAME") in mine:
                assert link.get_attr("IFLA_GSO_MAX_SEGS") == 1, (node, link)
                seen += 1
    assert seen == 4


def test_forwarded_tcp_reaches_the_next_qdisc_as_wire_packets(mesh_factory) -> None:
    """400 kB of TCP a -> c through b: every data skb entering b's qdisc toward c is one
    frame. Before the cap, 14 of 36 were super-packets of up to 65,226 bytes here."""
    mesh = mesh_factory(line3(), routing="static")
    b_to_c = next(i["ifname"] for i in mesh.state.interfaces["b"] if i["peer"] == "c")
    size = 400_000
    with SkbTrace(b_to_c, min_len=200) as trace:  # b's other interface has another name
        tcp(mesh, "a", "c", size)
    lens = trace.lengths
    print(f"\n{len(lens)} data skbs, largest {max(lens, default=0)} bytes")
    assert sum(n - 66 for n in lens) >= size  # every payload byte crossed the traced qdisc
    assert max(lens) <= FRAME, sorted(lens)[-5:]


def test_parse_lengths_reads_the_tracepoint_lines() -> None:
    text = (
        "# tracer: nop\n"
        "  python3-1 [001] ..... 1.0: net_dev_queue: dev=ms-ab-i1 skbaddr=0000 len=1514\n"
        "  python3-1 [001] ..... 1.1: net_dev_queue: dev=ms-ab-i1 skbaddr=0001 len=818\n"
    )
    assert parse_lengths(text) == [1514, 818]
