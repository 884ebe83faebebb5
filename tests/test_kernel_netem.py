"""Kernel-dependent: netem on mesh links (runs inside the VM lab in CI)."""

from __future__ import annotations

import math
import os

import pytest

from meshstress.build import Mesh
from meshstress.model import topofile

pytestmark = pytest.mark.kernel("netem")

TOPOLOGY = """
nodes = ["a", "b", "c"]
[[links]]
a = "a"
b = "b"
a_to_b = { delay = "30ms" }
[[links]]
a = "b"
b = "c"
a_to_b = { loss = "100%" }  # b -> c
"""


def rtt_min(mesh: Mesh, src: str, dst: str) -> float | None:
    return mesh.ping(src, dst).rtt_min_ms


def test_topology_impairments_are_applied_per_direction(mesh_factory) -> None:
    mesh = mesh_factory(topofile.loads_toml(TOPOLOGY, "netem.toml"))
    assert mesh.info["impaired_interfaces"] == 2
    # a -> b is delayed 30 ms one way; b -> a is ideal: the round trip shows 30 ms once
    rtt = rtt_min(mesh, "a", "b")
    assert rtt is not None and 29.0 <= rtt < 200.0, rtt
    # b -> c loses everything: neither direction's ping gets its reply
    assert rtt_min(mesh, "b", "c") is None and rtt_min(mesh, "c", "b") is None

    # the qdisc sits on a's interface toward b, and nowhere on b's side of that link
    def kinds(node: str) -> set[str]:
        sock = mesh.netlink(node)
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in sock.get_links()}
        return {
            f"{names[q['index']]}:{q.get_attr('TCA_KIND')}"
            for q in sock.get_qdiscs()
            if q["parent"] == 0xFFFFFFFF and names.get(q["index"], "").startswith(mesh.prefix)
        }

    assert {k.split(":")[1] for k in kinds("a")} >= {"netem"}
    b_if_to_a = mesh.state.interfaces["b"][0]["ifname"]
    assert f"{b_if_to_a}:netem" not in kinds("b")


def test_impaired_interfaces_have_segmentation_offloads_off(mesh_factory) -> None:
    from pyroute2.ethtool.ethtool import EthtoolFeatures
    from pyroute2.ethtool.ioctl import IoctlEthtool

    from meshstress.build import netns

    mesh = mesh_factory(topofile.loads_toml(TOPOLOGY, "netem.toml"))
    a_to_b = mesh.state.interfaces["a"][0]["ifname"]
    b_to_a = mesh.state.interfaces["b"][0]["ifname"]
    factory = netns.NetnsFactory()
    try:

        def features(node: str, ifname: str) -> dict[str, bool]:
            fd = os.open(netns.path(mesh.ns(node)), os.O_RDONLY)
            try:
                with factory.inside(fd):
                    io = IoctlEthtool()
            finally:
                os.close(fd)
            try:
                io.change_ifname(ifname)
                f = EthtoolFeatures.from_ioctl(
                    features=io.get_features(), offload_flags=io.get_offload_flags()
                )
                return {k: v.enable for k, v in f.features.items()}
            finally:
                io.close()

        impaired, ideal = features("a", a_to_b), features("b", b_to_a)
    finally:
        factory.close()
    assert impaired["tx-tcp-segmentation"] is False and impaired["tx-generic-segmentation"] is False
    assert ideal["tx-tcp-segmentation"] is True  # ideal interfaces keep their offloads


# --- beyond plain netem: bursty loss, duplicate, reorder, netem + tbf (impair.chain) ------

PACKETS = 4000  # fixed: the statistical bands below are computed for this many


def test_gilbert_elliott_loss_is_bursty_and_plain_loss_is_not(mesh_factory) -> None:
    """10% loss in bursts of 5 (simple Gilbert: p = 0.1/(5*0.9), r = 0.2) on n0->n1,
    10% independent loss on n1->n2; 4000 numbered datagrams each. Expected: about 80
    bursts of mean 5 (s.d. of the mean ~0.5), overall loss 10% (s.d. ~1.5%); independent
    loss has runs of mean 1/(1-0.1) = 1.11."""
    from impair_traffic import udp_stream

    topo = topofile.loads_toml(
        """
        nodes = ["n0", "n1", "n2"]
        [[links]]
        a = "n0"
        b = "n1"
        a_to_b = { loss = "10%", loss_burst = 5 }
        [[links]]
        a = "n1"
        b = "n2"
        a_to_b = { loss = "10%" }
        """,
        "ge.toml",
    )
    mesh = mesh_factory(topo)
    bursty = udp_stream(mesh, "n0", "n1", PACKETS)
    plain = udp_stream(mesh, "n1", "n2", PACKETS, port=5302)
    print(
        f"gemodel: loss {bursty.loss:.3%}, {len(bursty.loss_runs())} bursts, "
        f"mean burst {bursty.mean_burst():.2f}; plain: loss {plain.loss:.3%}, "
        f"mean run {plain.mean_burst():.2f}"
    )
    assert 0.03 <= bursty.loss <= 0.20, bursty.loss
    assert bursty.mean_burst() > 2.5, bursty.mean_burst()
    assert 0.06 <= plain.loss <= 0.14, plain.loss
    assert plain.mean_burst() < 1.6, plain.mean_burst()


