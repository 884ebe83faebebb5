"""scapy layers for Babel (RFC 8966) on UDP port 6696.

scapy 2.8.0 (checked) ships no Babel layer (neither in scapy.layers nor in scapy.contrib), so
these are new. ``BabelHeader`` (magic 42, version 2, body length) carries a ``tlvs``
list of the TLVs of section 4.6: ``BabelPad1``, ``BabelPadN``, ``BabelAckReq``,
``BabelAck``, ``BabelHello``, ``BabelIHU``, ``BabelRouterId``, ``BabelNextHop``,
``BabelUpdate``, ``BabelRouteRequest``, ``BabelSeqnoRequest``, and ``BabelUnknownTLV``
for any other type. Sub-TLVs stay raw bytes in each TLV's ``subtlvs``; what follows the
body (a trailer, RFC 8966 4.2) is the header's payload. Addresses and prefixes are kept
as sent (raw bytes, compressed as on the wire); ``routes(header)`` resolves the
compression and the router-id/next-hop state into plain route announcements. Length
fields are computed when left unset and kept as given when set (for forged packets).
Intervals are in centiseconds, as on the wire.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from scapy.fields import (
    ByteEnumField,
    ByteField,
    FieldLenField,
    FlagsField,
    PacketListField,
    ShortField,
    StrLenField,
    XLongField,
    XShortField,
)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6  # noqa: F401  (binds IPv6 over Ether for rdpcap)
from scapy.packet import Packet, bind_bottom_up, bind_layers

BABEL_PORT = 6696
MAGIC = 42
VERSION = 2

TLV_TYPES = {
    0: "pad1",
    1: "padn",
    2: "ackreq",
    3: "ack",
    4: "hello",
    5: "ihu",
    6: "router_id",
    7: "next_hop",
    8: "update",
    9: "route_request",
    10: "seqno_request",
}
AE = {0: "wildcard", 1: "ipv4", 2: "ipv6", 3: "ipv6_ll"}
# address bytes per address encoding when not compressed (RFC 8966 4.1.5)
AE_LEN = {0: 0, 1: 4, 2: 16, 3: 8}
HELLO_FLAGS = {0x8000: "unicast"}
UPDATE_FLAGS = ["", "", "", "", "", "", "router_id", "default_prefix"]  # 0x40, 0x80


def _prefix_len(p: Packet) -> int:
    """Bytes of prefix actually on the wire: ceil(plen/8) minus omitted bytes."""
    if p.ae == 0:
        return 0
    if p.ae == 3:
        return max(0, 8 - getattr(p, "omitted", 0))
    return max(0, (p.plen + 7) // 8 - getattr(p, "omitted", 0))


class _TLV(Packet):
    """Common behaviour: a TLV ends where its length says; sub-TLVs are the rest."""

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.getfieldval("len") is None and len(pkt) >= 2:
            pkt = pkt[:1] + bytes([min(255, len(pkt) - 2)]) + pkt[2:]
        return pkt + pay


def _subtlvs(fixed: int | None = None) -> StrLenField:
    """Raw sub-TLVs: the TLV's bytes after ``fixed`` (or after the fields before)."""

    def length(p: Packet) -> int:
        used = fixed if fixed is not None else p._fixed_len()
        return max(0, (p.len or 0) - used)

    return StrLenField("subtlvs", b"", length_from=length)


class BabelPad1(Packet):
    name = "Babel Pad1"
    fields_desc = [ByteEnumField("type", 0, TLV_TYPES)]

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


class BabelPadN(_TLV):
    name = "Babel PadN"
    fields_desc = [
        ByteEnumField("type", 1, TLV_TYPES),
        FieldLenField("len", None, length_of="mbz", fmt="B"),
        StrLenField("mbz", b"", length_from=lambda p: p.len),
    ]


class BabelAckReq(_TLV):
    name = "Babel AckReq"
    fields_desc = [
        ByteEnumField("type", 2, TLV_TYPES),
        ByteField("len", None),
        ShortField("reserved", 0),
        XShortField("opaque", 0),
        ShortField("interval", 0),
        _subtlvs(6),
    ]


