"""scapy layers for batman-adv (EtherType 0x4305), after the kernel's uapi header
include/uapi/linux/batadv_packet.h (compat version 15).

Importing this module imports scapy and binds the layers: ``Ether(frame)`` then shows
``BatadvOGM``, ``BatadvOGM2``, ``BatadvELP``, ``BatadvUnicast`` (its payload is the
inner Ethernet frame), ``BatadvUnicast4Addr``, ``BatadvFrag``, ``BatadvBcast``,
``BatadvICMP``, ``BatadvUnicastTVLV`` and ``BatadvMcast``; their TVLV containers are
``BatadvTVLV`` entries in a ``tvlvs`` list. B.A.T.M.A.N. IV and V aggregate several
OGMs in one frame: each following OGM is the payload of the one before
(``ogms(frame)`` lists them). Every length field is computed when left unset and kept
as given when set, so a forger can write truncated or inconsistent packets.

``reassemble(fragments)`` joins the fragments of one unicast packet (the kernel cuts
from the tail: fragment 0 carries the last bytes, the highest-numbered one the head),
and ``tt_data(tvlv)`` reads a translation-table TVLV (flags, version, VLANs, changes).
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from scapy.fields import (
    BitField,
    ByteEnumField,
    ByteField,
    FieldLenField,
    FlagsField,
    IntField,
    MACField,
    PacketListField,
    ShortField,
    StrLenField,
    XByteField,
)
from scapy.layers import inet, inet6  # noqa: F401  (IP/IPv6 in the inner frames)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Padding, Raw, bind_bottom_up, bind_layers, bind_top_down

ETH_P_BATMAN = 0x4305
COMPAT_VERSION = 15

# enum batadv_packettype
IV_OGM = 0x00
BCAST = 0x01
CODED = 0x02
ELP = 0x03
OGM2 = 0x04
MCAST = 0x05
UNICAST = 0x40
UNICAST_FRAG = 0x41
UNICAST_4ADDR = 0x42
ICMP = 0x43
UNICAST_TVLV = 0x44

PACKET_TYPES = {
    IV_OGM: "iv_ogm",
    BCAST: "bcast",
    CODED: "coded",
    ELP: "elp",
    OGM2: "ogm2",
    MCAST: "mcast",
    UNICAST: "unicast",
    UNICAST_FRAG: "unicast_frag",
    UNICAST_4ADDR: "unicast_4addr",
    ICMP: "icmp",
    UNICAST_TVLV: "unicast_tvlv",
}
# the routing protocol's own packets (the rest carry payload or DAT/TT/TP traffic)
SIGNALLING_TYPES = frozenset({IV_OGM, ELP, OGM2})

TVLV_TYPES = {
    0x01: "gw",
    0x02: "dat",
    0x03: "nc",
    0x04: "tt",
    0x05: "roam",
    0x06: "mcast",
    0x07: "mcast_tracker",
}
IV_FLAGS = ["NOT_BEST_NEXT_HOP", "PRIMARIES_FIRST_HOP", "DIRECTLINK"]
ICMP_TYPES = {
    0: "echo_reply",
    3: "dest_unreach",
    8: "echo_request",
    11: "ttl_exceeded",
    12: "parameter_problem",
    15: "tp",
}
SUBTYPES_4ADDR = {1: "data", 2: "dat_dht_get", 3: "dat_dht_put", 4: "dat_dht_reply"}


class BatadvTVLV(Packet):
    """struct batadv_tvlv_hdr and its value (raw bytes)."""

    name = "batman-adv TVLV"
    fields_desc = [
        ByteEnumField("type", 0, TVLV_TYPES),
        ByteField("version", 1),
        FieldLenField("len", None, length_of="value", fmt="!H"),
        StrLenField("value", b"", length_from=lambda p: p.len),
    ]

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


def _tvlv_list(name: str = "tvlvs") -> PacketListField:
    return PacketListField(name, [], BatadvTVLV, length_from=lambda p: p.tvlv_len)


def _tvlv_len() -> FieldLenField:
    return FieldLenField("tvlv_len", None, length_of="tvlvs", fmt="!H")


class BatadvOGM(Packet):
    """B.A.T.M.A.N. IV originator message (struct batadv_ogm_packet, 24 bytes)."""

    name = "batman-adv OGM"
    fields_desc = [
        XByteField("packet_type", IV_OGM),
        ByteField("version", COMPAT_VERSION),
        ByteField("ttl", 50),
        FlagsField("flags", 0, 8, IV_FLAGS),
        IntField("seqno", 0),
        MACField("orig", "00:00:00:00:00:00"),
        MACField("prev_sender", "00:00:00:00:00:00"),
        ByteField("reserved", 0),
        ByteField("tq", 255),
        _tvlv_len(),
        _tvlv_list(),
    ]

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        if len(payload) >= 24 and payload[0] == IV_OGM:
            return BatadvOGM  # aggregated: the next OGM of the same frame
        return Padding


class BatadvOGM2(Packet):
    """B.A.T.M.A.N. V originator message (struct batadv_ogm2_packet, 20 bytes)."""

    name = "batman-adv OGMv2"
    fields_desc = [
        XByteField("packet_type", OGM2),
        ByteField("version", COMPAT_VERSION),
        ByteField("ttl", 50),
        ByteField("flags", 0),
        IntField("seqno", 0),
        MACField("orig", "00:00:00:00:00:00"),
        _tvlv_len(),
        IntField("throughput", 0),  # in 100 kbit/s
        _tvlv_list(),
    ]

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        if len(payload) >= 20 and payload[0] == OGM2:
            return BatadvOGM2
        return Padding


class BatadvELP(Packet):
    """B.A.T.M.A.N. V echo location packet (struct batadv_elp_packet, 16 bytes)."""

    name = "batman-adv ELP"
    fields_desc = [
        XByteField("packet_type", ELP),
        ByteField("version", COMPAT_VERSION),
        MACField("orig", "00:00:00:00:00:00"),
        IntField("seqno", 0),
        IntField("elp_interval", 500),  # ms
    ]

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        return Padding  # probe padding or Ethernet minimum-size padding


class BatadvBcast(Packet):
    """Broadcast payload (struct batadv_bcast_packet, 14 bytes), then the inner frame."""

    name = "batman-adv broadcast"
    fields_desc = [
        XByteField("packet_type", BCAST),
        ByteField("version", COMPAT_VERSION),
        ByteField("ttl", 50),
        ByteField("reserved", 0),
        IntField("seqno", 0),
        MACField("orig", "00:00:00:00:00:00"),
    ]


class BatadvUnicast(Packet):
    """Unicast payload (struct batadv_unicast_packet, 10 bytes), then the inner frame."""

    name = "batman-adv unicast"
    fields_desc = [
        XByteField("packet_type", UNICAST),
        ByteField("version", COMPAT_VERSION),
        ByteField("ttl", 50),
        ByteField("ttvn", 0),
        MACField("dest", "00:00:00:00:00:00"),
    ]


class BatadvUnicast4Addr(Packet):
    """Unicast with the sender's address (struct batadv_unicast_4addr_packet, 18 bytes)."""

    name = "batman-adv unicast 4addr"
    fields_desc = [
        XByteField("packet_type", UNICAST_4ADDR),
        ByteField("version", COMPAT_VERSION),
        ByteField("ttl", 50),
        ByteField("ttvn", 0),
        MACField("dest", "00:00:00:00:00:00"),
        MACField("src", "00:00:00:00:00:00"),
        ByteEnumField("subtype", 1, SUBTYPES_4ADDR),
        ByteField("reserved", 0),
    ]