def test_duplicate_and_reorder(mesh_factory) -> None:
    """n0->n1: 20 ms delay, 25% sent at once (reordered); n1->n0: 20 ms delay only (the
    control keeps order); n1->n2: 20% duplicated. 1000 datagrams 1 ms apart each."""
    from impair_traffic import udp_stream

    topo = topofile.loads_toml(
        """
        nodes = ["n0", "n1", "n2"]
        [[links]]
        a = "n0"
        b = "n1"
        delay = "20ms"
        a_to_b = { reorder = "25%" }
        [[links]]
        a = "n1"
        b = "n2"
        a_to_b = { duplicate = "20%" }
        """,
        "dupreorder.toml",
    )
    mesh = mesh_factory(topo)
    reordered = udp_stream(mesh, "n0", "n1", 1000, gap=0.001)
    control = udp_stream(mesh, "n1", "n0", 1000, gap=0.001, port=5302)
    duplicated = udp_stream(mesh, "n1", "n2", 1000, gap=0.001, port=5303)
    print(
        f"reorder 25%: {reordered.early} of {len(reordered.arrivals)} overtook, "
        f"{reordered.late} arrived late; control: {control.early} overtook; "
        f"duplicate 20%: {duplicated.duplicates} duplicates, {duplicated.distinct} distinct"
    )
    # ~250 overtakers expected (s.d. ~14); without reorder, order holds but for the odd
    # packet that two CPUs' receive backlogs swap
    assert 150 <= reordered.early <= 400, reordered.early
    assert control.early * 4 < reordered.early, (control.early, reordered.early)
    assert 100 <= duplicated.duplicates <= 320, duplicated.duplicates  # ~200 expected
    assert duplicated.distinct >= 990 and reordered.distinct >= 990


def test_netem_with_rate_delays_and_limits(mesh_factory) -> None:
    """a->b: 50 ms delay and 4 Mbit/s: netem at the root, tbf its child. The round trip
    shows the delay once; a 1.5 MB transfer a->b runs at about 4 Mbit/s, b->a is free."""
    from impair_traffic import tcp_goodput

    from meshstress.build import impair

    topo = topofile.loads_toml(
        'nodes = ["a", "b"]\n[[links]]\na = "a"\nb = "b"\n'
        'a_to_b = { delay = "50ms", rate = "4mbit" }\n',
        "chain.toml",
    )
    mesh = mesh_factory(topo)
    a_if = mesh.state.interfaces["a"][0]["ifname"]
    sock = mesh.netlink("a")
    index = sock.link_lookup(ifname=a_if)[0]
    qdiscs = {
        (q.get_attr("TCA_KIND"), q["handle"], q["parent"])
        for q in sock.get_qdiscs(index=index)
        if q["index"] == index
    }
    assert ("netem", 0x10000, impair.TC_H_ROOT) in qdiscs and ("tbf", 0x100000, 0x10001) in qdiscs
    ping = mesh.ping("a", "b", count=5)
    shaped = tcp_goodput(mesh, "a", "b", 1_500_000)
    print(f"rtt min {ping.rtt_min_ms} ms; a->b {shaped / 1e6:.2f} Mbit/s")
    assert ping.rtt_min_ms is not None and 49.0 <= ping.rtt_min_ms < 150.0, ping
    # tbf under netem carried the stream and held it back (its counters), and no more than
    # the rate got through; how much less a slow guest manages is no concern of this test
    (tbf,) = [q for q in sock.get_qdiscs(index=index)
              if q["index"] == index and q.get_attr("TCA_KIND") == "tbf"]  # fmt: skip
    stats = tbf.get_attr("TCA_STATS")
    assert stats["bytes"] >= 1_500_000 and stats["overlimits"] > 0, stats
    assert shaped <= 4.6e6, shaped


