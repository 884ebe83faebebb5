"""Radio-like cuts: every frame of an interface dropped while its carrier stays up.

A radio neighbour that dies, or moves out of range, gives no carrier signal: its frames
are simply lost. Setting a veth end down is not that: the other end loses carrier, its
kernel flushes the ARP entry and holds the packets for the dead node in the unresolved
queue until it answers again (docs/events.md). So an interface that an event may cut
gets, beforehand, a clsact qdisc and one tiny BPF program (SCHED_CLS, direct action) on
its ingress and its egress hook. The program looks up a few slots of one BPF array map
(its node's slot and its link's) and returns TC_ACT_SHOT when any of them is set,
TC_ACT_UNSPEC otherwise (the frame goes on as if nothing were there). A crash is then
one map update (the node's slot), a link out of range one update (the link's slot): a
single bpf(2) call, no interface changes, both ends keep carrier.

Pure: `program` (the bytecode, hand-written eBPF, no compiler), `slot_numbers`,
`clsact_msg` and `filter_msg` (rtnetlink requests as bytes). Side effects: `DropMap`
(bpf(2) through ctypes), `load_program`, `attach`, `available`.

Nothing is pinned: the map lives while this process holds its fd (DropMap.close) or a
program uses it; a program lives while a filter holds it; the filters go with their
interfaces when the namespaces are deleted. So teardown and `meshstress clean` have
nothing of this to remove, and nothing survives the process but what is attached to
live interfaces.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
import struct
from collections.abc import Iterable, Sequence

from meshstress.build import rtnl
from meshstress.errors import MeshstressError

# --- eBPF (uapi linux/bpf.h, linux/bpf_common.h) -------------------------------------

BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_PROG_LOAD = 0, 1, 2, 5
BPF_MAP_TYPE_ARRAY = 2
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_ANY = 0
BPF_PSEUDO_MAP_FD = 1
BPF_FUNC_MAP_LOOKUP_ELEM = 1

# instruction classes, sizes, modes, operations
BPF_LD, BPF_LDX, BPF_ST, BPF_JMP, BPF_ALU64 = 0x00, 0x01, 0x02, 0x05, 0x07
BPF_W, BPF_DW = 0x00, 0x18
BPF_IMM, BPF_MEM = 0x00, 0x60
BPF_K, BPF_X = 0x00, 0x08
BPF_ADD, BPF_MOV = 0x00, 0xB0
BPF_JEQ, BPF_JNE, BPF_CALL, BPF_EXIT = 0x10, 0x50, 0x80, 0x90

# what a direct-action classifier returns (linux/pkt_cls.h)
TC_ACT_UNSPEC, TC_ACT_OK, TC_ACT_SHOT = -1, 0, 2

R0, R1, R2, R10 = 0, 1, 2, 10
INSN = struct.Struct("<BBhi")  # code, dst_reg | src_reg << 4, off, imm
PROG_NAME = b"ms_drop"
MAP_NAME = b"ms_drop"


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One eBPF instruction (8 bytes, little-endian, as x86-64 and arm64 load them)."""
    return INSN.pack(code, dst | (src << 4), off, imm)


def program(map_fd: int, slots: Sequence[int]) -> bytes:
    """The bytecode of the drop filter: for each slot, look it up in the array map
    `map_fd`; any slot whose value is not 0 makes the frame TC_ACT_SHOT; otherwise
    TC_ACT_UNSPEC (the next filter, or the frame goes on). Pure.

        for each slot k:   *(u32 *)(r10 - 4) = k
                           r2 = r10 - 4; r1 = map; r0 = bpf_map_lookup_elem(r1, r2)
                           if r0 == 0 goto next        (never, for a slot in range)
                           r1 = *(u32 *)r0; if r1 != 0 goto drop
        next/end:          r0 = TC_ACT_UNSPEC; exit
        drop:              r0 = TC_ACT_SHOT; exit
    """
    if not slots:
        raise ValueError("a drop program needs at least one slot")
    blocks: list[list[bytes]] = []
    for slot in slots:
        if not 0 <= slot < 2**31:
            raise ValueError(f"slot {slot} out of range")
        blocks.append(
            [
                insn(BPF_ST | BPF_MEM | BPF_W, R10, off=-4, imm=slot),
                insn(BPF_ALU64 | BPF_MOV | BPF_X, R2, R10),
                insn(BPF_ALU64 | BPF_ADD | BPF_K, R2, imm=-4),
                insn(BPF_LD | BPF_DW | BPF_IMM, R1, BPF_PSEUDO_MAP_FD, imm=map_fd),
                insn(0),  # the upper half of the 64-bit immediate
                insn(BPF_JMP | BPF_CALL, imm=BPF_FUNC_MAP_LOOKUP_ELEM),
                insn(BPF_JMP | BPF_JEQ | BPF_K, R0, off=2, imm=0),
                insn(BPF_LDX | BPF_MEM | BPF_W, R1, R0),
                b"",  # the jump to `drop`, filled in below
            ]
        )
    per_block = len(blocks[0])
    drop_at = len(blocks) * per_block + 2  # after the pass exit's two instructions
    out: list[bytes] = []
    for k, block in enumerate(blocks):
        here = k * per_block + per_block - 1  # the index of the jump instruction
        block[-1] = insn(BPF_JMP | BPF_JNE | BPF_K, R1, off=drop_at - here - 1, imm=0)
        out += block
    out += [
        insn(BPF_ALU64 | BPF_MOV | BPF_K, R0, imm=TC_ACT_UNSPEC),
        insn(BPF_JMP | BPF_EXIT),
        insn(BPF_ALU64 | BPF_MOV | BPF_K, R0, imm=TC_ACT_SHOT),
        insn(BPF_JMP | BPF_EXIT),
    ]
    return b"".join(out)