class BabelAck(_TLV):
    name = "Babel Ack"
    fields_desc = [
        ByteEnumField("type", 3, TLV_TYPES),
        ByteField("len", None),
        XShortField("opaque", 0),
        _subtlvs(2),
    ]


class BabelHello(_TLV):
    name = "Babel Hello"
    fields_desc = [
        ByteEnumField("type", 4, TLV_TYPES),
        ByteField("len", None),
        FlagsField("flags", 0, 16, {0x8000: "U"}),
        ShortField("seqno", 0),
        ShortField("interval", 400),
        _subtlvs(6),
    ]


class BabelIHU(_TLV):
    name = "Babel IHU"
    fields_desc = [
        ByteEnumField("type", 5, TLV_TYPES),
        ByteField("len", None),
        ByteEnumField("ae", 0, AE),
        ByteField("reserved", 0),
        ShortField("rxcost", 96),
        ShortField("interval", 1200),
        StrLenField("address", b"", length_from=lambda p: AE_LEN.get(p.ae, 0)),
        _subtlvs(),
    ]

    def _fixed_len(self) -> int:
        return 6 + AE_LEN.get(self.ae, 0)


class BabelRouterId(_TLV):
    name = "Babel Router-Id"
    fields_desc = [
        ByteEnumField("type", 6, TLV_TYPES),
        ByteField("len", None),
        ShortField("reserved", 0),
        XLongField("router_id", 0),
        _subtlvs(10),
    ]


class BabelNextHop(_TLV):
    name = "Babel Next Hop"
    fields_desc = [
        ByteEnumField("type", 7, TLV_TYPES),
        ByteField("len", None),
        ByteEnumField("ae", 1, AE),
        ByteField("reserved", 0),
        StrLenField("address", b"", length_from=lambda p: AE_LEN.get(p.ae, 0)),
        _subtlvs(),
    ]

    def _fixed_len(self) -> int:
        return 2 + AE_LEN.get(self.ae, 0)


class BabelUpdate(_TLV):
    name = "Babel Update"
    fields_desc = [
        ByteEnumField("type", 8, TLV_TYPES),
        ByteField("len", None),
        ByteEnumField("ae", 1, AE),
        FlagsField("flags", 0, 8, UPDATE_FLAGS),
        ByteField("plen", 0),
        ByteField("omitted", 0),
        ShortField("interval", 400),
        ShortField("seqno", 0),
        ShortField("metric", 0),
        StrLenField("prefix", b"", length_from=_prefix_len),
        _subtlvs(),
    ]

    def _fixed_len(self) -> int:
        return 10 + _prefix_len(self)


class BabelRouteRequest(_TLV):
    name = "Babel Route Request"
    fields_desc = [
        ByteEnumField("type", 9, TLV_TYPES),
        ByteField("len", None),
        ByteEnumField("ae", 0, AE),
        ByteField("plen", 0),
        StrLenField("prefix", b"", length_from=_prefix_len),
        _subtlvs(),
    ]

    def _fixed_len(self) -> int:
        return 2 + _prefix_len(self)


class BabelSeqnoRequest(_TLV):
    name = "Babel Seqno Request"
    fields_desc = [
        ByteEnumField("type", 10, TLV_TYPES),
        ByteField("len", None),
        ByteEnumField("ae", 1, AE),
        ByteField("plen", 0),
        ShortField("seqno", 0),
        ByteField("hop_count", 64),
        ByteField("reserved", 0),
        XLongField("router_id", 0),
        StrLenField("prefix", b"", length_from=_prefix_len),
        _subtlvs(),
    ]

    def _fixed_len(self) -> int:
        return 14 + _prefix_len(self)


class BabelUnknownTLV(_TLV):
    name = "Babel TLV"
    fields_desc = [
        ByteEnumField("type", 255, TLV_TYPES),
        FieldLenField("len", None, length_of="body", fmt="B"),
        StrLenField("body", b"", length_from=lambda p: p.len),
    ]


