"""Routing signalling in captured frames, by their bytes (no scapy: fast, and it runs
wherever the pcaps are). Pure.

    kind(frame)            -> "batman:iv_ogm", "batman:unicast", "babel", "other", ...
    signalling(records)    -> packets, bytes and share of all bytes per kind

batman-adv frames are named by the packet type in their first byte (as the BCC
`batman` probe names them); OGM and OGMv2 frames also count the originator messages
they aggregate (`ogms`), walked as far as the snap length allows. Babel is UDP port 6696
over IPv4 or IPv6. Bytes are the frames' original lengths, Ethernet header included.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

ETH_P_BATMAN = 0x4305
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
BABEL_PORT = 6696

BATMAN_TYPES = {
    0x00: "iv_ogm",
    0x01: "bcast",
    0x02: "coded",
    0x03: "elp",
    0x04: "ogm2",
    0x05: "mcast",
    0x40: "unicast",
    0x41: "unicast_frag",
    0x42: "unicast_4addr",
    0x43: "icmp",
    0x44: "unicast_tvlv",
}
# the routing protocol's own messages; the rest of batman-adv's frames carry payload
BATMAN_SIGNALLING = ("iv_ogm", "elp", "ogm2")
OGM_HLEN = {0x00: 24, 0x04: 20}
TVLV_LEN_AT = {0x00: 22, 0x04: 14}


def _ethertype(frame: bytes) -> tuple[int, int]:
    """(EtherType, offset of the payload), through one 802.1Q tag."""
    if len(frame) < 14:
        return -1, len(frame)
    etype = struct.unpack_from("!H", frame, 12)[0]
    if etype == ETH_P_8021Q and len(frame) >= 18:
        return struct.unpack_from("!H", frame, 16)[0], 18
    return etype, 14


def _udp_ports(frame: bytes, etype: int, off: int) -> tuple[int, int] | None:
    if etype == ETH_P_IP and len(frame) >= off + 20:
        ihl = (frame[off] & 0x0F) * 4
        if frame[off + 9] != 17 or len(frame) < off + ihl + 4:
            return None
        sport, dport = struct.unpack_from("!HH", frame, off + ihl)
        return sport, dport
    if etype == ETH_P_IPV6 and len(frame) >= off + 44:
        if frame[off + 6] != 17:  # no extension headers in Babel traffic
            return None
        sport, dport = struct.unpack_from("!HH", frame, off + 40)
        return sport, dport
    return None


def kind(frame: bytes) -> str:
    """'batman:TYPE' for batman-adv frames, 'babel', or 'other'."""
    etype, off = _ethertype(frame)
    if etype == ETH_P_BATMAN:
        if len(frame) <= off:
            return "batman:truncated"
        t = frame[off]
        return "batman:" + BATMAN_TYPES.get(t, f"type_0x{t:02x}")
    ports = _udp_ports(frame, etype, off)
    if ports is not None and BABEL_PORT in ports:
        return "babel"
    return "other"


def ogm_count(frame: bytes) -> int:
    """OGMs (IV) or OGMv2s aggregated in one frame, as far as the captured bytes go."""
    etype, off = _ethertype(frame)
    if etype != ETH_P_BATMAN or len(frame) <= off or frame[off] not in OGM_HLEN:
        return 0
    t = frame[off]
    n = 0
    while off + OGM_HLEN[t] <= len(frame) and frame[off] == t:
        n += 1
        tvlv = struct.unpack_from("!H", frame, off + TVLV_LEN_AT[t])[0]
        off += OGM_HLEN[t] + tvlv
    return n


def is_signalling(k: str) -> bool:
    return k == "babel" or k.removeprefix("batman:") in BATMAN_SIGNALLING


def signalling(records: Iterable[tuple[float, bytes, int]]) -> dict[str, Any]:
    """Counts of one capture file's records (timestamp, captured bytes, original length):
    {"packets", "bytes", "kinds": {kind: {"packets", "bytes"[, "ogms"]}},
     "signalling": {"packets", "bytes", "share_bytes"}}."""
    kinds: dict[str, dict[str, int]] = {}
    total_p = total_b = 0
    for _ts, data, origlen in records:
        k = kind(data)
        entry = kinds.setdefault(k, {"packets": 0, "bytes": 0})
        entry["packets"] += 1
        entry["bytes"] += origlen
        if k in ("batman:iv_ogm", "batman:ogm2"):
            entry["ogms"] = entry.get("ogms", 0) + ogm_count(data)
        total_p += 1
        total_b += origlen
    return _totals(kinds, total_p, total_b)


def _totals(kinds: dict[str, dict[str, int]], packets: int, nbytes: int) -> dict[str, Any]:
    sig_p = sum(v["packets"] for k, v in kinds.items() if is_signalling(k))
    sig_b = sum(v["bytes"] for k, v in kinds.items() if is_signalling(k))
    return {
        "packets": packets,
        "bytes": nbytes,
        "kinds": dict(sorted(kinds.items())),
        "signalling": {
            "packets": sig_p,
            "bytes": sig_b,
            "share_bytes": round(sig_b / nbytes, 4) if nbytes else None,
        },
    }


def merge(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum several files' signalling() results (a node's interfaces)."""
    kinds: dict[str, dict[str, int]] = {}
    packets = nbytes = 0
    for part in parts:
        packets += part["packets"]
        nbytes += part["bytes"]
        for k, v in part["kinds"].items():
            entry = kinds.setdefault(k, {})
            for key, n in v.items():
                entry[key] = entry.get(key, 0) + n
    return _totals(kinds, packets, nbytes)