def slot_numbers(
    nodes: Iterable[str], links: Iterable[tuple[str, str]]
) -> tuple[dict[str, int], dict[frozenset[str], int], int]:
    """({node: slot}, {frozenset((a, b)): slot}, map size): slot 0 is never set, nodes
    from 1 in order, then links. Pure."""
    node_slot: dict[str, int] = {}
    for n in nodes:
        node_slot.setdefault(n, len(node_slot) + 1)
    link_slot: dict[frozenset[str], int] = {}
    for a, b in links:
        link_slot.setdefault(frozenset((a, b)), len(node_slot) + len(link_slot) + 1)
    return node_slot, link_slot, len(node_slot) + len(link_slot) + 1


# --- rtnetlink: clsact and the bpf filters (uapi linux/rtnetlink.h, pkt_sched.h) -------

RTM_NEWQDISC = 36
RTM_NEWTFILTER = 44
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS = 6, 7, 8
TCA_BPF_FLAG_ACT_DIRECT = 1
TC_H_CLSACT = 0xFFFFFFF1  # also TC_H_INGRESS
TC_H_MIN_INGRESS, TC_H_MIN_EGRESS = 0xFFF2, 0xFFF3
CLSACT_HANDLE = 0xFFFF0000
INGRESS = (TC_H_CLSACT & 0xFFFF0000) | TC_H_MIN_INGRESS
EGRESS = (TC_H_CLSACT & 0xFFFF0000) | TC_H_MIN_EGRESS
ETH_P_ALL = 0x0003
FILTER_PRIO = 1
FILTER_HANDLE = 1
FILTER_NAME = "meshstress-drop"


def _tcmsg(index: int, handle: int, parent: int, info: int = 0) -> bytes:
    return struct.pack("=BxHiIII", socket.AF_UNSPEC, 0, index, handle, parent, info)


def clsact_msg(index: int, seq: int) -> bytes:
    """RTM_NEWQDISC adding a clsact qdisc to interface `index` (`tc qdisc add dev X
    clsact`); without NLM_F_EXCL, so one that is there already is kept. Pure."""
    body = _tcmsg(index, CLSACT_HANDLE, TC_H_CLSACT) + rtnl.attr(TCA_KIND, b"clsact\0")
    return rtnl.nlmsg(RTM_NEWQDISC, rtnl.NLM_F_REQUEST | rtnl.NLM_F_CREATE, seq, body)


def filter_msg(index: int, parent: int, prog_fd: int, seq: int) -> bytes:
    """RTM_NEWTFILTER putting BPF program `prog_fd` on interface `index`'s clsact hook
    `parent` (INGRESS or EGRESS), direct action, every protocol, priority FILTER_PRIO,
    handle FILTER_HANDLE; a filter there already is replaced (`tc filter replace dev X
    ingress prio 1 handle 1 bpf da fd N`). Pure."""
    info = (FILTER_PRIO << 16) | socket.htons(ETH_P_ALL)
    options = (
        rtnl.attr(TCA_BPF_FD, struct.pack("=I", prog_fd))
        + rtnl.attr(TCA_BPF_NAME, FILTER_NAME.encode() + b"\0")
        + rtnl.attr(TCA_BPF_FLAGS, struct.pack("=I", TCA_BPF_FLAG_ACT_DIRECT))
    )
    body = _tcmsg(index, FILTER_HANDLE, parent, info) + rtnl.attr(TCA_KIND, b"bpf\0")
    body += rtnl.attr(TCA_OPTIONS | rtnl.NLA_F_NESTED, options)
    flags = rtnl.NLM_F_REQUEST | rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE
    return rtnl.nlmsg(RTM_NEWTFILTER, flags, seq, body)


# --- bpf(2) ----------------------------------------------------------------------------

_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
# PyDLL: a map update inside a timed event keeps the GIL (as the event's netlink sends do)
_LIBC = ctypes.PyDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long
LOG_SIZE = 1 << 16


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise MeshstressError(f"bpf(2): no system call number known for {platform.machine()}")
    got = _LIBC.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(got)


def _addr(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)