TLV_CLASSES: dict[int, type[Packet]] = {
    0: BabelPad1,
    1: BabelPadN,
    2: BabelAckReq,
    3: BabelAck,
    4: BabelHello,
    5: BabelIHU,
    6: BabelRouterId,
    7: BabelNextHop,
    8: BabelUpdate,
    9: BabelRouteRequest,
    10: BabelSeqnoRequest,
}


def _tlv(pkt: bytes, *args: object, **kargs: object) -> Packet:
    """Dissect one TLV by its type byte."""
    return TLV_CLASSES.get(pkt[0], BabelUnknownTLV)(pkt, *args, **kargs)  # type: ignore[arg-type]


class BabelHeader(Packet):
    """The Babel packet (RFC 8966 4.2): magic, version, body length, TLVs."""

    name = "Babel"
    fields_desc = [
        ByteField("magic", MAGIC),
        ByteField("version", VERSION),
        FieldLenField("body_len", None, length_of="tlvs", fmt="!H"),
        PacketListField("tlvs", [], _tlv, length_from=lambda p: p.body_len),
    ]

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        from scapy.packet import Raw

        return Raw  # the packet trailer (RFC 8966 4.2), if any


bind_bottom_up(UDP, BabelHeader, dport=BABEL_PORT)
bind_bottom_up(UDP, BabelHeader, sport=BABEL_PORT)
bind_layers(UDP, BabelHeader, sport=BABEL_PORT, dport=BABEL_PORT)


@dataclass(frozen=True)
class Route:
    """One Update resolved (RFC 8966 4.5): prefix, metric, seqno, router-id, next hop."""

    prefix: str
    metric: int
    seqno: int
    interval_cs: int
    router_id: int | None
    next_hop: str | None


def _address(ae: int, raw: bytes, plen: int) -> str:
    if ae == 1:
        return str(ipaddress.IPv4Network((raw.ljust(4, b"\0")[:4], plen), strict=False))
    if ae == 2:
        return str(ipaddress.IPv6Network((raw.ljust(16, b"\0")[:16], plen), strict=False))
    if ae == 3:
        full = b"\xfe\x80" + b"\0" * 6 + raw.ljust(8, b"\0")[:8]
        return str(ipaddress.IPv6Network((full, 128), strict=False))
    return "default" if plen == 0 else f"wildcard/{plen}"


def routes(header: Packet) -> list[Route]:
    """The route announcements of one Babel packet, with prefix compression (omitted
    bytes from the previous prefix of the same AE), the Router-Id TLV, the
    router-id flag (0x40) and Next Hop TLVs applied, in order."""
    out: list[Route] = []
    default: dict[int, bytes] = {}
    router_id: int | None = None
    next_hop: dict[int, str] = {}
    for tlv in header.tlvs:
        if isinstance(tlv, BabelRouterId):
            router_id = tlv.router_id
        elif isinstance(tlv, BabelNextHop):
            nh = _address(tlv.ae, tlv.address, 32 if tlv.ae == 1 else 128)
            next_hop[1 if tlv.ae == 1 else 2] = nh.split("/")[0]
        elif isinstance(tlv, BabelUpdate):
            full = AE_LEN.get(tlv.ae, 0)
            raw = default.get(tlv.ae, b"\0" * full)[: tlv.omitted] + bytes(tlv.prefix)
            raw = raw.ljust(full, b"\0")[:full]
            if int(tlv.flags) & 0x80:
                default[tlv.ae] = raw
            if int(tlv.flags) & 0x40 and tlv.ae in (2, 3):
                router_id = int.from_bytes(raw[-8:], "big")
            family = {1: 1, 2: 2, 3: 2}.get(tlv.ae)
            out.append(
                Route(
                    prefix=_address(tlv.ae, raw, tlv.plen),
                    metric=tlv.metric,
                    seqno=tlv.seqno,
                    interval_cs=tlv.interval,
                    router_id=router_id,
                    next_hop=next_hop.get(1 if family == 1 else 2) if family else None,
                )
            )
    return out
