"""Packet capture inside node namespaces: AF_PACKET, a snap length, a ring per file.

    targets = parse_targets(["n0", "n1:i0"], source, topo, "scenario.capture")  # pure
    caps = Captures(mesh, targets, CaptureOptions(snaplen=256, limit=10 << 20))
    caps.start()        # one socket per interface, opened inside the node's namespace
    ...                 # traffic, events
    caps.set_windows([(start, end), ...])   # optional: keep only these (wall-clock) spans
    info = caps.stop_and_write(run_dir / "capture")   # capture/NODE-IFACE.pcap, counts

A target is NODE (every mesh interface of the node: its veths, which are batman-adv's
hard interfaces) or NODE:IFACE, IFACE being the short interface name ("i0", "i1": the
planned name without the run prefix), the neighbour node or segment the interface leads
to, or "bat0" (batman-adv's soft interface: the payload as the node sees it).

Each file is classic pcap (LINKTYPE_ETHERNET, microsecond timestamps from the kernel's
SO_TIMESTAMPNS) that tcpdump, Wireshark and scapy's rdpcap read. The socket is bound to
its interface with protocol ETH_P_ALL, so it sees both directions at the point where
`tcpdump -i` does (transmit: after the qdisc, at the driver; receive: before any
protocol handler). Frames are cut to the snap length (the pcap record keeps the
original length). A file holds at most `limit` bytes: the ring drops the oldest records
to keep the newest, and counts them (`dropped_old`). Packet sockets are the only
kernel objects, and they die with the run's process.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshstress.errors import InputError

ETH_P_ALL = 0x0003
LINKTYPE_ETHERNET = 1
PCAP_MAGIC = 0xA1B2C3D4  # microsecond resolution, native byte order
PCAP_HEADER = 24
RECORD_HEADER = 16
SO_TIMESTAMPNS = 35
SOL_PACKET = 263
PACKET_STATISTICS = 6
DEFAULT_SNAPLEN = 256
DEFAULT_LIMIT = 10 * 1024 * 1024
MIN_SNAPLEN = 64
MAX_SNAPLEN = 65535
SOFT_IFACES = ("bat0",)


@dataclass(frozen=True)
class Target:
    node: str
    iface: str | None = None  # None: every mesh interface of the node

    def __str__(self) -> str:
        return self.node if self.iface is None else f"{self.node}:{self.iface}"


@dataclass
class CaptureOptions:
    targets: list[Target] = field(default_factory=list)
    snaplen: int = DEFAULT_SNAPLEN
    limit: int = DEFAULT_LIMIT  # bytes per file, pcap headers included
    window: float | None = None  # seconds kept before and after each event


# ---------------------------------------------------------------- pure: names


def short_name(ifname: str, prefix: str) -> str:
    return ifname[len(prefix) :] if ifname.startswith(prefix) else ifname


def iface_aliases(node: str, interfaces: list[dict[str, Any]], prefix: str) -> dict[str, str]:
    """Every name a user may give for one of a node's mesh interfaces -> its short name.
    `interfaces`: the state's (or plan's) {"ifname", "peer", "segment"} entries."""
    out: dict[str, str] = {}
    for i in interfaces:
        short = short_name(i["ifname"], prefix)
        out[short] = short
        out[i["ifname"]] = short
        for other in (i.get("peer"), i.get("segment")):
            if other and not str(other).startswith("~"):
                out.setdefault(str(other), short)
    return out


def plan_interfaces(topo: Any) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """Each node's mesh interfaces as a run would have them (any run id: the short
    names do not depend on it), and the prefix. Pure."""
    from meshstress.build.plan import make_plan

    plan = make_plan(topo, "x", l3=False, impair=False)
    out = {
        node: [
            {"ifname": i.ifname, "peer": i.peer_node, "segment": i.segment}
            for i in plan.interfaces(node)
        ]
        for node in plan.node_ns
    }
    return out, plan.prefix


def parse_target(value: Any, source: str, fld: str, topo: Any) -> Target:
    """'NODE' or 'NODE:IFACE', checked against the topology; an InputError names fld."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(source, fld, f"expected 'NODE' or 'NODE:IFACE', got {value!r}")
    node, _, iface = value.strip().partition(":")
    nodes = [n.name for n in topo.nodes]
    if node not in nodes:
        raise InputError(source, fld, f"no node {node!r} in the mesh")
    if not iface:
        return Target(node)
    interfaces, prefix = plan_interfaces(topo)
    aliases = iface_aliases(node, interfaces[node], prefix)
    if iface in SOFT_IFACES and topo.routing == "batman-adv":
        return Target(node, iface)
    if iface not in aliases:
        known = sorted(
            {*aliases.values()} | (set(SOFT_IFACES) if topo.routing == "batman-adv" else set())
        )
        raise InputError(
            source,
            fld,
            f"node {node} has no interface {iface!r} (it has {', '.join(known)}, "
            "or a neighbour's name)",
        )
    return Target(node, aliases[iface])


