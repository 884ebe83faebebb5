"""rtnetlink requests as bytes, sent many to a buffer: the builder's fast path.

Building a mesh is thousands of small requests (a veth pair, a link up, an address, a
route). Sent one at a time through pyroute2, each costs a round trip and, mostly, the
library's Python-side encoding and reply decoding (profile in docs/performance.md). Here
each request is a few `struct.pack` calls, the requests for one namespace go into one
buffer, the kernel handles the whole buffer inside one `sendto` (in order), and only the
last request of a buffer asks for an ack: a refused request still answers with its
error, so nothing is missed. The builders are pure; `Batch` talks to the kernel.

Attribute numbers are the kernel's uapi (linux/rtnetlink.h, if_link.h, if_addr.h,
veth.h), the same ones pyroute2 and iproute2 send.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from dataclasses import dataclass, field

from meshstress.errors import MeshstressError

# message types and flags
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000

# link attributes
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_NET_NS_FD = 28
IFLA_NUM_TX_QUEUES = 31
IFLA_NUM_RX_QUEUES = 32
IFLA_GSO_MAX_SEGS = 40
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFLA_BR_FORWARD_DELAY = 1
IFLA_BR_AGEING_TIME = 4
IFLA_BR_STP_STATE = 5
IFLA_BR_MCAST_SNOOPING = 23
IFF_UP = 0x1

# address and route attributes
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_TABLE = 15
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1

# socket options
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # an error reply carries the request's header only, not all of it
NETLINK_EXT_ACK = 11  # ... and the kernel's reason as text
NLMSGERR_ATTR_MSG = 1

SEQ_BASE = 0x6D620000  # our sequence numbers ("mb"), apart from pyroute2's
CHUNK = 48 * 1024  # bytes of requests per sendto, well under the socket's send buffer
ACK_TIMEOUT = 30.0  # the kernel acks a buffer before sendto returns; this only guards


def nlmsg(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def _str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def _ifinfo(index: int = 0, up: bool | None = None) -> bytes:
    """struct ifinfomsg: family, type, index, flags, change (only IFF_UP, if `up` given)."""
    flags = IFF_UP if up else 0
    change = IFF_UP if up is not None else 0
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, flags, change)


@dataclass(frozen=True)
class VethEnd:
    """One end of a veth pair: its name, where it goes (a namespace fd), its ifindex
    there (0: the kernel picks), and its settings."""

    ifname: str
    ns_fd: int
    index: int = 0
    gso_max_segs: int | None = None
    mtu: int | None = None
    master: int | None = None  # ifindex of a bridge in the same namespace
    queues: int | None = None  # tx and rx queues (None: the kernel's, one per possible CPU)

    def attrs(self) -> bytes:
        out = _str(IFLA_IFNAME, self.ifname) + struct.pack("=HHi", 8, IFLA_NET_NS_FD, self.ns_fd)
        if self.mtu:
            out += _u32(IFLA_MTU, self.mtu)
        if self.queues:
            out += _u32(IFLA_NUM_TX_QUEUES, self.queues) + _u32(IFLA_NUM_RX_QUEUES, self.queues)
        if self.gso_max_segs is not None:
            out += _u32(IFLA_GSO_MAX_SEGS, self.gso_max_segs)
        if self.master:
            out += _u32(IFLA_MASTER, self.master)
        return out


def veth_msg(a: VethEnd, b: VethEnd, seq: int, up: bool = True) -> bytes:
    """RTM_NEWLINK creating a veth pair with end `a` (up if `up`) directly in its
    namespace and its peer `b` directly in its own: no create-then-move. The kernel uses
    the peer's ifindex only when `a`'s is given too. Pure."""
    peer = _ifinfo(b.index) + b.attrs()
    info = _str(IFLA_INFO_KIND, "veth") + attr(
        IFLA_INFO_DATA | NLA_F_NESTED, attr(VETH_INFO_PEER | NLA_F_NESTED, peer)
    )
    body = _ifinfo(a.index, up if up else None) + a.attrs()
    body += attr(IFLA_LINKINFO | NLA_F_NESTED, info)
    return nlmsg(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, seq, body)


def bridge_msg(ifname: str, index: int, seq: int) -> bytes:
    """RTM_NEWLINK creating a bridge, up, that learns nothing (ageing 0), so it floods
    every frame to every port as a radio channel reaches every member; no STP, no
    forward delay, no multicast snooping. Pure."""
    data = (
        _u32(IFLA_BR_AGEING_TIME, 0)
        + _u32(IFLA_BR_FORWARD_DELAY, 0)
        + _u32(IFLA_BR_STP_STATE, 0)
        + attr(IFLA_BR_MCAST_SNOOPING, b"\0")
    )
    info = _str(IFLA_INFO_KIND, "bridge") + attr(IFLA_INFO_DATA | NLA_F_NESTED, data)
    body = _ifinfo(index, True) + _str(IFLA_IFNAME, ifname)
    body += attr(IFLA_LINKINFO | NLA_F_NESTED, info)
    return nlmsg(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, seq, body)


def link_set_msg(
    index: int, seq: int, up: bool | None = None, alias: str | None = None, ifname: str = ""
) -> bytes:
    """RTM_NEWLINK changing interface `index` (or, with index 0, the one named `ifname`):
    up/down (only IFF_UP) and/or its alias. Pure."""
    body = _ifinfo(index, up)
    if ifname:
        body += _str(IFLA_IFNAME, ifname)
    if alias is not None:
        body += _str(IFLA_IFALIAS, alias)
    return nlmsg(RTM_NEWLINK, NLM_F_REQUEST, seq, body)


def addr_msg(index: int, address: str, prefixlen: int, seq: int) -> bytes:
    """RTM_NEWADDR adding an IPv4 address (IFA_LOCAL and IFA_ADDRESS, as `ip addr add`
    and pyroute2 send it), scope global, no broadcast. Pure."""
    ip = socket.inet_aton(address)
    body = struct.pack("=BBBBI", socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
    body += attr(IFA_LOCAL, ip) + attr(IFA_ADDRESS, ip)
    return nlmsg(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, seq, body)


_ROUTE_STRUCTS: dict[tuple[bool, bool], struct.Struct] = {}


def _route_struct(gateway: bool, priority: bool) -> struct.Struct:
    """The whole RTM_NEWROUTE as one struct (header, rtmsg, each 4-byte attribute): one
    pack per route. A static mesh of 1024 nodes sends a million of them."""
    key = (gateway, priority)
    if key not in _ROUTE_STRUCTS:
        fmt = "=IHHII" + "BBBBBBBBI" + "HHI" + "HH4s"  # header, rtmsg, RTA_TABLE, RTA_DST
        fmt += ("HH4s" if gateway else "") + "HHi" + ("HHI" if priority else "")
        _ROUTE_STRUCTS[key] = struct.Struct(fmt)
    return _ROUTE_STRUCTS[key]


def route_msg(
    dst: str,
    oif: int,
    seq: int,
    gateway: str | None = None,
    proto: int = RTPROT_STATIC,
    priority: int | None = None,
    replace: bool = False,
) -> bytes:
    """RTM_NEWROUTE for an IPv4 `dst` ("a.b.c.d/len") out of `oif` in the main table:
    via `gateway`, or on-link (scope link) without one. `replace` replaces a route to
    the same destination and priority instead of failing on it. Pure."""
    net, _, plen = dst.partition("/")
    shape = _route_struct(bool(gateway), priority is not None)
    flags = NLM_F_REQUEST | NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
    scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
    fields: list[int | bytes] = [shape.size, RTM_NEWROUTE, flags, seq, 0]
    # family, dst_len, src_len, tos, table, protocol, scope, type, flags
    fields += [socket.AF_INET, int(plen or 32), 0, 0, RT_TABLE_MAIN, proto, scope, RTN_UNICAST, 0]
    fields += [8, RTA_TABLE, RT_TABLE_MAIN, 8, RTA_DST, socket.inet_aton(net)]
    if gateway:
        fields += [8, RTA_GATEWAY, socket.inet_aton(gateway)]
    fields += [8, RTA_OIF, oif]
    if priority is not None:
        fields += [8, RTA_PRIORITY, priority]
    return shape.pack(*fields)


def link_dump_msg(seq: int) -> bytes:
    """RTM_GETLINK dump of every interface in the socket's namespace. Pure."""
    return nlmsg(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, _ifinfo())


