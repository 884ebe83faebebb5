"""Crafted frames: what a `kind = "crafted"` flow sends (docs/forge.md).

`parse_crafted` reads the crafted keys of one [[traffic]] table into a CraftedSpec
(pure, InputError naming the field). `build_frames` builds the frames of one packet
with scapy, ONCE (scapy is imported here, lazily); the agent
(meshstress.traffic.craft_agent) then sends their bytes through a raw AF_PACKET socket
at the flow's rate, patching only what must vary between packets (`patch_ip_id`: the IP
identification of fragmented datagrams, which the receiver reassembles by id).

Frames (`frame = ...`):
- "broadcast-storm": Ethernet broadcast, UDP to 255.255.255.255 (limited broadcast: it
  never leaves the link; over batman-adv's bat0 every node floods it on);
- "arp-flood": ARP who-has for the destination's address, Ethernet broadcast;
- "ttl1": UDP with TTL 1 to the destination, via its next hop (a router 2+ hops before
  it drops it: ICMP time exceeded, Ip InHdrErrors);
- "bad-checksum": UDP to the destination with a wrong IP header checksum
  (`checksum = "ip"`, dropped by the first receiver: Ip InCsumErrors) or a wrong UDP
  checksum (`checksum = "udp"`, dropped by the destination: Udp InCsumErrors);
- "fragmented-udp": one UDP datagram of `size` bytes in fragments of `fragment` bytes
  (the destination reassembles it: Ip ReasmOKs);
- "oversized-udp": fragments of a datagram longer than IP allows (65535 bytes): the
  destination's reassembly refuses it (Ip ReasmFails), a "ping of death" for UDP.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from meshstress.errors import InputError
from meshstress.model import units

FRAMES = ("broadcast-storm", "arp-flood", "ttl1", "bad-checksum", "fragmented-udp",
          "oversized-udp")  # fmt: skip
KEYS = ("frame", "fragment", "checksum")  # besides the common [[traffic]] keys
CHECKSUMS = ("ip", "udp")
DEFAULT_SIZE = {"fragmented-udp": 3000, "oversized-udp": 65600}  # UDP payload bytes
DEFAULT_FRAGMENT = 1024
IP_MAX = 65535
ETH_LEN = 14
FRAG_OFFSET_MAX = 8191 * 8  # the last byte offset a fragment can start at (13 bits of 8)
# bytes of UDP payload of an oversized datagram: past 65507 (IP's limit), and its last
# fragment (from FRAG_OFFSET_MAX) must fit a 1500-byte frame
MAX_CRAFTED_SIZE = FRAG_OFFSET_MAX + 1480 - 8
BAD_XOR = 0x5A5A  # a wrong checksum: the right one with these bits flipped


@dataclass(frozen=True)
class CraftedSpec:
    """The settings of a crafted flow; its rate is FlowSpec.rate_pps (packets per second,
    a fragmented packet counting once) and its payload FlowSpec.size."""

    frame: str
    fragment: int = DEFAULT_FRAGMENT  # fragmented/oversized: bytes of IP payload per fragment
    checksum: str = "ip"  # bad-checksum: which one is wrong


def parse_crafted(item: dict[str, Any], source: str, at: str) -> CraftedSpec:
    """The crafted keys of one [[traffic]] table -> CraftedSpec (InputError naming the
    field)."""
    frame = item.get("frame")
    if frame is None:
        raise InputError(source, f"{at}.frame", f"missing (one of {', '.join(FRAMES)})")
    if frame not in FRAMES:
        raise InputError(
            source, f"{at}.frame", f"expected one of {', '.join(FRAMES)}, got {frame!r}"
        )
    kw: dict[str, Any] = {"frame": frame}
    if "checksum" in item:
        if frame != "bad-checksum":
            raise InputError(source, f"{at}.checksum", 'only frame = "bad-checksum" has one')
        if item["checksum"] not in CHECKSUMS:
            raise InputError(
                source, f"{at}.checksum", f'expected "ip" or "udp", got {item["checksum"]!r}'
            )
        kw["checksum"] = item["checksum"]
    if "fragment" in item:
        if frame not in DEFAULT_SIZE:
            raise InputError(
                source, f"{at}.fragment", "only fragmented-udp and oversized-udp have fragments"
            )
        try:
            frag = units.parse_size(item["fragment"])
        except ValueError as exc:
            raise InputError(source, f"{at}.fragment", str(exc)) from None
        if not 8 <= frag <= 1472 or frag % 8:
            raise InputError(
                source,
                f"{at}.fragment",
                f"must be a multiple of 8 from 8 to 1472 bytes, got {frag}",
            )
        kw["fragment"] = frag
    return CraftedSpec(**kw)


def check_size(spec: CraftedSpec, size: int, source: str, fld: str) -> None:
    """InputError unless `size` (UDP payload bytes) fits the frame kind."""
    if spec.frame == "arp-flood":
        return
    if spec.frame == "oversized-udp":
        if not IP_MAX - 20 - 8 < size <= MAX_CRAFTED_SIZE:
            raise InputError(
                source,
                fld,
                f"an oversized datagram takes {IP_MAX - 27} to {MAX_CRAFTED_SIZE} bytes",
            )
        return
    if spec.frame == "fragmented-udp":
        if not spec.fragment < size + 8 <= IP_MAX - 20:
            raise InputError(
                source, fld, f"must be more than one fragment ({spec.fragment} B) and at most "
                f"{IP_MAX - 28} bytes"
            )  # fmt: skip
        return
    if not 0 <= size <= 1472:
        raise InputError(source, fld, "a single-frame datagram takes 0 to 1472 bytes")


def default_size(frame: str) -> int:
    return DEFAULT_SIZE.get(frame, 64)


# --- building (scapy, once) ---------------------------------------------------------


def _bad(value: int) -> int:
    out = value ^ BAD_XOR
    return out or 0x1234


def build_frames(
    spec: CraftedSpec,
    size: int,
    src_mac: str,
    dst_mac: str,
    src_ip: str,
    dst_ip: str,
    port: int,
) -> list[bytes]:
    """The frames of one packet, built with scapy (the only place that imports it)."""
    from scapy.layers.inet import IP, UDP, fragment
    from scapy.layers.l2 import ARP, Ether
    from scapy.packet import Raw

    payload = Raw(b"\0" * size)
    bcast = "ff:ff:ff:ff:ff:ff"
    if spec.frame == "arp-flood":
        pkt = Ether(src=src_mac, dst=bcast) / ARP(
            op=1, hwsrc=src_mac, psrc=src_ip, hwdst="00:00:00:00:00:00", pdst=dst_ip
        )
        return [bytes(pkt)]
    if spec.frame == "broadcast-storm":
        pkt = Ether(src=src_mac, dst=bcast) / IP(src=src_ip, dst="255.255.255.255", id=0) / UDP(
            sport=port, dport=port
        ) / payload  # fmt: skip
        return [bytes(pkt)]
    eth = Ether(src=src_mac, dst=dst_mac)
    if spec.frame == "ttl1":
        return [bytes(eth / IP(src=src_ip, dst=dst_ip, ttl=1, id=0) / UDP(sport=port, dport=port)
                      / payload)]  # fmt: skip
    if spec.frame == "bad-checksum":
        good = IP(bytes(IP(src=src_ip, dst=dst_ip, id=0) / UDP(sport=port, dport=port) / payload))
        if spec.checksum == "ip":
            good.chksum = _bad(good.chksum)
        else:
            good[UDP].chksum = _bad(good[UDP].chksum)
        return [bytes(eth / good)]
    if spec.frame == "fragmented-udp":
        whole = IP(src=src_ip, dst=dst_ip, id=0) / UDP(sport=port, dport=port) / payload
        return [bytes(eth / f) for f in fragment(whole, fragsize=spec.fragment)]
    if spec.frame == "oversized-udp":
        # fragments of a datagram past IP's limit: scapy cannot hold it whole (16-bit
        # lengths), so the UDP bytes are cut by hand and each fragment is built by scapy
        # fragments of `fragment` bytes up to FRAG_OFFSET_MAX, the rest in the last one
        udp = struct.pack("!HHHH", port, port, 0xFFFF, 0) + b"\0" * size
        cuts = [*range(0, FRAG_OFFSET_MAX, spec.fragment), FRAG_OFFSET_MAX, len(udp)]
        frames = []
        for off, end in zip(cuts, cuts[1:], strict=False):
            chunk = udp[off:end]
            more = end < len(udp)
            ip = IP(src=src_ip, dst=dst_ip, id=0, proto=17, flags="MF" if more else 0,
                    frag=off // 8) / Raw(chunk)  # fmt: skip
            frames.append(bytes(eth / ip))
        return frames
    raise ValueError(f"unknown crafted frame {spec.frame!r}")


def varies(spec: CraftedSpec) -> bool:
    """Whether packets need distinct IP ids (fragments are reassembled by id)."""
    return spec.frame in ("fragmented-udp", "oversized-udp")


def _fold(x: int) -> int:
    while x >> 16:
        x = (x & 0xFFFF) + (x >> 16)
    return x


def patch_ip_id(frame: bytearray, ip_id: int) -> None:
    """Set the IP identification of an Ethernet/IPv4 frame in place and update its header
    checksum incrementally (RFC 1624: HC' = ~(~HC + ~m + m'))."""
    off = ETH_LEN
    old_id, old_ck = (
        struct.unpack_from("!H", frame, off + 4)[0],
        struct.unpack_from("!H", frame, off + 10)[0],
    )
    new_id = ip_id & 0xFFFF
    ck = ~_fold((~old_ck & 0xFFFF) + (~old_id & 0xFFFF) + new_id) & 0xFFFF
    struct.pack_into("!H", frame, off + 4, new_id)
    struct.pack_into("!H", frame, off + 10, ck)


def ip_checksum(header: bytes) -> int:
    """The Internet checksum of an IPv4 header whose checksum field is zero."""
    if len(header) % 2:
        header += b"\0"
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    return ~_fold(total) & 0xFFFF


# --- pcap files (classic libpcap, Ethernet): what was sent, openable in Wireshark ----------

PCAP_HEADER = struct.Struct("<IHHiIII")
PCAP_RECORD = struct.Struct("<IIII")
PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1


def pcap_header(snaplen: int = 262144) -> bytes:
    return PCAP_HEADER.pack(PCAP_MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)


def pcap_record(frame: bytes, t: float) -> bytes:
    """One record; `t` in seconds (wall clock for files people open)."""
    sec = int(t)
    usec = int(round((t - sec) * 1e6))
    if usec >= 1_000_000:
        sec, usec = sec + 1, usec - 1_000_000
    return PCAP_RECORD.pack(sec, usec, len(frame), len(frame)) + frame


def write_pcap(path: str, frames: list[tuple[float, bytes]]) -> None:
    with open(path, "wb") as f:
        f.write(pcap_header())
        for t, frame in frames:
            f.write(pcap_record(frame, t))


def read_pcap(path: str) -> list[tuple[float, bytes]]:
    """[(time, frame)] of a classic little-endian microsecond pcap (ours)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < PCAP_HEADER.size or PCAP_HEADER.unpack_from(data)[0] != PCAP_MAGIC:
        raise ValueError(f"{path}: not a little-endian pcap file")
    out = []
    off = PCAP_HEADER.size
    while off + PCAP_RECORD.size <= len(data):
        sec, usec, incl, _orig = PCAP_RECORD.unpack_from(data, off)
        off += PCAP_RECORD.size
        out.append((sec + usec / 1e6, data[off : off + incl]))
        off += incl
    return out