def test_replace_swaps_netem_chains(mesh_factory) -> None:
    """impair.replace (used by timed events): netem+tbf -> gemodel netem -> ideal."""
    from meshstress.build import impair
    from meshstress.model.topology import GilbertElliott, Impairment

    topo = topofile.loads_toml(
        'nodes = ["a", "b"]\n[[links]]\na = "a"\nb = "b"\n'
        'a_to_b = { delay = "30ms", rate = "4mbit" }\n',
        "swap.toml",
    )
    mesh = mesh_factory(topo)
    a_if = mesh.state.interfaces["a"][0]["ifname"]
    sock = mesh.netlink("a")
    index = sock.link_lookup(ifname=a_if)[0]

    def kinds() -> list[str]:
        return sorted(
            q.get_attr("TCA_KIND")
            for q in sock.get_qdiscs(index=index)
            if q["index"] == index and q.get_attr("TCA_KIND") in ("netem", "tbf")
        )

    assert kinds() == ["netem", "tbf"]
    impair.replace(sock, index, Impairment(gemodel=GilbertElliott(p=0.5, r=0.5)))
    assert kinds() == ["netem"]
    opts = next(
        q.get_attr("TCA_OPTIONS")
        for q in sock.get_qdiscs(index=index)
        if q["index"] == index and q.get_attr("TCA_KIND") == "netem"
    )
    ge = opts.get_attr("TCA_NETEM_LOSS").get_attr("NETEM_LOSS_GE")
    assert ge["p"] == impair._u32(0.5) and ge["h"] == 0  # the kernel kept our model
    # half of what a sends is lost now, ARP included: a lost ARP request or reply would
    # hold the pings back a second or more, so both ends know each other's MAC for good
    from impair_traffic import pin_neighbour

    pin_neighbour(mesh, "a", "b")
    pin_neighbour(mesh, "b", "a")
    r = mesh.ping("a", "b", count=20, interval=0.05)
    assert 0 < r.received < 20, r  # lossy now: some lost, not all (p = 1e-6)
    assert r.rtt_min_ms is not None and r.rtt_min_ms < 25.0  # the 30 ms delay is gone
    impair.replace(sock, index, Impairment())
    assert kinds() == []
    assert mesh.ping("a", "b", count=3).loss == 0


# --- netem sees wire packets: TCP loss acts on every segment -------------------------


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _netem_counts(mesh: Mesh, node: str, ifname: str) -> tuple[int, int]:
    sock = mesh.netlink(node)
    index = sock.link_lookup(ifname=ifname)[0]
    for q in sock.get_qdiscs(index=index):
        if q["index"] == index and q.get_attr("TCA_KIND") == "netem":
            stats = q.get_attr("TCA_STATS2")
            passed = stats.get_attr("TCA_STATS_BASIC")["packets"]
            return int(passed), int(stats.get_attr("TCA_STATS_QUEUE")["drops"])
    raise AssertionError(f"no netem on {node}:{ifname}")


def _tcp_snmp(mesh: Mesh, node: str) -> dict[str, int]:
    text = mesh.run(node, ["cat", "/proc/net/snmp"], capture_output=True, text=True).stdout
    head, values = [line.split() for line in text.splitlines() if line.startswith("Tcp:")][:2]
    return {k: int(v) for k, v in zip(head[1:], values[1:], strict=True)}


def test_tcp_loss_in_the_middle_of_a_path_acts_on_every_segment(mesh_factory) -> None:
    """a -> b -> c, 10% loss on b -> c only; 400 kB of TCP a -> c. Every data skb that
    reaches b's netem is one frame, netem drops about 10% of them (99.9% interval of its
    own counters), and a retransmits. Before every veth end was capped at one segment
    per skb, a's TCP handed b super-packets of up to 64 KB, which b forwarded whole:
    netem dropped or passed them as one, and a transfer with no loss at all was likely."""
    from impair_traffic import tcp_goodput

    from meshstress.observe.skbtrace import SkbTrace

    topo = topofile.loads_toml(
        'nodes = ["a", "b", "c"]\n[[links]]\na = "a"\nb = "b"\n'
        '[[links]]\na = "b"\nb = "c"\na_to_b = { loss = "10%" }\n',
        "midloss.toml",
    )
    mesh = mesh_factory(topo, routing="static")
    b_to_c = next(i["ifname"] for i in mesh.state.interfaces["b"] if i["peer"] == "c")
    size = 400_000
    passed0, drops0 = _netem_counts(mesh, "b", b_to_c)
    retrans0 = _tcp_snmp(mesh, "a")["RetransSegs"]
    with SkbTrace(b_to_c, min_len=200) as trace:  # the name is b's alone; ACKs left out
        tcp_goodput(mesh, "a", "c", size)
    passed1, drops1 = _netem_counts(mesh, "b", b_to_c)
    drops, offered = drops1 - drops0, (drops1 - drops0) + (passed1 - passed0)
    retrans = _tcp_snmp(mesh, "a")["RetransSegs"] - retrans0
    lo, hi = _wilson(drops, offered, 3.29)
    print(
        f"\n{len(trace.lengths)} data skbs at b's netem, largest {max(trace.lengths)}; "
        f"netem dropped {drops} of {offered} ({drops / offered:.2%}, 99.9% CI {lo:.3f}-{hi:.3f}); "
        f"a retransmitted {retrans}"
    )
    assert max(trace.lengths) <= 1514, sorted(trace.lengths)[-5:]
    assert offered >= size // 1448  # at least every data segment went through netem
    assert retrans >= 1 and drops >= 1
    assert lo <= 0.10 <= hi, (drops, offered)