def parse_links(data: bytes) -> list[tuple[int, int, str]]:
    """[(ifindex, flags, name)] of the RTM_NEWLINK messages in a netlink buffer. Pure."""
    out: list[tuple[int, int, str]] = []
    off = 0
    while off + 32 <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if length < 16:
            break
        if kind == RTM_NEWLINK:
            _, _, index, flags, _ = struct.unpack_from("=BxHiII", data, off + 16)
            name = ""
            a = off + 32
            while a + 4 <= off + length:
                alen, akind = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if akind == IFLA_IFNAME:
                    name = data[a + 4 : a + alen].split(b"\0", 1)[0].decode()
                    break
                a += (alen + 3) & ~3
            out.append((index, flags, name))
        off += (length + 3) & ~3
    return out


def dump_links(sock: socket.socket) -> dict[str, tuple[int, int]]:
    """{name: (ifindex, flags)} of every interface in the namespace of `sock`."""
    sock.sendto(link_dump_msg(SEQ_BASE), (0, 0))
    out: dict[str, tuple[int, int]] = {}
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        if not poller.poll(ACK_TIMEOUT * 1000):
            raise MeshstressError(f"no netlink link dump within {ACK_TIMEOUT:.0f} s")
        data = sock.recv(1 << 20)
        for index, flags, name in parse_links(data):
            out[name] = (index, flags)
        for _seq, err, reason in parse_errors(data):
            if err:
                raise NetlinkRefused("the link dump", err, reason)
        if _has_done(data):
            return out


