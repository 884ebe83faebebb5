"""scapy layers on real frames (tests/data/*.pcap, made by tests/data/capture_frames.py:
a 3-node line, babeld with hello 1 s on the host, batman-adv IV/V with OGM interval 1 s
in the lab), the pcap ring, capture options and the signalling counts. Pure."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
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
    [
        "babeld-n1-i0.pcap",
        "batman-iv-n1-i0.pcap",
        "batman-iv-n0-bat0.pcap",
        "batman-v-n1-i0.pcap",
        "batman-v-n0-bat0.pcap",
        *(f"batman-kinds-{k}-n1-i0.pcap" for k in ("bcast", "dat", "icmp", "tt", "frag")),
    ],
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


# --- the other batman-adv packet types, captured in the lab (tests/data/README.md) -----
# tests/data/capture_frames.py batman-kinds: a 3-node line n0 - n1 - n2 (B.A.T.M.A.N. IV),
# one capture per kind on n1's interface toward n0; batman-kinds.json holds what was
# done and the mesh's addresses, read from the live mesh (not from the captures).

KINDS = json.loads((DATA / "batman-kinds.json").read_text())
NODES = KINDS["nodes"]
ORIG = {n: f["orig"] for n, f in NODES.items()}  # originator address: primary hard iface
FRAG_PAYLOAD = b"meshstress-frag " * 92  # what capture_frames.py sent (FRAG_PAYLOAD)


def kind_frames(kind: str) -> list[Ether]:
    return frames(KINDS[kind]["file"])


def test_the_kinds_were_captured_whole_on_the_lab_kernel() -> None:
    for kind in ("bcast", "dat", "icmp", "tt", "frag"):
        k = KINDS[kind]
        assert (k["dropped_old"], k["kernel_drops"]) == (0, 0), (kind, k)
        assert len(kind_frames(kind)) == k["packets"], kind
    assert KINDS["kernel"] and KINDS["batman_adv"]  # recorded, whatever Debian ships


def test_batman_broadcast_carries_the_broadcast_ping() -> None:
    bc = [f for f in kind_frames("bcast") if batadv.BatadvBcast in f and ICMP in f]
    assert len(bc) == KINDS["bcast"]["count"] == 2
    for f in bc:
        b = f[batadv.BatadvBcast]
        # n0's own broadcast, as it left n0 (n0 has one hard interface: its originator)
        assert b.version == 15 and b.orig == ORIG["n0"] == f.src and f.dst == "ff:ff:ff:ff:ff:ff"
        assert b.ttl == 49  # the kernel sends its own broadcasts with BATADV_TTL - 1
        inner = b.payload
        assert isinstance(inner, Ether) and inner.src == NODES["n0"]["bat0"]
        assert inner.dst == "ff:ff:ff:ff:ff:ff"
        assert (inner[IP].src, inner[IP].dst) == (NODES["n0"]["address"], KINDS["bcast"]["ping_to"])
        assert inner[ICMP].type == 8
    assert [f[ICMP].seq for f in bc] == [1, 2]
    seqnos = [f[batadv.BatadvBcast].seqno for f in bc]
    assert seqnos[1] == seqnos[0] + 1  # one broadcast sequence number per packet


def test_batman_4addr_dat_dht_get_and_put_carry_the_arp_exchange() -> None:
    four = [
        f[batadv.BatadvUnicast4Addr] for f in kind_frames("dat") if batadv.BatadvUnicast4Addr in f
    ]
    asked = KINDS["dat"]["arp_for"]
    gets = [u for u in four if u.subtype == 2]
    puts = [u for u in four if u.subtype == 3]
    assert len(gets) + len(puts) == len(four) and gets and puts
    # n0's ARP request goes to its DHT candidates: both other nodes of the 3-node mesh
    assert {u.dest for u in gets} == {ORIG["n1"], ORIG["n2"]}
    for u in gets:
        assert u.src == ORIG["n0"] and u.ttl == 50 and u.version == 15
        arp = u[ARP]
        assert (arp.op, arp.psrc, arp.pdst) == (1, NODES["n0"]["address"], asked)
        assert arp.hwsrc == NODES["n0"]["bat0"] == u.payload.src
    # n2, which holds the address, puts its reply into the DHT: one copy reaches n0
    # through n1 (one hop on: TTL 49)
    for u in puts:
        assert (u.src, u.dest, u.ttl) == (ORIG["n2"], ORIG["n0"], 49)
        arp = u[ARP]
        assert (arp.op, arp.psrc, arp.hwsrc) == (2, asked, NODES["n2"]["bat0"])
        assert arp.pdst == NODES["n0"]["address"]


def test_batman_icmp_echo_from_batctl_and_the_kernels_reply() -> None:
    icmp = [f[batadv.BatadvICMP] for f in kind_frames("icmp") if batadv.BatadvICMP in f]
    req = [p for p in icmp if p.msg_type == 8]
    rep = [p for p in icmp if p.msg_type == 0]
    assert len(req) == len(rep) == KINDS["icmp"]["count"] == 3 and len(icmp) == 6
    assert KINDS["icmp"]["output"][0].startswith("3 packets transmitted, 3 received")
    assert [p.seqno for p in req] == [1, 2, 3] == [p.seqno for p in rep]
    assert len({p.uid for p in icmp}) == 1  # batctl's socket id, echoed back
    for p in req:  # batctl's, from n0's originator address to n2's
        assert (p.orig, p.dst, p.ttl, p.version) == (ORIG["n0"], ORIG["n2"], 50, 15)
    for p in rep:  # n2's kernel answers; one hop on when n1 forwards it to n0
        assert (p.orig, p.dst, p.ttl) == (ORIG["n2"], ORIG["n0"], 49)


def test_batman_fragments_reassemble_to_the_sent_datagram() -> None:
    fs = kind_frames("frag")
    frags = [f for f in fs if batadv.BatadvFrag in f]
    assert len(frags) == 2
    heads = [f[batadv.BatadvFrag] for f in frags]
    # IP 20 + UDP 8 + payload, the inner Ethernet header 14, the unicast header 10
    total = 10 + 14 + 20 + 8 + KINDS["frag"]["udp_payload"]
    for h in heads:
        assert (h.orig, h.dest, h.total_size, h.version) == (ORIG["n0"], ORIG["n2"], total, 15)
        assert len(bytes(h)) <= KINDS["frag"]["mtu"]  # each fits the lowered hard MTU
    assert sorted(h.no for h in heads) == [0, 1] and len({h.seqno for h in heads}) == 1
    # the kernel cut from the tail: the highest number carries the unicast header
    by_no = {h.no: bytes(h.payload) for h in heads}
    assert by_no[1][0] == batadv.UNICAST and by_no[0][0] != batadv.UNICAST
    data = batadv.reassemble(frags)
    assert data is not None and len(data) == total
    u = batadv.Batadv(data)
    assert isinstance(u, batadv.BatadvUnicast) and u.dest == ORIG["n2"]
    inner = u.payload
    assert (inner.src, inner.dst) == (NODES["n0"]["bat0"], NODES["n2"]["bat0"])
    assert (inner[IP].src, inner[IP].dst) == (NODES["n0"]["address"], KINDS["frag"]["to"])
    assert inner[UDP].dport == KINDS["frag"]["port"]
    assert (
        bytes(inner[UDP].payload) == FRAG_PAYLOAD
        and len(FRAG_PAYLOAD) == KINDS["frag"]["udp_payload"]
    )
    # one fragment missing, or one of another packet: nothing to reassemble
    assert batadv.reassemble(frags[:1]) is None
    other = frags[0].copy()
    other[batadv.BatadvFrag].seqno += 1
    assert batadv.reassemble([other, frags[1]]) is None


def test_batman_unicast_tvlv_tt_request_and_its_fragmented_full_table_response() -> None:
    fs = kind_frames("tt")
    clients = KINDS["tt"]["clients"]
    # every new client's frame went out as n0's broadcast
    bc = [f[batadv.BatadvBcast] for f in fs if batadv.BatadvBcast in f]
    assert [b.payload.src for b in bc] == clients
    assert all(b.orig == ORIG["n0"] and b.payload.type == KINDS["tt"]["ethertype"] for b in bc)
    # n0's OGMs: a new table version announced without its changes (too many for an OGM)
    own = [(t.ttvn, len(t.changes)) for f in fs for o in batadv.ogms(f) if o.orig == ORIG["n0"]
           for t in map(batadv.tt_data, [x for x in o.tvlvs if x.type == 4]) if t]  # fmt: skip
    versions = sorted({v for v, _ in own})
    assert len(versions) == 2 and versions[1] == versions[0] + 1, own
    assert all(n == 0 for _, n in own)
    new = versions[1]
    # n1 asks n0 for that version: a unicast TVLV TT request
    (req,) = [f[batadv.BatadvUnicastTVLV] for f in fs if batadv.BatadvUnicastTVLV in f]
    assert (req.src, req.dst, req.version) == (ORIG["n1"], ORIG["n0"], 15)
    ((tvlv),) = req.tvlvs
    assert (tvlv.type, tvlv.version) == (4, 1) and req.tvlv_len == 4 + tvlv.len
    asked = batadv.tt_data(tvlv)
    assert asked is not None and asked.flags == batadv.TT_REQUEST and asked.ttvn == new
    assert asked.changes == []
    # VLAN 0 (the 8021q module adds it to bat0) and untagged, in the kernel's order
    assert [vid for _, vid in asked.vlans] == [batadv.VLAN_HAS_TAG, 0]
    # n0 answers with its whole table, longer than the link's MTU: two fragments
    frags = [f for f in fs if batadv.BatadvFrag in f]
    assert {(f[batadv.BatadvFrag].orig, f[batadv.BatadvFrag].dest) for f in frags} == {
        (ORIG["n0"], ORIG["n1"])
    }
    data = batadv.reassemble(frags)
    assert data is not None
    resp = batadv.Batadv(data)
    assert isinstance(resp, batadv.BatadvUnicastTVLV)
    assert (resp.src, resp.dst) == (ORIG["n0"], ORIG["n1"])
    (tvlv,) = resp.tvlvs
    table = batadv.tt_data(tvlv)
    assert table is not None and table.trailing == b""
    assert table.flags == batadv.TT_RESPONSE | batadv.TT_FULL_TABLE and table.ttvn == new
    assert table.vlans == asked.vlans  # the CRCs n1 asked for
    macs = {(mac, vid) for _, mac, vid in table.changes}
    assert {(c, 0) for c in clients} <= macs  # every new client, untagged
    bat0 = NODES["n0"]["bat0"]
    assert {(bat0, 0), (bat0, batadv.VLAN_HAS_TAG)} <= macs  # n0's own, on both VLANs
    rest = macs - {(c, 0) for c in clients} - {(bat0, 0), (bat0, batadv.VLAN_HAS_TAG)}
    assert all(int(mac[:2], 16) & 1 for mac, _ in rest), rest  # multicast listeners only


def test_batman_multicast_layer_against_the_kernel_struct_layout() -> None:
    """NOT a captured frame. The lab kernel's batman-adv has no multicast packet type
    (its batadv_packet.h, recorded in batman-kinds.json, defines no BATADV_MCAST), so
    nothing in the lab sends one. The frame is built here byte by byte after newer
    kernels' include/uapi/linux/batadv_packet.h (struct batadv_mcast_packet: type 0x05,
    version, ttl, reserved, tvlv_len; then the multicast tracker TVLV, type 0x07:
    num_dests, 2 alignment bytes when num_dests is even, the destinations) and
    net/batman-adv/multicast_forw.c, which pushes them in that order before the frame."""
    assert KINDS["uapi"]["header"] and KINDS["uapi"]["BATADV_MCAST"] is False
    assert ["BATADV_UNICAST_TVLV", "0x44"] in KINDS["uapi"]["packet_types"]
    inner = bytes(Ether(src="02:00:00:00:00:01", dst="33:33:00:00:00:01") / IPv6(dst="ff02::1"))
    for dests in (["02:00:00:00:00:0a"], ["02:00:00:00:00:0a", "02:00:00:00:00:0b"]):
        tracker = struct.pack("!H", len(dests)) + (b"\0\0" if len(dests) % 2 == 0 else b"")
        tracker += b"".join(bytes.fromhex(d.replace(":", "")) for d in dests)
        tvlv = struct.pack("!BBH", 0x07, 1, len(tracker)) + tracker
        raw = struct.pack("!BBBBH", 0x05, 15, 50, 0, len(tvlv)) + tvlv + inner
        frame = b"\xff" * 6 + b"\x02" + b"\0" * 5 + b"\x43\x05" + raw
        m = Ether(frame)[batadv.BatadvMcast]
        assert (m.packet_type, m.version, m.ttl, m.tvlv_len) == (0x05, 15, 50, len(tvlv))
        (t,) = m.tvlvs
        assert (t.type, t.version, t.len, bytes(t.value)) == (7, 1, len(tracker), tracker)
        assert t.sprintf("%type%") == "mcast_tracker"
        assert isinstance(m.payload, Ether) and m.payload[IPv6].dst == "ff02::1"
        assert bytes(Ether(frame)) == frame


def _tshark(name: str, display: str, fields: list[str]) -> list[list[str]]:
    out = subprocess.run(
        ["tshark", "-r", str(DATA / name), "-Y", display, "-T", "fields",
         *[a for f in fields for a in ("-e", f)]],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [line.split("\t") for line in out.stdout.splitlines()]


def test_wireshark_reads_the_same_fields() -> None:
    """Wireshark's batman-adv dissector (where tshark is installed) sees the fields our
    layers see, on the captured kinds."""
    if not shutil.which("tshark"):
        return  # like the tcpdump check above: the scapy side is tested regardless
    bc = [f[batadv.BatadvBcast] for f in kind_frames("bcast") if batadv.BatadvBcast in f]
    assert _tshark(KINDS["bcast"]["file"], "batadv.bcast.seq",
                   ["batadv.bcast.orig", "batadv.bcast.seq", "batadv.bcast.ttl"]) == [
        [b.orig, str(b.seqno), str(b.ttl)] for b in bc]  # fmt: skip
    four = [
        f[batadv.BatadvUnicast4Addr] for f in kind_frames("dat") if batadv.BatadvUnicast4Addr in f
    ]
    assert _tshark(KINDS["dat"]["file"], "batadv.unicast_4addr.subtype",
                   ["batadv.unicast_4addr.src", "batadv.unicast_4addr.dst",
                    "batadv.unicast_4addr.subtype"]) == [
        [u.src, u.dest, str(u.subtype)] for u in four]  # fmt: skip
    icmp = [f[batadv.BatadvICMP] for f in kind_frames("icmp") if batadv.BatadvICMP in f]
    assert _tshark(KINDS["icmp"]["file"], "batadv.icmp.seq",
                   ["batadv.icmp.msg_type", "batadv.icmp.orig", "batadv.icmp.dst",
                    "batadv.icmp.uid", "batadv.icmp.seq"]) == [
        [str(p.msg_type), p.orig, p.dst, str(p.uid), str(p.seqno)] for p in icmp]  # fmt: skip
    frags = [f[batadv.BatadvFrag] for f in kind_frames("frag") if batadv.BatadvFrag in f]
    got = _tshark(KINDS["frag"]["file"], "batadv.unicast_frag.no",
                  ["batadv.unicast_frag.orig", "batadv.unicast_frag.dst", "batadv.unicast_frag.no",
                   "batadv.unicast_frag.seq", "batadv.unicast_frag.total_size", "data.len"])  # fmt: skip
    assert [g[:5] for g in got] == [
        [h.orig, h.dest, str(h.no), str(h.seqno), str(h.total_size)] for h in frags]  # fmt: skip
    assert got[-1][5] == str(len(FRAG_PAYLOAD))  # Wireshark reassembles them too
    # the TT request, and the response Wireshark reassembles from its fragments
    fs = kind_frames("tt")
    (req,) = [f[batadv.BatadvUnicastTVLV] for f in fs if batadv.BatadvUnicastTVLV in f]
    data = batadv.reassemble([f for f in fs if batadv.BatadvFrag in f])
    assert data is not None
    resp = batadv.Batadv(data)
    rows = []
    for u in (req, resp):
        t = batadv.tt_data(u.tvlvs[0])
        assert t is not None
        rows.append([u.src, u.dst, f"0x{t.flags:02x}", str(t.ttvn), str(len(t.vlans)),
                     ",".join(f"0x{crc:08x}" for crc, _ in t.vlans),
                     ",".join(f"0x{vid:04x}" for _, vid in t.vlans),
                     ",".join(mac for _, mac, _ in t.changes)])  # fmt: skip
    assert _tshark(KINDS["tt"]["file"], "batadv.unicast_tvlv.src",
                   ["batadv.unicast_tvlv.src", "batadv.unicast_tvlv.dst", "batadv.tvlv.tt.flags",
                    "batadv.tvlv.tt.ttvn", "batadv.tvlv.tt.num_vlan", "batadv.tvlv.tt.vlan.crc",
                    "batadv.tvlv.tt.vlan.vid", "batadv.tvlv.tt.change.addr"]) == rows  # fmt: skip
