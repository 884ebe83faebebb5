"""A fast IPv4 route and rule dump over raw rtnetlink, for polling hundreds of namespaces.

pyroute2 parses every attribute of every message into Python objects (about 5 s to dump
217 namespaces' tables); this reads only what routes() needs. Parsing is pure."""

from __future__ import annotations

import os
import socket
import struct
from typing import NamedTuple

from meshstress.build import netns
from meshstress.routing.genl_batadv import NLMSG_DONE, NLMSG_ERROR, parse_attrs, split_messages

NETLINK_ROUTE = 0
RTM_NEWROUTE = 24
RTM_GETROUTE = 26
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 9, 15
RTM_NEWRULE = 32
RTM_GETRULE = 34
FRA_DST, FRA_SRC, FRA_IIFNAME, FRA_PRIORITY, FRA_FWMARK, FRA_TABLE, FRA_OIFNAME = (
    1,
    2,
    3,
    6,
    10,
    15,
    17,
)
FR_ACT_TO_TBL = 1
# The kernel's rules when nobody added any: local, main, default.
DEFAULT_RULES_TABLES = ((0, 255), (32766, 254), (32767, 253))


class KRoute(NamedTuple):
    dst: str | None
    dst_len: int
    table: int
    proto: int
    type: int
    gateway: str | None
    oif: int | None
    priority: int


def parse_route(payload: bytes) -> KRoute:
    """An RTM_NEWROUTE payload (struct rtmsg + attributes) -> KRoute. Pure."""
    _family, dst_len, _src_len, _tos, table, proto, _scope, rtype, _flags = struct.unpack_from(
        "=BBBBBBBBI", payload
    )
    attrs = parse_attrs(payload[12:])
    dst = socket.inet_ntoa(attrs[RTA_DST][:4]) if RTA_DST in attrs else None
    gateway = socket.inet_ntoa(attrs[RTA_GATEWAY][:4]) if RTA_GATEWAY in attrs else None
    oif = struct.unpack("=I", attrs[RTA_OIF][:4])[0] if RTA_OIF in attrs else None
    if gateway is None and RTA_MULTIPATH in attrs:
        # struct rtnexthop (len u16, flags u8, hops u8, ifindex i32) + attributes
        nh = attrs[RTA_MULTIPATH]
        if len(nh) >= 8:
            nh_len, _f, _h, ifindex = struct.unpack_from("=HBBi", nh)
            sub = parse_attrs(nh[8:nh_len])
            if RTA_GATEWAY in sub:
                gateway = socket.inet_ntoa(sub[RTA_GATEWAY][:4])
            oif = oif or ifindex
    if RTA_TABLE in attrs:
        table = struct.unpack("=I", attrs[RTA_TABLE][:4])[0]
    priority = struct.unpack("=I", attrs[RTA_PRIORITY][:4])[0] if RTA_PRIORITY in attrs else 0
    return KRoute(dst, dst_len, table, proto, rtype, gateway, oif, priority)


class KRule(NamedTuple):
    """An IPv4 policy rule that looks up a table (action FR_ACT_TO_TBL), or another action."""

    priority: int
    table: int
    action: int
    dst: str | None
    dst_len: int
    selective: bool  # has a source, interface or fwmark selector: not every packet matches


def parse_rule(payload: bytes) -> KRule:
    """An RTM_NEWRULE payload (struct fib_rule_hdr + attributes) -> KRule. Pure."""
    _family, dst_len, src_len, _tos, table, _r1, _r2, action, _flags = struct.unpack_from(
        "=BBBBBBBBI", payload
    )
    attrs = parse_attrs(payload[12:])
    if FRA_TABLE in attrs:
        table = struct.unpack("=I", attrs[FRA_TABLE][:4])[0]
    priority = struct.unpack("=I", attrs[FRA_PRIORITY][:4])[0] if FRA_PRIORITY in attrs else 0
    dst = socket.inet_ntoa(attrs[FRA_DST][:4]) if FRA_DST in attrs else None
    selective = bool(src_len) or any(
        k in attrs for k in (FRA_SRC, FRA_IIFNAME, FRA_OIFNAME, FRA_FWMARK)
    )
    return KRule(priority, table, action, dst, dst_len if dst else 0, selective)


def dump_request(seq: int, msg_type: int = RTM_GETROUTE) -> bytes:
    rtmsg = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
    return (
        struct.pack("=IHHII", 16 + len(rtmsg), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + rtmsg
    )


def ipv4_routes(netns_path: str) -> list[KRoute]:
    """Every IPv4 route in every table of the namespace at `netns_path`."""
    return [parse_route(p) for p in _dump(netns_path, RTM_GETROUTE, RTM_NEWROUTE)]


def ipv4_rules(netns_path: str) -> list[KRule]:
    """The namespace's IPv4 policy rules, in the kernel's order (by priority)."""
    rules = [parse_rule(p) for p in _dump(netns_path, RTM_GETRULE, RTM_NEWRULE)]
    return sorted(rules, key=lambda r: r.priority)


def _dump(netns_path: str, request: int, reply: int) -> list[bytes]:
    """The payloads of one rtnetlink dump in the namespace at `netns_path`."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        netns.setns(target)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        finally:
            netns.setns(home)
    finally:
        os.close(target)
        os.close(home)
    out: list[bytes] = []
    try:
        sock.settimeout(10)
        sock.bind((0, 0))
        sock.send(dump_request(1, request))
        while True:
            data = sock.recv(1 << 18)
            for msg_type, seq, payload in split_messages(data):
                if seq != 1:
                    continue
                if msg_type == NLMSG_DONE:
                    return out
                if msg_type == NLMSG_ERROR:
                    code = struct.unpack_from("=i", payload)[0]
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return out
                if msg_type == reply:
                    out.append(payload)
    finally:
        sock.close()