class BatadvFrag(Packet):
    """A fragment of a unicast packet (struct batadv_frag_packet, 20 bytes); the
    fragment's bytes follow as Raw. The kernel cuts the packet from its tail: fragment 0
    holds the last bytes, the highest-numbered fragment the first ones (the unicast
    header); total_size is the whole packet's length (``reassemble``)."""

    name = "batman-adv fragment"
    fields_desc = [
        XByteField("packet_type", UNICAST_FRAG),
        ByteField("version", COMPAT_VERSION),
        ByteField("ttl", 50),
        BitField("no", 0, 4),
        BitField("priority", 0, 3),
        BitField("reserved", 0, 1),
        MACField("dest", "00:00:00:00:00:00"),
        MACField("orig", "00:00:00:00:00:00"),
        ShortField("seqno", 0),
        ShortField("total_size", 0),
    ]

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        return Raw


class BatadvICMP(Packet):
    """batman-adv's own ping (struct batadv_icmp_packet, 20 bytes; batctl ping)."""

    name = "batman-adv ICMP"
    fields_desc = [
        XByteField("packet_type", ICMP),
        ByteField("version", COMPAT_VERSION),
        ByteField("ttl", 50),
        ByteEnumField("msg_type", 8, ICMP_TYPES),
        MACField("dst", "00:00:00:00:00:00"),
        MACField("orig", "00:00:00:00:00:00"),
        ByteField("uid", 0),
        ByteField("reserved", 0),
        ShortField("seqno", 0),
    ]

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        return Raw


