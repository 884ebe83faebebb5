"""scapy layers on real frames (tests/data/*.pcap, made by tests/data/capture_frames.py:
a 3-node line, babeld with hello 1 s on the host, batman-adv IV/V with OGM interval 1 s
in the lab), the pcap ring, capture options and the signalling counts. Pure."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from meshstress.errors import InputError
from meshstress.model import generators
from meshstress.observe import capture
from meshstress.packets import babel, batadv, classify

DATA = Path(__file__).parent / "data"


def frames(name: str) -> list[Ether]:
    return list(rdpcap(str(DATA / name)))


@pytest.mark.parametrize(
    "name",
    ["babeld-n1-i0.pcap", "batman-iv-n1-i0.pcap", "batman-iv-n0-bat0.pcap",
     "batman-v-n1-i0.pcap", "batman-v-n0-bat0.pcap"],
)
def test_every_frame_dissects_and_builds_back_to_its_bytes(name: str) -> None:
    raw = [bytes(f) for f in frames(name)]
    assert raw
    for data in raw:
        assert bytes(Ether(data)) == data


def test_babel_hello_interval_is_the_configured_one_and_updates_carry_node_prefixes() -> None:
    pkts = [f[babel.BabelHeader] for f in frames("babeld-n1-i0.pcap") if babel.BabelHeader in f]
    assert pkts and all(p.magic == 42 and p.version == 2 for p in pkts)
    hellos = [t for p in pkts for t in p.tlvs if isinstance(t, babel.BabelHello)]
    assert hellos and {h.interval for h in hellos} == {100}  # hello_interval 1s, in cs
    ihus = [t for p in pkts for t in p.tlvs if isinstance(t, babel.BabelIHU)]
    assert ihus and all(i.ae == 3 and len(i.address) == 8 for i in ihus)  # link-local
    routes = [r for p in pkts for r in babel.routes(p)]
    prefixes = {r.prefix for r in routes}
    assert prefixes <= {"10.201.0.1/32", "10.201.0.2/32", "10.201.0.3/32"} and prefixes
    # a node announces its own address at metric 0, a neighbour's at one hop (96)
    assert {r.metric for r in routes} <= {0, 96} and 96 in {r.metric for r in routes}
    assert all(r.router_id and r.next_hop and r.next_hop.startswith("10.201.0.") for r in routes)
    assert all(p.body_len == sum(len(t) for t in p.tlvs) for p in pkts)


def test_batman_iv_ogms_from_the_senders_with_growing_seqnos() -> None:
    fs = frames("batman-iv-n1-i0.pcap")
    ogms = [(f, o) for f in fs for o in batadv.ogms(f)]
    assert len(ogms) >= 20
    seqnos: dict[str, list[int]] = {}
    for f, o in ogms:
        assert o.version == batadv.COMPAT_VERSION and o.packet_type == batadv.IV_OGM
        if o.orig == f.src:  # the sender's own OGM: fresh, full quality
            assert o.ttl == 50 and o.tq == 255
        else:  # forwarded: one hop less, and the sender's own address as prev_sender
            assert o.ttl < 50 and o.tq < 255
        seqnos.setdefault(o.orig, []).append(o.seqno)
        assert {t.type for t in o.tvlvs} >= {4, 6}  # translation table, multicast
        assert o.tvlv_len == sum(len(t) for t in o.tvlvs)
    assert len(seqnos) == 3  # all three originators of the line
    for orig, seen in seqnos.items():
        assert seen == sorted(seen) and seen[-1] > seen[0], (orig, seen)
    # n1's own OGMs go out on both sides: the capture is n1's interface toward n0
    senders = {f.src for f, o in ogms if o.orig == f.src}
    assert len(senders) == 2


def test_batman_v_elp_and_ogmv2() -> None:
    fs = frames("batman-v-n1-i0.pcap")
    elps = [f for f in fs if batadv.BatadvELP in f]
    ogm2 = [(f, o) for f in fs for o in batadv.ogms(f)]
    assert len(elps) >= 10 and len(ogm2) >= 10
    seen: dict[str, list[int]] = {}
    for f in elps:
        e = f[batadv.BatadvELP]
        assert e.orig == f.src and e.elp_interval == 500  # the default ELP interval, ms
        seen.setdefault(e.orig, []).append(e.seqno)
    assert len(seen) == 2 and all(s == list(range(s[0], s[0] + len(s))) for s in seen.values())
    for f, o in ogm2:
        assert isinstance(o, batadv.BatadvOGM2) and o.version == 15
        if o.orig == f.src:
            assert o.ttl == 50 and o.throughput == 0xFFFFFFFF  # own: unlimited
        else:
            assert o.ttl == 49 and 0 < o.throughput < 0xFFFFFFFF  # the path's, in 100 kbit/s
    assert len({o.orig for _, o in ogm2}) == 3


def test_batman_unicast_carries_the_ping() -> None:
    fs = frames("batman-iv-n1-i0.pcap")
    uni = [f for f in fs if batadv.BatadvUnicast in f]
    assert uni
    for f in uni:
        u = f[batadv.BatadvUnicast]
        assert u.version == 15 and u.ttl <= 50
        inner = u.payload
        assert isinstance(inner, Ether) and ICMP in inner
        assert inner[IP].src.startswith("10.201.0.")
    # the soft interface sees the same pings without any batman-adv header
    soft = frames("batman-iv-n0-bat0.pcap")
    assert any(ICMP in f for f in soft) and not any(f.type == 0x4305 for f in soft)


def test_forged_layers_round_trip_and_aggregate() -> None:
    f = (
        Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff")
        / batadv.BatadvOGM(seqno=7, orig="02:00:00:00:00:01",
                           tvlvs=[batadv.BatadvTVLV(type=1, value=b"\0" * 8)])
        / batadv.BatadvOGM(seqno=8, orig="02:00:00:00:00:02")
    )  # fmt: skip
    raw = bytes(f)
    assert raw[12:14] == b"\x43\x05" and len(raw) == 14 + 24 + 12 + 24
    back = Ether(raw)
    assert [o.seqno for o in batadv.ogms(back)] == [7, 8]
    assert batadv.ogms(back)[0].tvlvs[0].len == 8
    assert classify.ogm_count(raw) == 2 and classify.kind(raw) == "batman:iv_ogm"
    for layer, size in [
        (batadv.BatadvOGM2(), 20), (batadv.BatadvELP(), 16), (batadv.BatadvBcast(), 14),
        (batadv.BatadvUnicast(), 10), (batadv.BatadvUnicast4Addr(), 18),
        (batadv.BatadvFrag(), 20), (batadv.BatadvICMP(), 20),
        (batadv.BatadvUnicastTVLV(), 20), (batadv.BatadvMcast(), 6),
    ]:  # fmt: skip
        assert len(bytes(layer)) == size, layer.name  # the kernel header's sizeof
        assert type(Ether(bytes(Ether() / layer))[1]) is type(layer)
    frag = batadv.BatadvFrag(no=3, priority=5)
    assert bytes(frag)[3] == (3 << 4) | (5 << 1)
    # Babel: a forged Update with a wrong length keeps it (hostile packets)
    bad = babel.BabelHeader(tlvs=[babel.BabelUpdate(len=3, plen=24, prefix=b"\n\0\0")])
    assert bytes(bad)[5] == 3


def test_ring_keeps_the_newest_within_the_limit_and_counts_the_rest() -> None:
    snap = 100
    ring = capture.Ring(snaplen=snap, limit=24 + 3 * (16 + 100))  # room for three
    for i in range(10):
        ring.add(float(i), bytes([i]) * 150)  # cut to the snap length
    s = ring.summary()
    assert s["packets"] == 3 and s["dropped_old"] == 7 and s["seen"] == 10
    data = ring.to_bytes()
    assert len(data) == ring.limit
    recs = list(capture.read_pcap_bytes(data))
    assert [r[0] for r in recs] == [7.0, 8.0, 9.0]
    assert all(len(r[1]) == 100 and r[2] == 150 for r in recs)
    ring.set_windows([(7.5, 8.5)])
    ring.add(20.0, b"x" * 60)  # outside: not kept
    assert ring.summary()["packets"] == 1 and ring.summary()["outside_window"] == 3


def test_event_windows_merge() -> None:
    assert capture.event_windows([10.0, 11.0, 30.0], 2.0) == [(8.0, 13.0), (28.0, 32.0)]


def test_written_pcap_opens_in_tcpdump_or_scapy(tmp_path: Path) -> None:
    ring = capture.Ring(snaplen=256)
    for f in frames("batman-iv-n1-i0.pcap"):
        ring.add(float(f.time), bytes(f))
    path = tmp_path / "x.pcap"
    path.write_bytes(ring.to_bytes())
    if shutil.which("tcpdump"):
        out = subprocess.run(["tcpdump", "-nr", str(path)], capture_output=True, text=True)
        # one line per packet, starting with its time; an EtherType tcpdump does not know
        # (batman-adv's) adds indented hex lines
        heads = [line for line in out.stdout.splitlines() if line and not line[0].isspace()]
        assert out.returncode == 0 and len(heads) == ring.summary()["packets"], out.stdout
    back = rdpcap(str(path))
    assert [bytes(f) for f in back] == [r[1] for r in ring.kept()]


def test_capture_options_are_checked() -> None:
    topo = generators.line(3)
    opts = capture.parse_options(
        {"capture": ["n0", "n1:n2", "n1:i0"], "capture_limit": "1MB", "capture_window": "2s",
         "capture_snaplen": 128}, "s.toml", topo)  # fmt: skip
    assert opts.targets == [capture.Target("n0"), capture.Target("n1", "i1"),
                            capture.Target("n1", "i0")]  # fmt: skip
    assert opts.limit == 1 << 20 and opts.window == 2.0 and opts.snaplen == 128
    for head, fld in [
        ({"capture": ["n9"]}, "scenario.capture[0]"),
        ({"capture": ["n0:i5"]}, "scenario.capture[0]"),
        ({"capture": ["n0:bat0"]}, "scenario.capture[0]"),  # not a batman-adv mesh
        ({"capture": "n0", "capture_snaplen": 10}, "scenario.capture_snaplen"),
        ({"capture": "n0", "capture_limit": "ten"}, "scenario.capture_limit"),
        ({"capture": "n0", "capture_window": "0s"}, "scenario.capture_window"),
    ]:
        with pytest.raises(InputError) as exc:
            capture.parse_options(head, "s.toml", topo)
        assert exc.value.field == fld, (head, exc.value)
    topo.routing = "batman-adv"
    assert capture.parse_options({"capture": ["n0:bat0"]}, "s", topo).targets[0].iface == "bat0"


def test_scenario_capture_key(tmp_path: Path) -> None:
    from meshstress.model import scenario

    sc = scenario.loads('[scenario]\ncapture = ["n1"]\n[mesh]\ngenerate = "line 3"\n'
                        'routing = "static"\n', "s.toml")  # fmt: skip
    assert sc.capture is not None and sc.capture.targets == [capture.Target("n1")]
    with pytest.raises(InputError, match="scenario.capture"):
        scenario.loads('[scenario]\ncapture = ["x"]\n[mesh]\ngenerate = "line 3"\n', "s.toml")


def test_signalling_counts_babel_against_the_rest() -> None:
    s = classify.signalling(capture.read_pcap(DATA / "babeld-n1-i0.pcap"))
    babel_frames = [f for f in frames("babeld-n1-i0.pcap") if babel.BabelHeader in f]
    assert s["kinds"]["babel"]["packets"] == len(babel_frames)
    assert s["signalling"]["bytes"] == sum(len(f) for f in babel_frames)
    assert s["signalling"]["share_bytes"] == round(s["signalling"]["bytes"] / s["bytes"], 4)
    iv = classify.signalling(capture.read_pcap(DATA / "batman-iv-n1-i0.pcap"))
    ogm_frames = [f for f in frames("batman-iv-n1-i0.pcap") if batadv.BatadvOGM in f]
    assert iv["kinds"]["batman:iv_ogm"]["packets"] == len(ogm_frames)
    assert iv["kinds"]["batman:iv_ogm"]["ogms"] == sum(len(batadv.ogms(f)) for f in ogm_frames)
    assert iv["kinds"]["batman:unicast"]["packets"] >= 2
    merged = classify.merge([s, iv])
    assert merged["packets"] == s["packets"] + iv["packets"]