def parse_targets(value: Any, source: str, fld: str, topo: Any) -> list[Target]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise InputError(source, fld, "expected a list of 'NODE' or 'NODE:IFACE'")
    out = [parse_target(v, source, f"{fld}[{i}]", topo) for i, v in enumerate(value)]
    return list(dict.fromkeys(out))


def parse_options(head: dict[str, Any], source: str, topo: Any) -> CaptureOptions:
    """[scenario] capture, capture_snaplen, capture_limit, capture_window. Pure."""
    from meshstress.model import units

    opts = CaptureOptions()
    if "capture" in head:
        opts.targets = parse_targets(head["capture"], source, "scenario.capture", topo)
    if "capture_snaplen" in head:
        n = head["capture_snaplen"]
        if not isinstance(n, int) or isinstance(n, bool) or not MIN_SNAPLEN <= n <= MAX_SNAPLEN:
            raise InputError(
                source,
                "scenario.capture_snaplen",
                f"expected bytes from {MIN_SNAPLEN} to {MAX_SNAPLEN}, got {n!r}",
            )
        opts.snaplen = n
    if "capture_limit" in head:
        try:
            opts.limit = units.parse_size(head["capture_limit"])
        except ValueError as exc:
            raise InputError(source, "scenario.capture_limit", str(exc)) from None
        least = PCAP_HEADER + RECORD_HEADER + opts.snaplen
        if opts.limit < least:
            raise InputError(
                source,
                "scenario.capture_limit",
                f"must hold one full record at least ({least} bytes)",
            )
    if "capture_window" in head:
        try:
            opts.window = units.parse_duration(head["capture_window"])
        except ValueError as exc:
            raise InputError(source, "scenario.capture_window", str(exc)) from None
        if opts.window <= 0:
            raise InputError(source, "scenario.capture_window", "must be more than 0s")
    return opts


# ---------------------------------------------------------------- pure: pcap and the ring