class BatadvUnicastTVLV(Packet):
    """Unicast TVLV carrier (struct batadv_unicast_tvlv_packet, 20 bytes + TVLVs):
    TT requests and responses, roaming advertisements."""

    name = "batman-adv unicast TVLV"
    fields_desc = [
        XByteField("packet_type", UNICAST_TVLV),
        ByteField("version", COMPAT_VERSION),
        ByteField("ttl", 50),
        ByteField("reserved", 0),
        MACField("dst", "00:00:00:00:00:00"),
        MACField("src", "00:00:00:00:00:00"),
        _tvlv_len(),
        ShortField("align", 0),
        _tvlv_list(),
    ]

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        return Padding


class BatadvMcast(Packet):
    """Multicast packet with a tracker TVLV (struct batadv_mcast_packet, 6 bytes +
    TVLVs), then the inner frame."""

    name = "batman-adv multicast"
    fields_desc = [
        XByteField("packet_type", MCAST),
        ByteField("version", COMPAT_VERSION),
        ByteField("ttl", 50),
        ByteField("reserved", 0),
        _tvlv_len(),
        _tvlv_list(),
    ]


class BatadvUnknown(Packet):
    """Any other packet type (network coding, reserved types): the general header."""

    name = "batman-adv (other)"
    fields_desc = [
        XByteField("packet_type", 0xFF),
        ByteField("version", COMPAT_VERSION),
    ]

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        return Raw


CLASSES: dict[int, type[Packet]] = {
    IV_OGM: BatadvOGM,
    BCAST: BatadvBcast,
    ELP: BatadvELP,
    OGM2: BatadvOGM2,
    MCAST: BatadvMcast,
    UNICAST: BatadvUnicast,
    UNICAST_FRAG: BatadvFrag,
    UNICAST_4ADDR: BatadvUnicast4Addr,
    ICMP: BatadvICMP,
    UNICAST_TVLV: BatadvUnicastTVLV,
}


class Batadv(Packet):
    """Dissection entry for EtherType 0x4305: becomes the class of the packet type
    in the first byte (``Batadv(data)`` returns a BatadvOGM, BatadvELP, ...)."""

    name = "batman-adv"
    fields_desc = [XByteField("packet_type", 0xFF), ByteField("version", COMPAT_VERSION)]

    @classmethod
    def dispatch_hook(cls, _pkt: bytes | None = None, *args: Any, **kargs: Any) -> type[Packet]:
        if _pkt:
            return CLASSES.get(_pkt[0], BatadvUnknown)
        return cls


bind_bottom_up(Ether, Batadv, type=ETH_P_BATMAN)
_ALL: list[type[Packet]] = [*CLASSES.values(), BatadvUnknown, Batadv]
for _cls in _ALL:
    bind_top_down(Ether, _cls, type=ETH_P_BATMAN)
