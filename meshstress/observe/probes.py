"""eBPF probes (BCC): per node and interface packets/bytes, drops by reason, TCP
retransmissions and batman-adv overhead, attributed by network namespace.

    from meshstress.observe.probes import Probes, delta
    probes = Probes()              # compiles and attaches once (about 70 s in the VM lab)
    probes.watch(mesh)             # the mesh's namespaces and interfaces
    before = probes.snapshot()
    ...                            # traffic, events
    d = delta(before, probes.snapshot())
    d["nodes"]["n0"]["interfaces"]["ms-RUN-i0"]["tx_packets"]
    probes.close()

The C lives in meshstress/bpf/ (common.h, netdev.c, drops.c, tcp_retrans.c); the selected files
are compiled as one BPF program. Each hook is a tracepoint when the kernel has it,
else a kprobe (with a warning), else CapabilityError. See docs/probes.md.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import struct
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshstress.errors import CapabilityError, MeshstressError
from meshstress.packets import classify

if TYPE_CHECKING:
    from meshstress.build import Mesh

PROBES = ("traffic", "drops", "tcp_retrans", "batman")

PROBES_DIR = Path(os.environ.get("MESHSTRESS_PROBES_DIR", Path(__file__).parent.parent / "bpf"))
TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
BTF_VMLINUX = "/sys/kernel/btf/vmlinux"

IF_COUNTERS = (
    "tx_packets",
    "tx_bytes",
    "rx_packets",
    "rx_bytes",
    "batman_tx_packets",
    "batman_tx_bytes",
    "batman_rx_packets",
    "batman_rx_bytes",
)
BATMAN_TYPE_COUNTERS = ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes")

# batman-adv packet_type -> name (include/uapi/linux/batadv_packet.h): the same table
# the capture classifier uses (meshstress.packets.classify)
BATMAN_TYPES = classify.BATMAN_TYPES

# enum skb_drop_reason of Debian 12's 6.1 kernel (6.1.0-56, from its skb:kfree_skb
# format file); used only when neither the format file nor BTF can be read.
FALLBACK_REASONS: dict[int, str] = dict(
    enumerate(
        (
            "NOT_DROPPED_YET NOT_SPECIFIED NO_SOCKET PKT_TOO_SMALL TCP_CSUM SOCKET_FILTER "
            "UDP_CSUM NETFILTER_DROP OTHERHOST IP_CSUM IP_INHDR IP_RPFILTER "
            "UNICAST_IN_L2_MULTICAST XFRM_POLICY IP_NOPROTO SOCKET_RCVBUFF PROTO_MEM "
            "TCP_MD5NOTFOUND TCP_MD5UNEXPECTED TCP_MD5FAILURE SOCKET_BACKLOG TCP_FLAGS "
            "TCP_ZEROWINDOW TCP_OLD_DATA TCP_OVERWINDOW TCP_OFOMERGE TCP_RFC7323_PAWS "
            "TCP_INVALID_SEQUENCE TCP_RESET TCP_INVALID_SYN TCP_CLOSE TCP_FASTOPEN "
            "TCP_OLD_ACK TCP_TOO_OLD_ACK TCP_ACK_UNSENT_DATA TCP_OFO_QUEUE_PRUNE TCP_OFO_DROP "
            "IP_OUTNOROUTES BPF_CGROUP_EGRESS IPV6DISABLED NEIGH_CREATEFAIL NEIGH_FAILED "
            "NEIGH_QUEUEFULL NEIGH_DEAD TC_EGRESS QDISC_DROP CPU_BACKLOG XDP TC_INGRESS "
            "UNHANDLED_PROTO SKB_CSUM SKB_GSO_SEG SKB_UCOPY_FAULT DEV_HDR DEV_READY FULL_RING "
            "NOMEM HDR_TRUNC TAP_FILTER TAP_TXFILTER ICMP_CSUM INVALID_PROTO IP_INADDRERRORS "
            "IP_INNOROUTES PKT_TOO_BIG TC_CHAIN_NOTFOUND MAX"
        ).split()
    )
)
# reasons that are not drops (a freed-but-consumed skb on kernels that report it)
NOT_DROPS = frozenset({"NOT_DROPPED_YET", "CONSUMED"})


@dataclass(frozen=True)
class Hook:
    """One attachment point: the C macro prefix that selects the kprobe variant
    (-D{macro}_KPROBE), the tracepoint tried first, the kprobe functions tried after."""

    macro: str
    tracepoint: tuple[str, str]
    kprobes: tuple[str, ...]
    fn: str  # the C function of the kprobe variant


TX = Hook("TX", ("net", "net_dev_start_xmit"), ("dev_hard_start_xmit",), "tx_kprobe")
RX = Hook(
    "RX",
    ("net", "netif_receive_skb"),
    ("__netif_receive_skb_core", "__netif_receive_skb_core.constprop.0"),
    "rx_kprobe",
)
DROP = Hook("DROP", ("skb", "kfree_skb"), ("kfree_skb_reason",), "drop_kprobe")
RETRANS = Hook("RETRANS", ("tcp", "tcp_retransmit_skb"), ("tcp_retransmit_skb",), "retrans_kprobe")
SYNACK = Hook("SYNACK", ("tcp", "tcp_retransmit_synack"), ("tcp_rtx_synack",), "synack_kprobe")
HOOKS = (TX, RX, DROP, RETRANS, SYNACK)

FILES: dict[str, tuple[str, tuple[Hook, ...]]] = {
    "traffic": ("netdev.c", (TX, RX)),
    "batman": ("netdev.c", (TX, RX)),
    "drops": ("drops.c", (DROP,)),
    "tcp_retrans": ("tcp_retrans.c", (RETRANS, SYNACK)),
}


# ---------------------------------------------------------------- pure helpers


def check_which(which: Sequence[str]) -> tuple[str, ...]:
    if isinstance(which, str):
        which = (which,)
    unknown = [w for w in which if w not in PROBES]
    if unknown:
        raise MeshstressError(f"unknown probe(s) {', '.join(unknown)}; choose from {PROBES}")
    if not which:
        raise MeshstressError(f"no probes selected; choose from {PROBES}")
    return tuple(dict.fromkeys(which))


def plan_hooks(
    which: Sequence[str],
    tracepoint_exists: Callable[[str, str], bool],
    kprobe_exists: Callable[[str], bool],
) -> tuple[dict[str, str | None], list[str]]:
    """Choose each hook's attachment: {macro: None (tracepoint) or kprobe function},
    plus warnings for the fallbacks. CapabilityError when a hook has neither. Pure."""
    chosen: dict[str, str | None] = {}
    notes: list[str] = []
    for name in which:
        for hook in FILES[name][1]:
            if hook.macro in chosen:
                continue
            if tracepoint_exists(*hook.tracepoint):
                chosen[hook.macro] = None
                continue
            fn = next((f for f in hook.kprobes if kprobe_exists(f)), None)
            tp = ":".join(hook.tracepoint)
            if fn is None:
                raise CapabilityError(
                    f"probe {name}: no tracepoint {tp} and no kprobe on "
                    f"{' or '.join(hook.kprobes)} in this kernel; run it in the VM lab "
                    "(meshstress lab run -- ...) or on a kernel with CONFIG_KPROBES"
                )
            chosen[hook.macro] = fn
            notes.append(f"probe {name}: no tracepoint {tp}, falling back to a kprobe on {fn}")
    return chosen, notes


def build_source(
    which: Sequence[str], chosen: Mapping[str, str | None], drop_reason: bool = True
) -> tuple[str, list[str]]:
    """The one BPF program for `which`: common.h then each needed file once, and the
    cflags selecting probes and kprobe variants. Pure but for reading the files."""
    files = list(dict.fromkeys(FILES[w][0] for w in which))
    text = "\n".join((PROBES_DIR / f).read_text() for f in ["common.h", *files])
    cflags = [f"-DPROBE_{w.upper()}" for w in which]
    cflags += [f"-D{macro}_KPROBE" for macro, fn in chosen.items() if fn is not None]
    if "drops" in which and not drop_reason:
        cflags.append("-DDROP_NO_REASON")
    return text, cflags


_SYMBOLIC = re.compile(r"__print_symbolic\(REC->reason,(.*?)\)\s*$", re.S | re.M)
_PAIR = re.compile(r"\{\s*(-?\d+)\s*,\s*\"([^\"]*)\"\s*\}")


def parse_reasons_format(text: str) -> dict[int, str]:
    """skb:kfree_skb's format file -> {reason number: name}, from the print fmt's
    __print_symbolic(REC->reason, { 2, "NO_SOCKET" }, ...). {} if absent. Pure."""
    m = _SYMBOLIC.search(text)
    if not m:
        return {}
    return {int(num): name for num, name in _PAIR.findall(m.group(1))}


def format_has_field(text: str, field: str) -> bool:
    return re.search(rf"field:[^;]*\b{re.escape(field)};", text) is not None


_BTF_KIND_ENUM = 6
_BTF_KIND_ENUM64 = 19
# bytes after the 12-byte struct btf_type, by kind: (fixed, per vlen item)
_BTF_EXTRA = {
    1: (4, 0),  # INT
    2: (0, 0),  # PTR
    3: (12, 0),  # ARRAY
    4: (0, 12),  # STRUCT
    5: (0, 12),  # UNION
    6: (0, 8),  # ENUM
    7: (0, 0),  # FWD
    8: (0, 0),  # TYPEDEF
    9: (0, 0),  # VOLATILE
    10: (0, 0),  # CONST
    11: (0, 0),  # RESTRICT
    12: (0, 0),  # FUNC
    13: (0, 8),  # FUNC_PROTO
    14: (4, 0),  # VAR
    15: (0, 12),  # DATASEC
    16: (0, 0),  # FLOAT
    17: (4, 0),  # DECL_TAG
    18: (0, 0),  # TYPE_TAG
    19: (0, 12),  # ENUM64
}


def parse_btf_enum(data: bytes, enum_name: str, strip: Sequence[str] = ()) -> dict[int, str]:
    """Values of `enum enum_name` in raw BTF (/sys/kernel/btf/vmlinux), names with the
    first matching prefix in `strip` removed. {} if not found or not BTF. Pure."""
    if len(data) < 24:
        return {}
    if struct.unpack_from("<H", data, 0)[0] == 0xEB9F:
        order = "<"
    elif struct.unpack_from(">H", data, 0)[0] == 0xEB9F:
        order = ">"
    else:
        return {}
    hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(order + "5I", data, 4)
    types = data[hdr_len + type_off : hdr_len + type_off + type_len]
    strings = data[hdr_len + str_off : hdr_len + str_off + str_len]

    def name(off: int) -> str:
        return strings[off : strings.find(b"\0", off)].decode(errors="replace")

    pos = 0
    while pos + 12 <= len(types):
        name_off, info, _size = struct.unpack_from(order + "3I", types, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        pos += 12
        if kind not in _BTF_EXTRA:
            return {}  # a kind we do not know: stop rather than misparse
        fixed, item = _BTF_EXTRA[kind]
        if kind in (_BTF_KIND_ENUM, _BTF_KIND_ENUM64) and name(name_off) == enum_name:
            out: dict[int, str] = {}
            for i in range(vlen):
                if kind == _BTF_KIND_ENUM:
                    n_off, val = struct.unpack_from(order + "Ii", types, pos + i * item)
                else:
                    n_off, lo, hi = struct.unpack_from(order + "3I", types, pos + i * item)
                    val = lo | (hi << 32)
                label = name(n_off)
                for prefix in strip:
                    if label.startswith(prefix):
                        label = label[len(prefix) :]
                        break
                out[val] = label
            return out
        pos += fixed + item * vlen
    return {}


def reason_table(
    format_text: str | None = None, btf: bytes | None = None
) -> tuple[dict[int, str], str]:
    """{reason number: name} and where it came from: the tracepoint's format file,
    else BTF's enum skb_drop_reason, else the 6.1 fallback table. Pure."""
    if format_text:
        table = parse_reasons_format(format_text)
        if table:
            return table, "tracepoint format"
    if btf:
        table = parse_btf_enum(btf, "skb_drop_reason", ("SKB_DROP_REASON_", "SKB_"))
        if table:
            return table, "BTF"
    return dict(FALLBACK_REASONS), "fallback table"