class DropMap:
    """The BPF array map of drop slots (u32 key, u32 value: 0 passes, 1 drops), held by
    its fd only. `set` is one bpf(2) BPF_MAP_UPDATE_ELEM per slot."""

    def __init__(self, size: int) -> None:
        attr = ctypes.create_string_buffer(48)
        struct.pack_into("=IIIIII", attr, 0, BPF_MAP_TYPE_ARRAY, 4, 4, max(size, 1), 0, 0)
        struct.pack_into("=16s", attr, 28, MAP_NAME)  # after numa_node
        try:
            self.fd = _bpf(BPF_MAP_CREATE, attr)
        except OSError as exc:
            raise MeshstressError(
                f"cannot create the BPF map of radio-like cuts: {os.strerror(exc.errno or 0)}"
                ' (needs root and CONFIG_BPF_SYSCALL; or carrier = "lose")'
            ) from None
        self.size = max(size, 1)
        self._key = ctypes.create_string_buffer(4)
        self._value = ctypes.create_string_buffer(4)
        self._attr = ctypes.create_string_buffer(32)

    def set(self, slots: Iterable[int], on: bool) -> None:
        """Value 1 (drop) or 0 (pass) into each slot."""
        struct.pack_into("=I", self._value, 0, 1 if on else 0)
        for slot in slots:
            struct.pack_into("=I", self._key, 0, slot)
            struct.pack_into(
                "=IxxxxQQQ", self._attr, 0, self.fd, _addr(self._key), _addr(self._value),
                BPF_ANY,
            )  # fmt: skip
            try:
                _bpf(BPF_MAP_UPDATE_ELEM, self._attr)
            except OSError as exc:
                raise MeshstressError(
                    f"cannot set drop slot {slot}: {os.strerror(exc.errno or 0)}"
                ) from None

    def get(self, slot: int) -> bool:
        """Whether `slot` drops (read back from the kernel)."""
        key, value = ctypes.create_string_buffer(4), ctypes.create_string_buffer(4)
        struct.pack_into("=I", key, 0, slot)
        attr = ctypes.create_string_buffer(32)
        struct.pack_into("=IxxxxQQQ", attr, 0, self.fd, _addr(key), _addr(value), 0)
        _bpf(BPF_MAP_LOOKUP_ELEM, attr)
        return struct.unpack("=I", value.raw)[0] != 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def load_program(map_fd: int, slots: Sequence[int]) -> int:
    """Load `program(map_fd, slots)` as a SCHED_CLS program; its fd. MeshstressError with
    the verifier's log when the kernel refuses it."""
    code = program(map_fd, slots)
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(LOG_SIZE)
    for level in (0, 1):  # without a log first; with it only to explain a refusal
        attr = ctypes.create_string_buffer(72)
        struct.pack_into(
            "=IIQQIIQII16s", attr, 0, BPF_PROG_TYPE_SCHED_CLS, len(code) // INSN.size,
            _addr(insns), _addr(license_), level, LOG_SIZE if level else 0,
            _addr(log) if level else 0, 0, 0, PROG_NAME,
        )  # fmt: skip
        try:
            return _bpf(BPF_PROG_LOAD, attr)
        except OSError as exc:
            err = exc.errno or 0
            if level == 0 and err != errno.EPERM:
                continue
            text = log.value.decode(errors="replace").strip().splitlines()
            why = f"; verifier: {text[-1]}" if text else ""
            raise MeshstressError(
                f"cannot load the BPF drop filter: {os.strerror(err)}{why}"
                ' (needs root and CONFIG_BPF_SYSCALL; or carrier = "lose")'
            ) from None
    raise AssertionError("unreachable")


def attach(sock: socket.socket, node: str, targets: Sequence[tuple[str, int, int]]) -> None:
    """For each (ifname, ifindex, prog_fd) in the namespace of `sock`: a clsact qdisc
    and the program on its ingress and egress hook, all in one buffer (rtnl.Batch).
    MeshstressError naming node and interface if the kernel refuses any (no clsact or
    cls_bpf in this kernel: CONFIG_NET_SCH_INGRESS, CONFIG_NET_CLS_BPF)."""
    batch = rtnl.Batch()
    for ifname, index, fd in targets:
        batch.add(clsact_msg(index, batch.seq()), f"{node} {ifname}: clsact qdisc")
        for parent, hook in ((INGRESS, "ingress"), (EGRESS, "egress")):
            batch.add(filter_msg(index, parent, fd, batch.seq()),
                      f"{node} {ifname}: bpf drop filter on {hook}")  # fmt: skip
    if len(batch):
        try:
            batch.send(sock)
        except rtnl.NetlinkRefused as exc:
            raise MeshstressError(
                f"{exc} (radio-like cuts need clsact and cls_bpf: CONFIG_NET_SCH_INGRESS, "
                'CONFIG_NET_CLS_BPF; or carrier = "lose")'
            ) from None


def available() -> tuple[bool, str]:
    """Whether this kernel lets us make the map and load the program (the attach needs
    an interface: meshstress.doctor tries it in a throwaway namespace)."""
    try:
        m = DropMap(2)
    except MeshstressError as exc:
        return False, str(exc)
    try:
        fd = load_program(m.fd, [1])
        os.close(fd)
        return True, "BPF map and SCHED_CLS program load"
    except MeshstressError as exc:
        return False, str(exc)
    finally:
        m.close()