for _cls in (BatadvUnicast, BatadvUnicast4Addr, BatadvBcast, BatadvMcast):
    bind_layers(_cls, Ether)


def ogms(frame: Packet) -> list[Packet]:
    """Every OGM (IV) or OGMv2 in a frame, in order (one frame may aggregate several)."""
    found: list[Packet] = []
    layer = frame.getlayer(BatadvOGM) or frame.getlayer(BatadvOGM2)
    while isinstance(layer, BatadvOGM | BatadvOGM2):
        found.append(layer)
        layer = layer.payload
    return found


def reassemble(fragments: list[Packet]) -> bytes | None:
    """The unicast packet (batman-adv header first) that the fragments of one packet
    (BatadvFrag layers, or frames holding one, of the same orig and seqno) make up, as
    the kernel merges them: highest number first. None when one is missing or the
    lengths do not add up to total_size."""
    frags: list[Packet] = []
    for f in fragments:
        layer = f if isinstance(f, BatadvFrag) else f.getlayer(BatadvFrag)
        if layer is None:
            return None
        frags.append(layer)
    if not frags:
        return None
    keys = {(f.orig, f.seqno, f.total_size) for f in frags}
    numbers = sorted(f.no for f in frags)
    if len(keys) != 1 or numbers != list(range(len(frags))):
        return None
    data = b"".join(bytes(f.payload) for f in sorted(frags, key=lambda f: -f.no))
    return data if len(data) == frags[0].total_size else None


# enum batadv_tt_data_flags (the low 4 bits are the type) and batadv_tt_client_flags
TT_OGM_DIFF, TT_REQUEST, TT_RESPONSE, TT_FULL_TABLE = 0x01, 0x02, 0x04, 0x10
TT_CLIENT_DEL, TT_CLIENT_ROAM, TT_CLIENT_WIFI, TT_CLIENT_ISOLA = 0x01, 0x02, 0x10, 0x20
VLAN_HAS_TAG = 0x8000


class TTData(NamedTuple):
    """A translation-table TVLV's value (struct batadv_tvlv_tt_data, then one
    batadv_tvlv_tt_vlan_data per VLAN, then batadv_tvlv_tt_change entries)."""

    flags: int
    ttvn: int
    vlans: list[tuple[int, int]]  # (crc32, vid; VLAN_HAS_TAG set for tagged ones)
    changes: list[tuple[int, str, int]]  # (client flags, MAC, vid)
    trailing: bytes  # bytes after the last whole change entry (none in a sane TVLV)


def tt_data(tvlv: Packet | bytes) -> TTData | None:
    """Read a TT TVLV (a BatadvTVLV of type 4, or its value); None if too short for
    its own VLAN count."""
    raw = bytes(tvlv.value) if isinstance(tvlv, Packet) else bytes(tvlv)
    if len(raw) < 4:
        return None
    flags, ttvn, num_vlan = struct.unpack_from("!BBH", raw)
    off = 4 + 8 * num_vlan
    if len(raw) < off:
        return None
    vlans = [struct.unpack_from("!IH", raw, 4 + 8 * i) for i in range(num_vlan)]
    changes = []
    while off + 12 <= len(raw):
        mac = ":".join(f"{b:02x}" for b in raw[off + 4 : off + 10])
        changes.append((raw[off], mac, struct.unpack_from("!H", raw, off + 10)[0]))
        off += 12
    return TTData(flags, ttvn, [(c, v) for c, v in vlans], changes, raw[off:])


def packet_type(frame: Packet) -> str | None:
    """The batman-adv packet type name of an Ethernet frame, None if it is not batman-adv."""
    if not isinstance(frame, Ether) or frame.type != ETH_P_BATMAN:
        return None
    raw = bytes(frame.payload)
    if not raw:
        return "truncated"
    return PACKET_TYPES.get(raw[0], f"type_{raw[0]:#04x}")