def _has_done(data: bytes) -> bool:
    off = 0
    while off + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if kind == NLMSG_DONE:
            return True
        if length < 16:
            break
        off += (length + 3) & ~3
    return False


def with_ack(msg: bytes) -> bytes:
    """The same request, asking for an ack (NLM_F_ACK) even when it succeeds. Pure."""
    (flags,) = struct.unpack_from("=H", msg, 6)
    return msg[:6] + struct.pack("=H", flags | NLM_F_ACK) + msg[8:]


def parse_errors(data: bytes) -> list[tuple[int, int, str]]:
    """[(sequence number, errno (0 = done), the kernel's reason or "")] of the
    NLMSG_ERROR messages in a netlink buffer; other messages are skipped. Pure."""
    out: list[tuple[int, int, str]] = []
    off = 0
    while off + 16 <= len(data):
        length, kind, flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            break
        if kind == NLMSG_ERROR and off + 36 <= len(data):
            (err,) = struct.unpack_from("=i", data, off + 16)
            # the request's header follows (NETLINK_CAP_ACK: header only)
            (req_seq,) = struct.unpack_from("=I", data, off + 20 + 8)
            reason = ""
            if flags & 0x200:  # NLM_F_ACK_TLVS
                reason = _ext_ack_msg(data[off + 36 : off + length])
            out.append((req_seq, -err, reason))
        off += (length + 3) & ~3
    return out


def _ext_ack_msg(tlvs: bytes) -> str:
    off = 0
    while off + 4 <= len(tlvs):
        alen, akind = struct.unpack_from("=HH", tlvs, off)
        if alen < 4:
            break
        if akind & 0x3FFF == NLMSGERR_ATTR_MSG:
            return tlvs[off + 4 : off + alen].split(b"\0", 1)[0].decode(errors="replace")
        off += (alen + 3) & ~3
    return ""


def open_socket() -> socket.socket:
    """An rtnetlink socket in the calling thread's network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    try:
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            try:
                sock.setsockopt(SOL_NETLINK, opt, 1)
            except OSError:
                pass  # an older kernel: plain error replies
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


class NetlinkRefused(MeshstressError):
    """The kernel refused a request of a batch: which one, errno, and its reason."""

    def __init__(self, what: str, err: int, reason: str = "") -> None:
        self.what, self.errno, self.reason = what, err, reason
        why = os.strerror(err) + (f" ({reason})" if reason else "")
        super().__init__(f"netlink refused {what}: {why}")


@dataclass
class Batch:
    """Requests for one namespace, sent together: `add` a request made by one of the
    builders above (called with its sequence number) and what it does, in words for an
    error; `send` sends them in order, CHUNK bytes to a sendto, and raises
    NetlinkRefused for the first the kernel refused (the rest of its chunk has been
    handled too, so the caller tears down)."""

    what: list[str] = field(default_factory=list)
    _msgs: list[bytes] = field(default_factory=list)

    def seq(self) -> int:
        """The sequence number of the next request."""
        return SEQ_BASE + len(self._msgs)

    def add(self, msg: bytes, what: str) -> None:
        self._msgs.append(msg)
        self.what.append(what)

    def __len__(self) -> int:
        return len(self._msgs)

    def send(self, sock: socket.socket) -> None:
        msgs, n, start = self._msgs, len(self._msgs), 0
        while start < n:
            end, size = start + 1, len(msgs[start])
            while end < n:
                size += len(msgs[end])
                if size > CHUNK:
                    break
                end += 1
            chunk = msgs[start : end - 1] + [with_ack(msgs[end - 1])]
            sock.sendto(b"".join(chunk), (0, 0))
            self._collect(sock, SEQ_BASE + end - 1)
            start = end

    def _collect(self, sock: socket.socket, last: int) -> None:
        refused: tuple[int, int, str] | None = None
        poller = select.poll()  # not select(): a big mesh has descriptors over 1024
        poller.register(sock, select.POLLIN)
        while True:
            if not poller.poll(ACK_TIMEOUT * 1000):
                raise MeshstressError(f"no netlink ack within {ACK_TIMEOUT:.0f} s")
            try:
                data = sock.recv(1 << 16)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise MeshstressError("netlink replies lost (ENOBUFS)") from None
                raise
            for seq, err, reason in parse_errors(data):
                if err and refused is None:
                    refused = (seq, err, reason)
                if seq == last:
                    if refused is not None:
                        k = refused[0] - SEQ_BASE
                        what = self.what[k] if 0 <= k < len(self.what) else f"request {k}"
                        raise NetlinkRefused(what, refused[1], refused[2])
                    return
