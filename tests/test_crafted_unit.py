"""Crafted flows without root: parsing, the frames scapy builds (dissected back by scapy),
the IP id patch, pcap files and the SNMP parser."""

from __future__ import annotations

import pytest

from meshstress.errors import InputError
from meshstress.model import generators
from meshstress.observe import snmp
from meshstress.traffic import crafted
from meshstress.traffic.flows import parse_flows

scapy = pytest.importorskip("scapy", reason="scapy not installed (pip install scapy)")

SRC_MAC, DST_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


def flows(**item):
    base = {"kind": "crafted", "from": "n0", "to": "n2", "frame": "ttl1"}
    return parse_flows([{**base, **item}], "s.toml", generators.line(3))


def test_parse_defaults_and_settings():
    (f,) = flows(rate="500pps")
    assert f.crafted == crafted.CraftedSpec(frame="ttl1")
    assert (f.rate_pps, f.size, f.name) == (500.0, 64, "crafted-n0-n2")
    (f,) = flows(frame="fragmented-udp", fragment=512, size=4000)
    assert (f.crafted.fragment, f.size) == (512, 4000)
    (f,) = flows(frame="bad-checksum", checksum="udp")
    assert f.crafted.checksum == "udp"
    (f,) = flows(frame="oversized-udp")
    assert f.size == 65600


@pytest.mark.parametrize(
    "item, fld",
    [
        ({"frame": "smurf"}, "traffic[0].frame"),
        ({"frame": None}, "traffic[0].frame"),
        ({"checksum": "udp"}, "traffic[0].checksum"),  # ttl1 has none
        ({"frame": "bad-checksum", "checksum": "tcp"}, "traffic[0].checksum"),
        ({"frame": "fragmented-udp", "fragment": 100}, "traffic[0].fragment"),  # not 8k
        ({"frame": "ttl1", "fragment": 512}, "traffic[0].fragment"),
        ({"frame": "fragmented-udp", "size": 500}, "traffic[0].size"),  # one fragment
        ({"frame": "oversized-udp", "size": 60000}, "traffic[0].size"),  # not oversized
        ({"frame": "ttl1", "size": 2000}, "traffic[0].size"),  # more than one frame
        ({"rate": "2mbit"}, "traffic[0].rate"),
    ],
)
def test_parse_errors_name_the_field(item, fld):
    if item.get("frame", "x") is None:
        item = {k: v for k, v in item.items() if k != "frame"}
        with pytest.raises(InputError) as err:
            parse_flows([{"kind": "crafted", "from": "n0", "to": "n2"}], "s.toml",
                        generators.line(3))  # fmt: skip
    else:
        with pytest.raises(InputError) as err:
            flows(**item)
    assert err.value.field == fld


def test_crafted_keys_only_on_crafted_flows():
    with pytest.raises(InputError) as err:
        parse_flows([{"kind": "udp", "from": "n0", "to": "n1", "frame": "ttl1"}], "s.toml",
                    generators.line(3))  # fmt: skip
    assert err.value.field == "traffic[0].frame"


def build(frame, size=None, **kw):
    spec = crafted.CraftedSpec(frame=frame, **kw)
    size = crafted.default_size(frame) if size is None else size
    return crafted.build_frames(spec, size, SRC_MAC, DST_MAC, "10.0.0.1", "10.0.0.3", 4000)


def test_frames_dissect_as_asked():
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import ARP, Ether

    (f,) = build("ttl1")
    p = Ether(f)
    assert (p.dst, p[IP].ttl, p[IP].dst, len(p[UDP].payload)) == (DST_MAC, 1, "10.0.0.3", 64)
    (f,) = build("broadcast-storm")
    assert (Ether(f).dst, Ether(f)[IP].dst) == ("ff:ff:ff:ff:ff:ff", "255.255.255.255")
    (f,) = build("arp-flood")
    assert (Ether(f)[ARP].op, Ether(f)[ARP].pdst, Ether(f)[ARP].hwsrc) == (1, "10.0.0.3", SRC_MAC)


def _valid_ip(frame: bytes) -> bool:
    hdr = bytearray(frame[14:34])
    return crafted.ip_checksum(bytes(hdr)) == 0


def _udp_ok(frame: bytes) -> bool:
    from scapy.layers.inet import IP, UDP

    ip = IP(frame[14:])
    got = ip[UDP].chksum
    del ip[UDP].chksum
    return IP(bytes(ip))[UDP].chksum == got


def test_bad_checksums_are_bad_and_only_the_one_asked():
    (good,) = build("ttl1")
    assert _valid_ip(good) and _udp_ok(good)
    (ip_bad,) = build("bad-checksum", checksum="ip")
    assert not _valid_ip(ip_bad) and _udp_ok(ip_bad)
    (udp_bad,) = build("bad-checksum", checksum="udp")
    assert _valid_ip(udp_bad) and not _udp_ok(udp_bad)


def test_fragments_reassemble_and_oversized_passes_ip_limit():
    from scapy.layers.inet import IP, UDP, defragment

    frames = build("fragmented-udp", size=3000, fragment=1024)
    assert len(frames) == 3 and all(_valid_ip(f) for f in frames)
    (whole,) = defragment([IP(f[14:]) for f in frames])
    assert len(whole[UDP].payload) == 3000
    over = build("oversized-udp", size=66000)
    ips = [IP(f[14:]) for f in over]
    assert all(len(f) <= 1514 for f in over) and all(_valid_ip(f) for f in over)
    assert [p.flags.MF for p in ips] == [1] * (len(ips) - 1) + [0]
    last = ips[-1]
    assert last.frag * 8 + len(last.payload) > crafted.IP_MAX - 20  # past IP's limit
    assert last.frag * 8 + len(last.payload) == 66000 + 8
    offsets = [p.frag * 8 for p in ips]
    sizes = [len(p.payload) for p in ips]
    assert all(a + n == b for a, n, b in zip(offsets, sizes, offsets[1:], strict=False))


def test_patch_ip_id_keeps_the_header_checksum_valid():
    frames = build("fragmented-udp")
    for ip_id in (1, 2, 0x1234, 0xFFFF, 0x10000 + 7):
        for f in frames:
            b = bytearray(f)
            crafted.patch_ip_id(b, ip_id)
            assert int.from_bytes(b[18:20], "big") == ip_id & 0xFFFF
            assert _valid_ip(bytes(b))


def test_pcap_round_trip_and_scapy_reads_it(tmp_path):
    from scapy.utils import rdpcap

    frames = build("fragmented-udp")
    path = str(tmp_path / "f.pcap")
    crafted.write_pcap(path, [(1000.25 + k, f) for k, f in enumerate(frames)])
    back = crafted.read_pcap(path)
    assert [f for _, f in back] == frames
    assert [round(t, 3) for t, _ in back] == [1000.25, 1001.25, 1002.25]
    assert [bytes(p) for p in rdpcap(path)] == frames


SNMP = """Ip: Forwarding DefaultTTL InReceives InHdrErrors
Ip: 1 64 300 7
Udp: InDatagrams InCsumErrors
Udp: 5 2
"""


def test_snmp_parse_and_delta():
    c = snmp.parse(SNMP)
    assert c == {"Ip": {"Forwarding": 1, "DefaultTTL": 64, "InReceives": 300, "InHdrErrors": 7},
                 "Udp": {"InDatagrams": 5, "InCsumErrors": 2}}  # fmt: skip
    after = snmp.parse(SNMP.replace("300 7", "310 9"))
    assert snmp.delta(c, after) == {"Ip": {"InReceives": 10, "InHdrErrors": 2}}
