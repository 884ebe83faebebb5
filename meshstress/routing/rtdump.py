"""A fast IPv4 route and rule dump over raw rtnetlink, for polling hundreds of namespaces.

pyroute2 parses every attribute of every message into Python objects (about 5 s to dump
217 namespaces' tables); this reads only what routes() needs. Parsing is pure."""

from __future__ import annotations

import os
import socket
import struct
from typing import Any, NamedTuple

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
    sock = open_route_socket(netns_path)
    out: list[bytes] = []
    try:
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


# --- repeated dumps: one socket per namespace, opened once ------------------------


# What can change which route a namespace's kernel picks, as rtnetlink multicast groups:
# routes and rules, and links and addresses, because IPv4 drops or disables the routes
# of a link that goes down, or of an address that goes, without a route notification.
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV4_RULE = 0x80
WATCH_GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV4_RULE


def open_route_socket(netns_path: str, groups: int = 0, rcvbuf: int = 1 << 20) -> socket.socket:
    """An rtnetlink socket inside the namespace at `netns_path` (this thread goes there
    and back), bound (to the multicast `groups`, if any), with a receive timeout."""
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
    try:
        sock.settimeout(10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock


_HDR = struct.Struct("=IH")
_TAIL = struct.Struct("=IHHII")
_ROUTE_REQUEST = dump_request(1, RTM_GETROUTE)
_RULE_REQUEST = dump_request(2, RTM_GETRULE)


def _read_dump(sock: socket.socket, seq: int, port: int) -> bytes:
    """The datagrams of one dump (sequence `seq`) up to and including NLMSG_DONE, joined.

    Each recv() returns one datagram; the kernel puts NLMSG_DONE (20 bytes: header and
    an errno) at the end of the last one. So only each datagram's tail is read here, not
    every message header: the dump is over when the tail is a DONE header of our
    sequence and port. A dump error comes as that errno, or as an NLMSG_ERROR reply on
    its own (a bad request): both raise OSError."""
    chunks: list[bytes] = []
    while True:
        data = sock.recv(1 << 18)
        chunks.append(data)
        if len(data) >= 20:
            length, msg_type, _flags, msg_seq, pid = _TAIL.unpack_from(data, len(data) - 20)
            if length == 20 and msg_type == NLMSG_DONE and msg_seq == seq and pid == port:
                code = struct.unpack_from("=i", data, len(data) - 4)[0]
                if code < 0:
                    raise OSError(-code, os.strerror(-code))
                return b"".join(chunks)
        if len(data) >= 20:
            length, msg_type = _HDR.unpack_from(data, 0)
            if msg_type == NLMSG_ERROR and length == len(data):
                code = struct.unpack_from("=i", data, 16)[0]
                if code:
                    raise OSError(-code, os.strerror(-code))
                return b"".join(chunks)


def iter_payloads(raw: bytes, reply: int, seq: int) -> list[bytes]:
    """The payloads of the `reply` messages of sequence `seq` in a joined dump. Pure."""
    out = []
    pos, end = 0, len(raw)
    while pos + 16 <= end:
        length, msg_type, _flags, msg_seq, _pid = struct.unpack_from("=IHHII", raw, pos)
        if length < 16:
            break
        if msg_type == reply and msg_seq == seq:
            out.append(raw[pos + 16 : pos + length])
        pos += (length + 3) & ~3
    return out


class TableDumper:
    """IPv4 route and rule dumps of many namespaces, over one socket per namespace that
    stays open between dumps (no setns, no socket set-up per dump).

        dumper = TableDumper({"n0": "/run/netns/ms-x-n0", ...})
        raw = dumper.dump()   # {key: (route dump bytes, rule dump bytes)}
        dumper.close()        # before the namespaces are torn down: a socket pins its netns

    The bytes are the kernel's replies as received: equal bytes mean equal tables (the
    sequence numbers and port id are fixed per socket). With workers > 1 the dumps run
    in that many threads (the kernel fills the replies in the receiving thread, with
    the GIL released).

    With `watch` (the default) each namespace also has a socket that listens to its
    route, rule, link and address notifications (WATCH_GROUPS); a namespace that sent
    none since its last dump is not dumped again: its previous bytes (the same object)
    are returned. The listener is drained before the dump, so a change made during the
    dump is seen by the next call; a listener that overflowed (ENOBUFS) counts as a
    change. `dumped` says how many namespaces the last call dumped."""

    def __init__(self, paths: dict[str, str], workers: int = 1, watch: bool = True) -> None:
        self.paths = dict(paths)
        self.workers = max(1, workers)
        self.watch = watch
        self._socks: dict[str, tuple[socket.socket, int]] = {}  # key -> (socket, port id)
        self._watchers: dict[str, socket.socket] = {}
        self._raw: dict[str, tuple[bytes, bytes]] = {}  # the last dump of each key
        self._scratch = bytearray(1 << 16)  # notifications are read into it, and dropped
        netns.raise_fd_limit()  # two sockets per namespace: 8192 for a 4096-node mesh
        self._pool: Any = None
        self.dumped = 0  # namespaces dumped by the last dump()

    def _watcher(self, key: str) -> socket.socket:
        got = self._watchers.get(key)
        if got is None:
            # the smallest receive buffer the kernel allows: a few notifications queue,
            # the rest are dropped (ENOBUFS), so a busy namespace is drained in a few
            # system calls; that something happened is all that is read from them
            got = open_route_socket(self.paths[key], WATCH_GROUPS, rcvbuf=1)
            got.setblocking(False)
            self._watchers[key] = got
        return got

    def stale(self, key: str) -> bool:
        """Whether `key` must be dumped: never dumped, not watched, or notified since
        (the notifications are read and dropped here)."""
        if not self.watch or key not in self._raw:
            return True
        sock = self._watchers.get(key)
        if sock is None:
            return True
        notified = False
        scratch = self._scratch
        while True:
            try:
                sock.recv_into(scratch)
                notified = True
            except BlockingIOError:
                return notified
            except OSError:  # ENOBUFS: notifications were dropped
                notified = True

    def _sock(self, key: str) -> tuple[socket.socket, int]:
        got = self._socks.get(key)
        if got is None:
            sock = open_route_socket(self.paths[key])
            got = self._socks[key] = (sock, sock.getsockname()[0])
        return got

    def dump_one(self, key: str) -> tuple[bytes, bytes]:
        if self.watch and key not in self._watchers:
            self._watcher(key)  # listening before the first dump: nothing falls between
        sock, port = self._sock(key)
        try:
            sock.send(_ROUTE_REQUEST)
            routes = _read_dump(sock, 1, port)
            sock.send(_RULE_REQUEST)
            rules = _read_dump(sock, 2, port)
        except BaseException:
            # a dump cut short leaves replies queued: start the next one on a new socket,
            # and dump this namespace again next time, notified or not
            self._socks.pop(key, None)
            self._raw.pop(key, None)
            sock.close()
            raise
        return routes, rules

    def _dump_keys(self, keys: list[str]) -> list[tuple[bytes, bytes]]:
        return [self.dump_one(k) for k in keys]

    def dump(self, keys: list[str] | None = None) -> dict[str, tuple[bytes, bytes]]:
        keys = list(self.paths) if keys is None else keys
        todo = [k for k in keys if self.stale(k)]
        self.dumped = len(todo)
        raw = self._raw
        if self.workers == 1 or len(todo) < 2 * self.workers:
            for k in todo:
                raw[k] = self.dump_one(k)
            return {k: raw[k] for k in keys}
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="meshstress-rtdump")
        # open missing sockets here: setns is per thread, and the pool's threads are ours
        for k in todo:
            if self.watch:
                self._watcher(k)
            self._sock(k)
        chunks = [todo[i :: self.workers] for i in range(self.workers)]
        for chunk, got in zip(chunks, self._pool.map(self._dump_keys, chunks), strict=True):
            raw.update(zip(chunk, got, strict=True))
        return {k: raw[k] for k in keys}

    def close(self) -> None:
        for sock, _port in self._socks.values():
            sock.close()
        self._socks.clear()
        for sock in self._watchers.values():
            sock.close()
        self._watchers.clear()
        self._raw.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> TableDumper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
