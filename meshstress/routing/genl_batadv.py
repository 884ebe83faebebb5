"""A minimal generic-netlink client for batman-adv, in-process (no batctl per query).

Opened inside a node's namespace (the socket stays bound to it). Encoding and decoding
are pure functions, unit-tested; talking to the kernel needs batman-adv (the VM lab)."""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

from meshstress.build import netns

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_TYPE_MASK = 0x3FFF

# enum batadv_nl_commands / batadv_nl_attrs (include/uapi/linux/batman_adv.h; the
# commands enum has aliases, GET_MESH_INFO = GET_MESH and GET_HARDIFS = GET_HARDIF)
CMD_GET_ORIGINATORS = 8
CMD_GET_NEIGHBORS = 9
CMD_SET_MESH = 15
ATTR = {
    "mesh_ifindex": 3,
    "hard_ifindex": 6,
    "hard_ifname": 7,
    "orig_address": 9,
    "flag_best": 22,
    "last_seen_msecs": 23,
    "neigh_address": 24,
    "tq": 25,
    "throughput": 26,
    "router": 29,
    "aggregated_ogms_enabled": 41,
    "bridge_loop_avoidance_enabled": 46,
    "distributed_arp_table_enabled": 47,
    "hop_penalty": 53,
    "orig_interval": 57,
}
ATTR_NAME = {v: k for k, v in ATTR.items()}
_U8 = {"tq", "aggregated_ogms_enabled", "bridge_loop_avoidance_enabled",
       "distributed_arp_table_enabled", "hop_penalty"}  # fmt: skip
_U32 = {"mesh_ifindex", "hard_ifindex", "last_seen_msecs", "throughput", "orig_interval"}
_MAC = {"orig_address", "neigh_address", "router"}


def nla(attr_type: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, attr_type) + payload + b"\0" * (-length % 4)


def encode_attr(name: str, value: Any) -> bytes:
    code = ATTR[name]
    if name in _U8:
        return nla(code, struct.pack("=B", int(value)))
    if name in _U32:
        return nla(code, struct.pack("=I", int(value)))
    raise ValueError(f"cannot encode {name}")


def genl_message(
    family: int, cmd: int, attrs: bytes, flags: int, seq: int, version: int = 1
) -> bytes:
    body = struct.pack("=BBH", cmd, version, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), family, flags, seq, 0) + body


def parse_attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 4 <= len(data):
        length, attr_type = struct.unpack_from("=HH", data, pos)
        if length < 4:
            break
        out[attr_type & NLA_TYPE_MASK] = data[pos + 4 : pos + length]
        pos += (length + 3) & ~3
    return out


def decode_batadv(attrs: dict[int, bytes]) -> dict[str, Any]:
    """Raw batadv attributes -> {name: value} (MACs as aa:bb:.., flags as True)."""
    out: dict[str, Any] = {}
    for code, raw in attrs.items():
        name = ATTR_NAME.get(code)
        if name is None:
            continue
        if name in _MAC:
            out[name] = ":".join(f"{b:02x}" for b in raw[:6])
        elif name in _U8:
            out[name] = raw[0]
        elif name in _U32:
            out[name] = struct.unpack("=I", raw[:4])[0]
        elif name == "flag_best":
            out[name] = True
        elif name == "hard_ifname":
            out[name] = raw.split(b"\0", 1)[0].decode()
    return out


def split_messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, seq, payload after the nlmsghdr) for each netlink message in a datagram."""
    pos = 0
    while pos + 16 <= len(data):
        length, msg_type, _flags, seq, _pid = struct.unpack_from("=IHHII", data, pos)
        if length < 16:
            break
        yield msg_type, seq, data[pos + 16 : pos + length]
        pos += (length + 3) & ~3


class BatadvNetlink:
    """batman-adv genl socket bound to one namespace (by netns path or fd)."""

    def __init__(self, netns_path: str | None = None) -> None:
        if netns_path is None:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        else:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                netns.setns(target)
                try:
                    self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
                finally:
                    netns.setns(home)
            finally:
                os.close(target)
                os.close(home)
        self.sock.bind((0, 0))
        self.sock.settimeout(10)
        self.seq = 0
        self.family = self._resolve("batadv")

    def close(self) -> None:
        self.sock.close()

    def _request(self, family: int, cmd: int, attrs: bytes, flags: int) -> list[bytes]:
        self.seq += 1
        seq = self.seq
        self.sock.send(genl_message(family, cmd, attrs, flags | NLM_F_REQUEST, seq))
        replies: list[bytes] = []
        while True:
            data = self.sock.recv(1 << 16)
            for msg_type, mseq, payload in split_messages(data):
                if mseq != seq:
                    continue
                if msg_type == NLMSG_DONE:
                    return replies
                if msg_type == NLMSG_ERROR:
                    code = struct.unpack_from("=i", payload)[0]
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return replies  # an ACK
                replies.append(payload[4:])  # strip genlmsghdr
                if not flags & NLM_F_DUMP and not flags & NLM_F_ACK:
                    return replies

    def _resolve(self, name: str) -> int:
        try:
            replies = self._request(
                GENL_ID_CTRL,
                CTRL_CMD_GETFAMILY,
                nla(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"),
                0,
            )
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise OSError(errno.ENOENT, "no batadv generic netlink family") from None
            raise
        attrs = parse_attrs(replies[0])
        return int(struct.unpack("=H", attrs[CTRL_ATTR_FAMILY_ID][:2])[0])

    def dump(self, cmd: int, mesh_ifindex: int) -> list[dict[str, Any]]:
        replies = self._request(
            self.family, cmd, encode_attr("mesh_ifindex", mesh_ifindex), NLM_F_DUMP
        )
        return [decode_batadv(parse_attrs(r)) for r in replies]

    def originators(self, mesh_ifindex: int) -> list[dict[str, Any]]:
        return self.dump(CMD_GET_ORIGINATORS, mesh_ifindex)

    def neighbours(self, mesh_ifindex: int) -> list[dict[str, Any]]:
        return self.dump(CMD_GET_NEIGHBORS, mesh_ifindex)

    def set_mesh(self, mesh_ifindex: int, **values: Any) -> None:
        attrs = encode_attr("mesh_ifindex", mesh_ifindex)
        for name, value in values.items():
            attrs += encode_attr(name, value)
        self._request(self.family, CMD_SET_MESH, attrs, NLM_F_ACK)