def pcap_header(snaplen: int, linktype: int = LINKTYPE_ETHERNET) -> bytes:
    return struct.pack("=IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, snaplen, linktype)


def pcap_record(ts: float, data: bytes, origlen: int) -> bytes:
    sec = int(ts)
    usec = min(999_999, int(round((ts - sec) * 1e6)))
    return struct.pack("=IIII", sec, usec, len(data), origlen) + data


def read_pcap(path: str | Path) -> Iterator[tuple[float, bytes, int]]:
    """(timestamp, captured bytes, original length) of each record of a classic pcap
    (either byte order, microsecond or nanosecond magic). Pure apart from reading."""
    return read_pcap_bytes(Path(path).read_bytes(), str(path))


def read_pcap_bytes(raw: bytes, path: str = "pcap") -> Iterator[tuple[float, bytes, int]]:
    """read_pcap of bytes in memory."""
    if len(raw) < PCAP_HEADER:
        raise ValueError(f"{path}: not a pcap file (too short)")
    for order in ("<", ">"):
        magic = struct.unpack_from(order + "I", raw)[0]
        if magic in (0xA1B2C3D4, 0xA1B23C4D):
            break
    else:
        raise ValueError(f"{path}: not a pcap file (magic {raw[:4].hex()})")
    scale = 1e-6 if magic == 0xA1B2C3D4 else 1e-9
    off = PCAP_HEADER
    while off + RECORD_HEADER <= len(raw):
        sec, frac, incl, orig = struct.unpack_from(order + "IIII", raw, off)
        off += RECORD_HEADER
        yield sec + frac * scale, raw[off : off + incl], orig
        off += incl


class Ring:
    """The newest records that fit in `limit` bytes of pcap (header included). Pure.

    `windows`: wall-clock (start, end) spans; once set, a record outside all of them is
    not kept (`outside_window`), and records kept before they were set are filtered
    when written."""

    def __init__(self, snaplen: int = DEFAULT_SNAPLEN, limit: int = DEFAULT_LIMIT) -> None:
        if limit < PCAP_HEADER + RECORD_HEADER + snaplen:
            raise ValueError(f"limit {limit} cannot hold one record of {snaplen} bytes")
        self.snaplen, self.limit = snaplen, limit
        self.records: deque[tuple[float, bytes, int]] = deque()
        self.size = PCAP_HEADER
        self.seen = 0  # records offered
        self.seen_bytes = 0  # their original lengths
        self.dropped_old = 0  # dropped to make room for newer ones
        self.outside_window = 0
        self.windows: list[tuple[float, float]] | None = None

    def _inside(self, ts: float) -> bool:
        return self.windows is None or any(a <= ts <= b for a, b in self.windows)

    def add(self, ts: float, data: bytes, origlen: int | None = None) -> None:
        self.seen += 1
        origlen = len(data) if origlen is None else origlen
        self.seen_bytes += origlen
        if not self._inside(ts):
            self.outside_window += 1
            return
        data = bytes(data[: self.snaplen])
        self.records.append((ts, data, origlen))
        self.size += RECORD_HEADER + len(data)
        while self.size > self.limit:
            _, old, _ = self.records.popleft()
            self.size -= RECORD_HEADER + len(old)
            self.dropped_old += 1

    def set_windows(self, windows: Iterable[tuple[float, float]]) -> None:
        self.windows = sorted(windows)

    def kept(self) -> list[tuple[float, bytes, int]]:
        out = [r for r in self.records if self._inside(r[0])]
        return out

    def to_bytes(self) -> bytes:
        return pcap_header(self.snaplen) + b"".join(pcap_record(*r) for r in self.kept())

    def summary(self) -> dict[str, Any]:
        kept = self.kept()
        return {
            "packets": len(kept),
            "seen": self.seen,
            "seen_bytes": self.seen_bytes,
            "dropped_old": self.dropped_old,
            "outside_window": self.outside_window + len(self.records) - len(kept),
            "snaplen": self.snaplen,
            "limit": self.limit,
        }


def event_windows(
    event_times: Iterable[float], window: float, duration: tuple[float, float] | None = None
) -> list[tuple[float, float]]:
    """Spans of +-window around each event time, merged where they overlap. Pure."""
    spans = sorted((t - window, t + window) for t in event_times)
    out: list[tuple[float, float]] = []
    for a, b in spans:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


# ---------------------------------------------------------------- side effects: sockets


def open_socket(ns: str, ifname: str) -> socket.socket:
    """A packet socket bound to `ifname` inside namespace `ns` (it stays bound to that
    namespace). Created with protocol 0, so it receives nothing before the bind."""
    from meshstress.build import netns

    with netns.entered(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.bind((ifname, ETH_P_ALL))
        except BaseException:
            sock.close()
            raise
    return sock


def kernel_drops(sock: socket.socket) -> int | None:
    """Packets the socket's receive queue dropped since the last call (PACKET_STATISTICS)."""
    try:
        raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    except OSError:
        return None
    return int(struct.unpack("=II", raw)[1])


class Capturer(threading.Thread):
    """Reads one packet socket into a Ring until stopped."""

    def __init__(self, sock: socket.socket, ring: Ring, name: str) -> None:
        super().__init__(name=f"meshstress-capture-{name}", daemon=True)
        self.sock, self.ring = sock, ring
        self.halt = threading.Event()
        self.kernel_drops = 0
        self.error: str | None = None
        self.lock = threading.Lock()

    def run(self) -> None:
        buf = bytearray(self.ring.snaplen)
        view = memoryview(buf)
        anc = socket.CMSG_SPACE(16)
        self.sock.settimeout(0.1)
        try:
            while not self.halt.is_set():
                try:
                    n, cmsgs, _flags, _addr = self.sock.recvmsg_into([view], anc, socket.MSG_TRUNC)
                except TimeoutError:
                    continue
                ts = time.time()
                for level, kind, value in cmsgs:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                        sec, nsec = struct.unpack("=qq", value[:16])
                        ts = sec + nsec * 1e-9
                with self.lock:
                    self.ring.add(ts, bytes(view[: min(n, len(buf))]), n)
        except OSError as exc:  # the interface went away (a crashed node): keep what we have
            self.error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=5)
        drops = kernel_drops(self.sock)
        if drops is not None:
            self.kernel_drops += drops
        self.sock.close()


def resolve(
    targets: list[Target],
    interfaces: dict[str, list[dict[str, Any]]],
    prefix: str,
    soft: str | None,
) -> list[tuple[str, str, str]]:
    """(node, short name, real ifname) for every interface the targets name. Pure.
    `soft`: batman-adv's soft interface name when the mesh runs batman-adv."""
    out: dict[tuple[str, str], str] = {}
    for t in targets:
        ifs = interfaces.get(t.node, [])
        if t.iface is None:
            for i in ifs:
                out[(t.node, short_name(i["ifname"], prefix))] = i["ifname"]
        elif soft is not None and t.iface == soft:
            out[(t.node, soft)] = soft
        else:
            aliases = iface_aliases(t.node, ifs, prefix)
            short = aliases.get(t.iface, t.iface)
            real = next(
                (i["ifname"] for i in ifs if short_name(i["ifname"], prefix) == short),
                prefix + short,
            )
            out[(t.node, short)] = real
    return [(node, short, real) for (node, short), real in out.items()]


class Captures:
    """All of a run's captures: start them, set the event windows, write the files."""

    def __init__(self, mesh: Any, opts: CaptureOptions) -> None:
        self.mesh, self.opts = mesh, opts
        self.threads: dict[str, tuple[str, str, Capturer]] = {}  # file stem -> (node, iface)

    def start(self) -> None:
        st = self.mesh.state
        soft = None
        if st.routing == "batman-adv":
            soft = (st.extra.get("batman_adv") or {}).get("meshif", "bat0")
        targets = resolve(self.opts.targets, st.interfaces, f"ms-{st.run_id}-", soft)
        try:
            for node, short, real in targets:
                sock = open_socket(st.node_ns[node], real)
                ring = Ring(self.opts.snaplen, self.opts.limit)
                cap = Capturer(sock, ring, f"{node}-{short}")
                self.threads[f"{node}-{short}"] = (node, short, cap)
                cap.start()
        except BaseException:
            self.stop()
            raise

    def set_windows(self, windows: list[tuple[float, float]]) -> None:
        for _, _, cap in self.threads.values():
            with cap.lock:
                cap.ring.set_windows(windows)

    def stop(self) -> None:
        for _, _, cap in self.threads.values():
            if not cap.halt.is_set():
                cap.stop()

    def write(self, folder: Path, rel_to: Path | None = None) -> dict[str, Any]:
        """Stop, write NODE-IFACE.pcap files into folder, return the results section."""
        from meshstress import safefs

        self.stop()
        safefs.make_dir(folder)
        files: dict[str, Any] = {}
        for stem, (node, short, cap) in sorted(self.threads.items()):
            path = folder / f"{stem}.pcap"
            safefs.write_file(folder, path.name, cap.ring.to_bytes())
            info = {
                "node": node,
                "iface": short,
                **cap.ring.summary(),
                "kernel_drops": cap.kernel_drops,
            }
            info["file"] = str(path.relative_to(rel_to)) if rel_to else str(path)
            if cap.error:
                info["error"] = cap.error
            files[stem] = info
        return files


Clock = Callable[[], float]


def wall_of(monotonic_t: float, clock: Clock = time.time, mono: Clock = time.monotonic) -> float:
    """A time.monotonic() instant as wall-clock seconds (kernel packet timestamps)."""
    return clock() - mono() + monotonic_t


def section(files: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The results.json `capture` section: each file's counts and its routing
    signalling (meshstress.packets.classify), and the same summed per node."""
    from meshstress.packets import classify

    per_node: dict[str, list[dict[str, Any]]] = {}
    for stem, info in files.items():
        sig = classify.signalling(read_pcap(folder / f"{stem}.pcap"))
        info["signalling"] = sig
        per_node.setdefault(info["node"], []).append(sig)
    nodes = {node: classify.merge(parts) for node, parts in sorted(per_node.items())}
    return {"files": files, "nodes": nodes}