def reason_name(table: Mapping[int, str], number: int) -> str:
    return table.get(number, f"REASON_{number}")


def batman_type_name(ptype: int) -> str:
    return BATMAN_TYPES.get(ptype, f"type_0x{ptype:02x}")


def empty_interface() -> dict[str, int]:
    return dict.fromkeys(IF_COUNTERS, 0)


def empty_node() -> dict[str, Any]:
    return {"interfaces": {}, "drops": {}, "tcp_retransmits": 0}


def fold(
    names: Mapping[tuple[int, int], tuple[str, str]],
    node_of_ns: Mapping[int, str],
    traffic: Iterable[tuple[tuple[int, int], Sequence[int]]] = (),
    batman: Iterable[tuple[tuple[int, int, int, int], tuple[int, int]]] = (),
    drops: Iterable[tuple[tuple[int, int], int]] = (),
    retrans: Iterable[tuple[int, int]] = (),
    reasons: Mapping[int, str] | None = None,
    t: float = 0.0,
) -> dict[str, Any]:
    """Map raw BPF map entries to the snapshot shape. Pure.

    names: (netns inode, ifindex) -> (node, ifname); node_of_ns: netns inode -> node.
    traffic: ((ns, ifindex), (tx_packets, tx_bytes, rx_packets, rx_bytes));
    batman: ((ns, ifindex, packet type, rx), (packets, bytes)); drops: ((ns, reason), n);
    retrans: (ns, n). Entries of unknown namespaces are ignored; an unknown ifindex in
    a known namespace shows as "if<index>". Several keys naming the same interface
    (recreated with a new index) are summed."""
    reasons = FALLBACK_REASONS if reasons is None else reasons
    nodes: dict[str, dict[str, Any]] = {n: empty_node() for n in node_of_ns.values()}
    for (ns, _idx), (node, ifname) in names.items():
        if ns in node_of_ns:
            nodes[node]["interfaces"].setdefault(ifname, empty_interface())

    def iface(ns: int, idx: int) -> dict[str, Any] | None:
        owner = node_of_ns.get(ns)
        if owner is None:
            return None
        ifname = names.get((ns, idx), (owner, f"if{idx}"))[1]
        found: dict[str, Any] = nodes[owner]["interfaces"].setdefault(ifname, empty_interface())
        return found

    for (ns, idx), values in traffic:
        entry = iface(ns, idx)
        if entry is not None:
            for key, value in zip(IF_COUNTERS[:4], values, strict=True):
                entry[key] += int(value)
    for (ns, idx, ptype, rx), (packets, nbytes) in batman:
        entry = iface(ns, idx)
        if entry is None:
            continue
        way = "rx" if rx else "tx"
        entry[f"batman_{way}_packets"] += int(packets)
        entry[f"batman_{way}_bytes"] += int(nbytes)
        per = entry.setdefault("batman_types", {}).setdefault(
            batman_type_name(ptype), dict.fromkeys(BATMAN_TYPE_COUNTERS, 0)
        )
        per[f"{way}_packets"] += int(packets)
        per[f"{way}_bytes"] += int(nbytes)
    for (ns, reason), count in drops:
        dropper = node_of_ns.get(ns)
        name = reason_name(reasons, reason)
        if dropper is None or name in NOT_DROPS:
            continue
        bucket = nodes[dropper]["drops"]
        bucket[name] = bucket.get(name, 0) + int(count)
    for ns, count in retrans:
        sender = node_of_ns.get(ns)
        if sender is not None:
            nodes[sender]["tcp_retransmits"] += int(count)
    return {"nodes": nodes, "t": t}


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Counter differences after - before, in the shape of `after`. Pure.

    Keys missing from `before` count from 0; a counter that went down (the probes were
    reset, e.g. by watching another mesh) yields its `after` value. "t" stays `after`'s
    time; "dt" is the seconds between the snapshots."""

    def diff(b: Any, a: Any) -> Any:
        if isinstance(a, dict):
            b = b if isinstance(b, dict) else {}
            return {k: diff(b.get(k), v) for k, v in a.items()}
        if isinstance(a, bool) or not isinstance(a, int | float):
            return a
        if not isinstance(b, int | float) or isinstance(b, bool) or a < b:
            return a
        return a - b

    out = {k: diff(before.get(k), v) for k, v in after.items() if k not in ("t", "dt")}
    if "t" in after:
        out["t"] = after["t"]
        if isinstance(before.get("t"), int | float):
            out["dt"] = after["t"] - before["t"]
    return out


# ---------------------------------------------------------------- environment


def _tracefs() -> str | None:
    for path in TRACEFS:
        if os.path.isdir(f"{path}/events"):
            return path
    return None


def headers_path() -> str | None:
    release = platform.release()
    for path in (f"/lib/modules/{release}/build", "/sys/kernel/kheaders.tar.xz"):
        if os.path.exists(path):
            return path
    return None


def missing() -> str | None:
    """Why probes cannot run here (one sentence with its remedy), or None."""
    lab = "or run inside the VM lab (meshstress lab run -- ...)"
    if os.geteuid() != 0:
        return "eBPF probes need root: run with sudo"
    try:
        import bcc  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure is the answer
        return (
            f"BCC is not importable ({exc}): apt-get install python3-bpfcc and use a venv "
            f"made with --system-site-packages, {lab}"
        )
    if headers_path() is None:
        return (
            f"no kernel headers for {platform.release()}: "
            f"apt-get install linux-headers-{platform.release()}, {lab}"
        )
    if _tracefs() is None:
        return "tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing"
    return None


def _read(path: str) -> str | None:
    with contextlib.suppress(OSError):
        return Path(path).read_text()
    return None


def kernel_reason_table() -> tuple[dict[int, str], str]:
    tracefs = _tracefs()
    fmt = _read(f"{tracefs}/events/skb/kfree_skb/format") if tracefs else None
    btf = None
    if not (fmt and parse_reasons_format(fmt)):
        with contextlib.suppress(OSError):
            btf = Path(BTF_VMLINUX).read_bytes()
    return reason_table(fmt, btf)


# ---------------------------------------------------------------- the probes


class Probes:
    """Compiled and attached BCC programs; counters read per node and interface.

    watch() learns one mesh at a time: watching a mesh of another run forgets the
    previous one and zeroes the counters (namespace inodes can be reused)."""

    def __init__(self, which: Sequence[str] = PROBES) -> None:
        self.which = check_which(which)
        why = missing()
        if why:
            raise CapabilityError(why)
        from bcc import BPF  # lazily: 2-3 s, and absent on many hosts

        def kprobe_exists(fn: str) -> bool:
            return bool(BPF.get_kprobe_functions(f"^{re.escape(fn)}$".encode()))

        def tracepoint_exists(category: str, event: str) -> bool:
            if os.environ.get("MESHSTRESS_PROBES_KPROBES", "") not in ("", "0"):
                return False  # testing the fallback: pretend there are no tracepoints
            return bool(BPF.tracepoint_exists(category, event))

        chosen, notes = plan_hooks(self.which, tracepoint_exists, kprobe_exists)
        for note in notes:
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        self.hooks = {
            h.macro: (
                f"kprobe:{chosen[h.macro]}"
                if chosen[h.macro]
                else "tracepoint:" + ":".join(h.tracepoint)
            )
            for w in self.which
            for h in FILES[w][1]
        }
        tracefs = _tracefs()
        fmt = _read(f"{tracefs}/events/skb/kfree_skb/format") if tracefs else ""
        drop_reason = chosen.get("DROP") is not None or format_has_field(fmt or "", "reason")
        self.reasons, self.reasons_source = kernel_reason_table()
        text, cflags = build_source(self.which, chosen, drop_reason)
        t0 = time.monotonic()
        try:
            self._bpf: Any = BPF(text=text.encode(), cflags=cflags)
        except Exception as exc:
            raise CapabilityError(f"BCC could not compile/load the probes: {exc}") from exc
        self.compile_seconds = time.monotonic() - t0
        # tracepoints attach as the program loads (TRACEPOINT_PROBE); kprobes here
        t1 = time.monotonic()
        try:
            for macro, fn in chosen.items():
                if fn is not None:
                    hook = next(h for h in HOOKS if h.macro == macro)
                    self._bpf.attach_kprobe(event=fn, fn_name=hook.fn)
        except Exception as exc:
            self.close()
            raise CapabilityError(f"could not attach a kprobe: {exc}") from exc
        self.attach_seconds = time.monotonic() - t1
        self._run: str | None = None
        self._mesh: Mesh | None = None
        self._names: dict[tuple[int, int], tuple[str, str]] = {}
        self._node_of_ns: dict[int, str] = {}

    def watch(self, mesh: Mesh) -> None:
        """(Re)learn the mesh's namespaces and interfaces; call again after events that
        add interfaces (bat0) or namespaces."""
        import ctypes

        if self._bpf is None:
            raise MeshstressError("probes are closed")
        if self._run is not None and self._run != mesh.state.run_id:
            self._reset()
        self._run = mesh.state.run_id
        self._mesh = mesh
        watched = self._bpf[b"watched_ns"]
        for node in mesh.nodes:
            self._learn(mesh, node)
        for inum in self._node_of_ns:
            watched[ctypes.c_uint32(inum)] = ctypes.c_uint8(1)

    def _learn(self, mesh: Mesh, node: str) -> None:
        from meshstress.build import netns

        inum = os.stat(netns.path(mesh.ns(node))).st_ino
        self._node_of_ns[inum] = node
        for link in mesh.netlink(node).get_links():
            self._names[(inum, link["index"])] = (node, link.get_attr("IFLA_IFNAME"))

    def _reset(self) -> None:
        for table in ("watched_ns", "traffic", "batman", "drops", "retrans"):
            with contextlib.suppress(KeyError):
                self._bpf[table.encode()].clear()
        self._names.clear()
        self._node_of_ns.clear()

    def _items(self, table: str) -> list[tuple[Any, Any]]:
        try:
            return list(self._bpf[table.encode()].items())
        except KeyError:
            return []

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready cumulative counters of the watched mesh (see the module doc)."""
        if self._bpf is None:
            raise MeshstressError("probes are closed")
        t = time.monotonic()
        traffic = [
            ((k.netns, k.ifindex), (v.tx_packets, v.tx_bytes, v.rx_packets, v.rx_bytes))
            for k, v in self._items("traffic")
        ]
        batman = [
            ((k.netns, k.ifindex, k.ptype, k.rx), (v.packets, v.bytes))
            for k, v in self._items("batman")
        ]
        unknown = {
            key[:2]
            for key, _ in [*traffic, *batman]
            if key[0] in self._node_of_ns and key[:2] not in self._names
        }
        if unknown and self._mesh is not None:
            for node in {self._node_of_ns[ns] for ns, _ in unknown}:
                with contextlib.suppress(Exception):  # the namespace may be gone
                    self._learn(self._mesh, node)
        drops = [((k.netns, k.reason), v.value) for k, v in self._items("drops")]
        retrans = [(k.value, v.value) for k, v in self._items("retrans")]
        return fold(
            self._names,
            self._node_of_ns,
            traffic,
            batman,
            drops,
            retrans,
            self.reasons,
            t,
        )

    def close(self) -> None:
        """Detach everything; idempotent."""
        bpf = getattr(self, "_bpf", None)
        self._bpf = None
        self._mesh = None
        if bpf is not None:
            bpf.cleanup()

    def __enter__(self) -> Probes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
