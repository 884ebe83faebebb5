"""Traffic flows whose every packet is accounted for (docs/traffic.md).

`parse_flows` turns a scenario's `[[traffic]]` tables into FlowSpecs (pure).
`start_flow` starts both ends of one flow inside the nodes' namespaces (receiver first,
then sender; each a `python -m meshstress.traffic.agent` process, or iputils ping for
`ping`), records their PIDs in the run's state, and returns a Flow; `Flow.record()`
reads the ends' files into a FlowRecord, which meshstress.judge.metrics turns into numbers.
All times are time.monotonic() values.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

from meshstress.errors import InputError, MeshstressError
from meshstress.model import names, units
from meshstress.traffic import crafted as craft

if TYPE_CHECKING:
    from meshstress.build import Mesh
    from meshstress.model.topology import Topology

KINDS = ("udp", "tcp", "ping", "rr", "crafted")
KEYS = ("name", "kind", "from", "to", "start", "duration", "rate", "size", "port")
RR_KEYS = ("proto", "request_size", "response_size", "timeout", "retries", "backoff",
           "max_timeout", "max_outstanding", "connection")  # fmt: skip
DEFAULT_PPS = {"udp": 100.0, "ping": 10.0, "rr": 10.0, "crafted": 100.0}
MAX_PPS = 100_000.0
UDP_MIN_SIZE = 16  # seq (8 bytes) and send time (8 bytes)
MAX_PAYLOAD = 65507
LINGER = 1.0  # receivers stay this long after the sender's end for packets in flight
PING_WAIT = 1.0  # ping -W: seconds to wait for each reply
TCP_BIN = 0.1  # goodput interval of the tcp receiver
PORT_BASE = 40000
_ports = itertools.count()
RR_HEADER = 20  # request id (u64), attempt (u32), send time (f64): meshstress.traffic.agent.RR
RR_MAX_RATE = 10_000.0  # requests per second
RR_MAX_TCP_SIZE = 16 << 20
RR_MAX_DRAIN = 30.0  # the client resolves outstanding requests at most this long past its end


@dataclass(frozen=True)
class RRSpec:
    """The settings of a request/response flow (kind "rr"); its rate is FlowSpec.rate_pps
    (requests started per second)."""

    proto: str = "udp"  # "udp" | "tcp"
    request_size: int = 64  # bytes, header (20 bytes) included
    response_size: int = 64
    timeout: float = 0.2  # seconds, the first attempt's (TCP: connect included)
    retries: int = 3  # attempts after the first
    backoff: float = 2.0  # each retry's timeout = the previous one's times this
    max_timeout: float | None = None  # a cap on one attempt's timeout
    max_outstanding: int = 1000  # above it a due request is not started ("skipped")
    connection: str = "per-request"  # tcp: "per-request" | "persistent"

    def attempt_timeout(self, k: int) -> float:
        """The timeout of attempt k (0: the first)."""
        t = self.timeout * self.backoff**k
        return t if self.max_timeout is None else min(t, self.max_timeout)

    def window(self) -> float:
        """The longest a request can take: every attempt's timeout, one after another."""
        return sum(self.attempt_timeout(k) for k in range(self.retries + 1))

    def drain(self) -> float:
        """How long the client goes on past its end to resolve outstanding requests: the
        longest retry sequence, plus LINGER for a client that runs late."""
        return min(self.window() + LINGER, RR_MAX_DRAIN)


@dataclass(frozen=True)
class FlowSpec:
    name: str
    kind: str  # "udp" | "tcp" | "ping" | "rr" | "crafted"
    src: str  # node names of the topology
    dst: str
    start: float = 0.0  # seconds after the traffic start (t0)
    duration: float | None = None  # None: until the scenario's end (given to start_flow)
    rate_pps: float | None = None  # udp/ping: packets per second
    rate_bps: int | None = None  # udp: bitrate alternative to rate_pps; tcp: optional cap
    size: int = 200  # udp payload / ping payload bytes
    port: int | None = None  # None: assigned
    rr: RRSpec | None = None  # kind "rr": its settings
    crafted: craft.CraftedSpec | None = None  # kind "crafted": its frame and settings

    def pps(self) -> float:
        """Packets per second of a udp or ping flow (a udp bitrate counts payload bits)."""
        if self.rate_pps is not None:
            return self.rate_pps
        if self.kind == "udp" and self.rate_bps is not None:
            return self.rate_bps / (8 * self.size)
        return DEFAULT_PPS.get(self.kind, 100.0)


@dataclass
class RRRequest:
    """One request of an rr flow as its client recorded it (monotonic seconds).

    outcome: "ok" | "timeout" | "connect_failed" | "error" (how the last attempt failed,
    once every retry had been used) | "skipped" (due while max_outstanding requests were
    outstanding: never sent) | "pending" (undecided when the client stopped).
    results[k]: what became of attempt k by its deadline: "ok", "timeout" (no answer in
    time), "connect_failed" (tcp: not connected in time, or refused), "error" (the kernel
    refused the send, or the connection broke).
    """

    id: int
    t_sched: float  # when it was due (open loop: rate from the client's start)
    sends: list[float] = field(default_factory=list)  # each attempt's start
    results: list[str] = field(default_factory=list)
    connect_s: list[float | None] = field(default_factory=list)  # tcp, per attempt
    outcome: str = "pending"
    ok_attempt: int | None = None  # the attempt whose response came first
    t_done: float | None = None  # the response's arrival, or when it was given up

    @property
    def decided(self) -> bool:
        return self.outcome != "pending"


@dataclass
class FlowRecord:
    """What both ends of a flow wrote, in monotonic seconds.

    udp:  sent [(seq, t_send)], received [(seq, t_send, t_recv)] in arrival order,
          duplicates included.
    ping: sent [(seq, t_send)] (t_send of unanswered echoes interpolated from the
          answered ones), received [(seq, t_send, t_reply)], duplicates included.
    tcp:  bins [(t_bin_start, bytes)] every bin_s from the receiver, tcp_info from the
          sender at its end, bytes_written by the sender.
    crafted: sent [(seq, t_send)] (a packet's frames went back to back), frames_per_packet.
    rr:   requests [RRRequest] from the client; served [(id, attempt, t_recv)] every
          request copy the server got; responses [(id, attempt, t_recv)] every response
          the client got (late ones and duplicates included).
    """

    spec: FlowSpec
    t_start: float  # when the sender was scheduled to start (t0 + spec.start)
    t_end: float  # when it was scheduled to stop
    sent: list[tuple[int, float]] = field(default_factory=list)
    received: list[tuple[int, float, float]] = field(default_factory=list)
    bins: list[tuple[float, int]] = field(default_factory=list)
    bin_s: float = TCP_BIN
    tcp_info: dict[str, int] = field(default_factory=dict)
    bytes_written: int = 0
    connected: bool | None = None
    connected_at: float | None = None  # tcp: when the sender's connect() succeeded
    send_errors: int = 0
    errors: list[str] = field(default_factory=list)
    requests: list[RRRequest] = field(default_factory=list)  # rr: the client's, by id
    served: list[tuple[int, int, float]] = field(default_factory=list)  # rr: server got
    responses: list[tuple[int, int, float]] = field(default_factory=list)  # rr: client got
    frames_per_packet: int = 1  # crafted: frames of one packet (fragments)
    frames_sent: int = 0  # crafted: frames the raw socket took

    @property
    def interval(self) -> float | None:
        """Seconds between packets of a udp or ping flow."""
        if self.spec.kind == "tcp":
            return None
        return 1.0 / self.spec.pps()


# --- parsing ---------------------------------------------------------------------


def _rate(value: object, kind: str, source: str, fld: str) -> tuple[float | None, int | None]:
    if isinstance(value, str) and value.strip().lower().endswith("pps"):
        if kind == "tcp":
            raise InputError(source, fld, 'a tcp flow takes a bitrate cap like "2mbit", not pps')
        text = value.strip()[:-3].strip()
        try:
            pps = float(text)
        except ValueError:
            raise InputError(source, fld, f'expected a rate like "100pps", got {value!r}') from None
        if not (math.isfinite(pps) and 0 < pps <= MAX_PPS):
            raise InputError(source, fld, f"packets per second must be in (0, {MAX_PPS:g}]")
        return pps, None
    if kind == "ping":
        raise InputError(
            source, fld, f'a ping flow takes packets per second like "10pps", got {value!r}'
        )
    try:
        bps = units.parse_rate(value)
    except ValueError as exc:
        raise InputError(source, fld, f'{exc} (or packets per second: "100pps")') from None
    return None, bps


def _rr_rate(value: object, source: str, fld: str) -> float:
    """Requests per second: "20rps" (or "20pps", or a bare number)."""
    text = value.strip().lower() if isinstance(value, str) else None
    if isinstance(value, bool) or not (isinstance(value, int | float) or text):
        raise InputError(source, fld, f'expected requests per second like "20rps", got {value!r}')
    if text is not None:
        text = text.removesuffix("rps").removesuffix("pps").strip()
    try:
        rate = float(text if text is not None else value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(
            source, fld, f'expected requests per second like "20rps", got {value!r}'
        ) from None
    if not (math.isfinite(rate) and 0 < rate <= RR_MAX_RATE):
        raise InputError(source, fld, f"requests per second must be in (0, {RR_MAX_RATE:g}]")
    return rate


def _parse_rr(item: dict[str, Any], source: str, at: str) -> RRSpec:
    """The rr keys of one [[traffic]] table -> RRSpec (InputError naming the field)."""
    kw: dict[str, Any] = {}
    proto = item.get("proto", "udp")
    if proto not in ("udp", "tcp"):
        raise InputError(source, f"{at}.proto", f'expected "udp" or "tcp", got {proto!r}')
    kw["proto"] = proto
    high = MAX_PAYLOAD if proto == "udp" else RR_MAX_TCP_SIZE
    for key in ("request_size", "response_size"):
        if key in item:
            try:
                kw[key] = units.parse_size(item[key])
            except ValueError as exc:
                raise InputError(source, f"{at}.{key}", str(exc)) from None
            if not RR_HEADER <= kw[key] <= high:
                raise InputError(
                    source, f"{at}.{key}", f"must be {RR_HEADER} to {high} bytes over {proto}"
                )
    for key in ("timeout", "max_timeout"):
        if key in item:
            try:
                kw[key] = units.parse_duration(item[key])
            except ValueError as exc:
                raise InputError(source, f"{at}.{key}", str(exc)) from None
            if not 0.001 <= kw[key] <= 60.0:
                raise InputError(source, f"{at}.{key}", "must be 1ms to 60s")
    if kw.get("max_timeout", math.inf) < kw.get("timeout", RRSpec.timeout):
        raise InputError(source, f"{at}.max_timeout", "is shorter than the timeout")
    for key, low, top in (("retries", 0, 100), ("max_outstanding", 1, 100_000)):
        if key in item:
            n = item[key]
            if isinstance(n, bool) or not isinstance(n, int) or not low <= n <= top:
                raise InputError(source, f"{at}.{key}", f"expected a count {low}..{top}, got {n!r}")
            kw[key] = n
    if "backoff" in item:
        b = item["backoff"]
        if isinstance(b, bool) or not isinstance(b, int | float) or not 1.0 <= b <= 100.0:
            raise InputError(source, f"{at}.backoff", f"expected a factor 1..100, got {b!r}")
        kw["backoff"] = float(b)
    if "connection" in item:
        conn = item["connection"]
        if proto != "tcp":
            raise InputError(source, f"{at}.connection", 'only a proto = "tcp" flow has one')
        if conn not in ("per-request", "persistent"):
            raise InputError(
                source, f"{at}.connection", f'expected "per-request" or "persistent", got {conn!r}'
            )
        kw["connection"] = conn
    return RRSpec(**kw)


def parse_flows(raw: object, source: str, topo: Topology, field: str = "traffic") -> list[FlowSpec]:
    """A scenario's [[traffic]] array -> FlowSpecs; bad input raises InputError naming
    `field[i].key`."""
    if not isinstance(raw, list):
        raise InputError(source, field, "expected an array of tables [[traffic]]")
    nodes = set(topo.node_names())
    specs: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        at = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise InputError(source, at, "expected a table")
        for key in item:
            if key not in KEYS and key not in RR_KEYS and key not in craft.KEYS:
                known = ", ".join(KEYS + RR_KEYS + craft.KEYS)
                raise InputError(source, f"{at}.{key}", f"unknown key (known: {known})")
        kind = item.get("kind")
        if kind not in KINDS:
            raise InputError(
                source, f"{at}.kind", f"expected one of {', '.join(KINDS)}, got {kind!r}"
            )
        for key in RR_KEYS:
            if key in item and kind != "rr":
                raise InputError(source, f"{at}.{key}", f'only a kind = "rr" flow has {key}')
        for key in craft.KEYS:
            if key in item and kind != "crafted":
                raise InputError(source, f"{at}.{key}", f'only a kind = "crafted" flow has {key}')
        cspec = craft.parse_crafted(item, source, at) if kind == "crafted" else None
        ends = {}
        for key in ("from", "to"):
            node = item.get(key)
            if node is None:
                raise InputError(source, f"{at}.{key}", "missing (a node name)")
            if not isinstance(node, str) or node not in nodes:
                raise InputError(source, f"{at}.{key}", f"unknown node {node!r}")
            ends[key] = node
        if ends["from"] == ends["to"]:
            raise InputError(source, f"{at}.to", f"same node as from ({ends['to']!r})")
        start = 0.0
        duration: float | None = None
        for key in ("start", "duration"):
            if key in item:
                try:
                    v = units.parse_duration(item[key])
                except ValueError as exc:
                    raise InputError(source, f"{at}.{key}", str(exc)) from None
                if key == "start":
                    start = v
                elif v <= 0:
                    raise InputError(source, f"{at}.{key}", "must be positive")
                else:
                    duration = v
        pps: float | None = None
        bps: int | None = None
        rr: RRSpec | None = None
        if kind == "rr":
            rr = _parse_rr(item, source, at)
            pps = _rr_rate(item["rate"], source, f"{at}.rate") if "rate" in item else None
            if pps is None:
                pps = DEFAULT_PPS["rr"]
        elif "rate" in item:
            pps, bps = _rate(item["rate"], kind, source, f"{at}.rate")
            if kind == "crafted" and pps is None:
                raise InputError(
                    source, f"{at}.rate", f'a crafted flow takes packets per second like '
                    f'"1000pps", got {item["rate"]!r}')  # fmt: skip
        elif kind in DEFAULT_PPS:
            pps = DEFAULT_PPS[kind]
        size = 200 if kind == "udp" else 56
        if cspec is not None:
            size = craft.default_size(cspec.frame)
        if "size" in item:
            if kind == "tcp":
                raise InputError(source, f"{at}.size", "a tcp flow has no packet size")
            if kind == "rr":
                raise InputError(source, f"{at}.size", "an rr flow has request_size and "
                                 "response_size")  # fmt: skip
            try:
                size = units.parse_size(item["size"])
            except ValueError as exc:
                raise InputError(source, f"{at}.size", str(exc)) from None
            low = UDP_MIN_SIZE if kind == "udp" else 0
            if cspec is not None:
                pass  # checked below, for every crafted flow
            elif not low <= size <= MAX_PAYLOAD:
                raise InputError(source, f"{at}.size", f"must be {low} to {MAX_PAYLOAD} bytes")
        if cspec is not None:
            craft.check_size(cspec, size, source, f"{at}.size")
        if kind == "udp" and bps is not None and not 0 < bps / (8 * size) <= MAX_PPS:
            raise InputError(
                source, f"{at}.rate", f"{bps} bit/s at {size} B is not within (0, {MAX_PPS:g}] pps"
            )
        port = None
        if "port" in item:
            port = item["port"]
            if kind == "ping":
                raise InputError(source, f"{at}.port", "a ping flow has no port")
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise InputError(source, f"{at}.port", f"expected a port 1..65535, got {port!r}")
        name = item.get("name")
        if name is not None:
            names.check(name, source, f"{at}.name", names.flow_problem)  # raw/NAME.* files
        specs.append(
            dict(name=name, kind=kind, src=ends["from"], dst=ends["to"], start=start,
                 duration=duration, rate_pps=pps, rate_bps=bps, size=size, port=port, rr=rr,
                 crafted=cspec)
        )  # fmt: skip
    taken: set[str] = set()
    for i, s in enumerate(specs):
        if s["name"] is not None:
            if s["name"] in taken:
                raise InputError(source, f"{field}[{i}].name", f"duplicate flow name {s['name']!r}")
            taken.add(s["name"])
    for s in specs:
        if s["name"] is None:
            base = f"{s['kind']}-{s['src']}-{s['dst']}"
            name, n = base, 1
            while name in taken:
                n += 1
                name = f"{base}-{n}"
            s["name"] = name
            taken.add(name)
    return [FlowSpec(**s) for s in specs]


# --- running ---------------------------------------------------------------------


def _agent(mode: str, *args: object) -> list[str]:
    return [sys.executable, "-m", "meshstress.traffic.agent", mode, *(str(a) for a in args)]


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def _alive(proc: subprocess.Popen[Any]) -> bool:
    return proc.poll() is None


class Flow:
    """Both ends of a running flow; `wait`, `stop`, then `record`."""

    def __init__(self, spec: FlowSpec, workdir: str, t_start: float, t_end: float) -> None:
        self.spec = spec
        self.workdir = workdir
        self.t_start = t_start
        self.t_end = t_end
        self.procs: list[tuple[str, subprocess.Popen[Any]]] = []  # (role, process)
        self.files: dict[str, str] = {}
        self.notes: list[str] = []
        self._logs: list[Any] = []
        self._record: FlowRecord | None = None
        self.go: str | None = None  # the start barrier's file (start_flow's go)

    def path(self, what: str) -> str:
        return os.path.join(self.workdir, f"{self.spec.name}.{what}")

    def running(self) -> bool:
        return any(_alive(p) for _, p in self.procs)

    def wait(self, timeout: float) -> None:
        """Until both ends have finished and written their records; past `timeout`
        seconds they are stopped (SIGTERM, records still flushed) and that is noted."""
        limit = time.monotonic() + timeout
        for _, p in self.procs:
            try:
                p.wait(timeout=max(0.0, limit - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        if self.running():
            self.notes.append(f"still running {timeout:g} s after wait() began: stopped")
            self.stop()
        self._close_logs()

    def stop(self) -> None:
        """Early stop: SIGTERM (ping: SIGINT, on which it prints its summary) to each end
        by PID; the ends flush their records. Idempotent; SIGKILL after 3 s."""
        for role, p in self.procs:
            if _alive(p):
                try:
                    p.send_signal(signal.SIGINT if role == "ping" else signal.SIGTERM)
                except ProcessLookupError:
                    pass
        limit = time.monotonic() + 3.0
        for _, p in self.procs:
            try:
                p.wait(timeout=max(0.0, limit - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
                self.notes.append(f"pid {p.pid} ignored SIGTERM for 3 s: killed")
        self._close_logs()

    def _close_logs(self) -> None:
        if not self.running():
            for f in self._logs:
                f.close()
            self._logs.clear()

    def record(self) -> FlowRecord:
        """The per-packet data, read from the ends' files (after the flow ended)."""
        if self.running():
            raise RuntimeError(f"flow {self.spec.name} is still running: wait() or stop() first")
        if self._record is None:
            self._record = load_record(self.spec, self.files, self.t_start, self.t_end)
            self._record.errors[:0] = self.notes
            for role, p in self.procs:
                if p.returncode not in (0, None) and not (role == "ping" and p.returncode == 1):
                    self._record.errors.append(
                        f"{role} exited with {p.returncode}: {_last_line(self.path(role + '.log'))}"
                    )
        return self._record


def start_flow(
    mesh: Mesh, spec: FlowSpec, workdir: str, t0: float, duration: float, go: str | None = None
) -> Flow:
    """Start one flow without blocking: receiver first, then sender, inside the nodes'
    namespaces, PIDs recorded in the run's state. The sender starts at t0 + spec.start
    and sends for spec.duration (or `duration`, the scenario's, minus spec.start when
    spec.duration is None).

    With `go` (a file path shared by the run's flows) t0 is not known yet: the agents
    start, say they are up and wait for that file; `release` writes it with t0 once
    every agent is up and sets each flow's times (the start barrier)."""
    os.makedirs(workdir, exist_ok=True)
    base = 0.0 if go else t0  # with go, the agents get offsets from the t0 to come
    t_start = base + spec.start
    length = spec.duration if spec.duration is not None else duration - spec.start
    t_end = t_start + max(0.0, length)
    flow = Flow(spec, workdir, t_start, t_end)
    flow.go = go
    src, dst = mesh.address(spec.src), mesh.address(spec.dst)
    port = spec.port if spec.port is not None else PORT_BASE + next(_ports) % 20000
    for what in ("ready", "send.json", "recv.json", "ping.txt", "offset.json", "client.json",
                 "server.json"):  # fmt: skip
        try:
            os.unlink(flow.path(what))
        except FileNotFoundError:
            pass
    ready = flow.path("ready")

    def launch(role: str, node: str, argv: list[str], stdout: Any = None) -> None:
        err = open(flow.path(f"{role}.log"), "w")  # noqa: SIM115 - closed when it ended
        flow._logs.append(err)
        if stdout is None:
            stdout = subprocess.DEVNULL
        else:
            flow._logs.append(stdout)
        if go:  # after the mode, before any "--"
            argv = [*argv[:4], "--go", go, *argv[4:]]
        p = mesh.popen(node, argv, stdout=stdout, stderr=err, stdin=subprocess.DEVNULL)
        flow.procs.append((role, p))
        try:
            mesh.record_process(p, node, "traffic", argv)
        except psutil.NoSuchProcess:
            pass  # already gone (its exit code tells)

    if spec.kind == "udp":
        flow.files = {"recv": flow.path("recv.json"), "send": flow.path("send.json")}
        launch("recv", spec.dst, _agent(
            "udp-recv", "--bind", dst, "--port", port, "--end", t_end + LINGER,
            "--out", flow.files["recv"], "--ready", ready))  # fmt: skip
        launch("send", spec.src, _agent(
            "udp-send", "--bind", src, "--to", dst, "--port", port, "--start", t_start,
            "--end", t_end, "--pps", repr(spec.pps()), "--size", spec.size,
            "--out", flow.files["send"], "--ready", ready))  # fmt: skip
    elif spec.kind == "tcp":
        flow.files = {"recv": flow.path("recv.json"), "send": flow.path("send.json")}
        launch("recv", spec.dst, _agent(
            "tcp-recv", "--bind", dst, "--port", port, "--start", t_start,
            "--end", t_end + LINGER, "--bin", TCP_BIN, "--out", flow.files["recv"],
            "--ready", ready))  # fmt: skip
        launch("send", spec.src, _agent(
            "tcp-send", "--bind", src, "--to", dst, "--port", port, "--start", t_start,
            "--end", t_end, "--bps", spec.rate_bps or 0, "--out", flow.files["send"],
            "--ready", ready))  # fmt: skip
    elif spec.kind == "ping":
        # no -w: with a deadline iputils ping quits at the first ICMP error (a lost route);
        # -c bounds it (count * interval, then -W for the last reply)
        flow.files = {"ping": flow.path("ping.txt"), "offset": flow.path("offset.json")}
        interval = 1.0 / spec.pps()
        count = max(1, round((t_end - t_start) / interval))
        argv = ["ping", "-n", "-D", "-I", src, "-i", f"{interval:.6f}", "-c", str(count),
                "-W", f"{PING_WAIT:g}", "-s", str(spec.size), dst]  # fmt: skip
        out = open(flow.files["ping"], "w")  # noqa: SIM115 - closed when it ended
        launch("ping", spec.src, _agent(
            "ping", "--start", t_start, "--out-offset", flow.files["offset"], "--", *argv),
            stdout=out)  # fmt: skip
    elif spec.kind == "rr":
        rr = spec.rr or RRSpec()
        flow.files = {"client": flow.path("client.json"), "server": flow.path("server.json")}
        sizes = ("--request-size", rr.request_size, "--response-size", rr.response_size)
        launch("server", spec.dst, _agent(
            "rr-server", "--proto", rr.proto, "--bind", dst, "--port", port,
            "--end", t_end + rr.drain() + LINGER, *sizes, "--out", flow.files["server"],
            "--ready", ready, "--peer-done", flow.files["client"]))  # fmt: skip
        launch("client", spec.src, _agent(
            "rr-client", "--proto", rr.proto, "--connection", rr.connection, "--bind", src,
            "--to", dst, "--port", port, "--start", t_start, "--end", t_end,
            "--drain", repr(rr.drain()), "--rate", repr(spec.pps()), *sizes,
            "--timeout", repr(rr.timeout), "--retries", rr.retries,
            "--backoff", repr(rr.backoff), "--max-timeout", repr(rr.max_timeout or 0.0),
            "--max-outstanding", rr.max_outstanding, "--out", flow.files["client"],
            "--ready", ready))  # fmt: skip
    elif spec.kind == "crafted":
        cs = spec.crafted or craft.CraftedSpec(frame="ttl1")
        flow.files = {"send": flow.path("send.json"), "frames": flow.path("frames.pcap")}
        ifname, src_mac, dst_mac = next_hop(mesh, spec.src, dst)
        frames = craft.build_frames(cs, spec.size, src_mac, dst_mac, src, dst, port)
        craft.write_pcap(flow.files["frames"], [(time.time(), f) for f in frames])
        argv = [sys.executable, "-m", "meshstress.traffic.craft_agent", "send",
                "--ifname", ifname, "--frames", flow.files["frames"], "--start", str(t_start),
                "--end", str(t_end), "--pps", repr(spec.pps()),
                "--out", flow.files["send"]]  # fmt: skip
        if craft.varies(cs):
            argv.append("--vary-id")
        launch("send", spec.src, argv)
    else:
        raise ValueError(f"unknown flow kind {spec.kind!r}")
    return flow


# the kernel's NUD_VALID: REACHABLE, STALE, DELAY, PROBE, NOARP, PERMANENT (a pinned
# entry is PERMANENT; a FAILED one's address is not to be used)
NUD_VALID = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80


def next_hop(mesh: Mesh, node: str, dst: str) -> tuple[str, str, str]:
    """(ifname, its MAC, the next hop's MAC) of node's route to address dst: the kernel's
    route lookup inside node's namespace, then its neighbour table (one ping of the next
    hop fills an empty entry)."""
    ipr = mesh.netlink(node)
    try:
        route = ipr.route("get", dst=dst)[0]
    except Exception as exc:  # pyroute2's NetlinkError: no route
        raise MeshstressError(f"node {node} has no route to {dst}: {exc}") from None
    oif = route.get_attr("RTA_OIF")
    hop = route.get_attr("RTA_GATEWAY") or dst
    link = ipr.get_links(oif)[0]
    ifname, mac = link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_ADDRESS")
    for attempt in range(2):
        for n in ipr.get_neighbours(ifindex=oif):
            if n.get_attr("NDA_DST") == hop and n.get_attr("NDA_LLADDR") and n["state"] & NUD_VALID:
                return ifname, mac, n.get_attr("NDA_LLADDR")
        if attempt == 0:
            mesh.run(node, ["ping", "-n", "-q", "-c", "1", "-W", "2", "-I", ifname, hop],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    raise MeshstressError(f"node {node}: no neighbour entry for {hop} on {ifname}")


def release(flows: list[Flow], go: str, lead: float, timeout: float) -> float:
    """The start barrier: wait until every agent of `flows` (started with this `go`) is
    up, then write `go` with t0 = now + lead and give each flow its times; return t0.
    MeshstressError naming the flow if an agent ended before it was up, or was not up
    within `timeout` seconds (the host or the lab is too slow to run this at all)."""
    deadline = time.monotonic() + timeout
    for flow in flows:
        for role, p in flow.procs:
            while not os.path.exists(f"{go}.{p.pid}"):
                if p.poll() is not None:
                    raise MeshstressError(
                        f"flow {flow.spec.name}: its {role} agent ended before it started "
                        f"(exit {p.returncode}): {_last_line(flow.path(role + '.log'))}"
                    )
                if time.monotonic() >= deadline:
                    raise MeshstressError(
                        f"flow {flow.spec.name}: its {role} agent was not up {timeout:g} s "
                        "after it was started"
                    )
                time.sleep(0.005)
    for flow in flows:  # up, and still there: an agent that died meanwhile is no better
        for role, p in flow.procs:
            if p.poll() is not None:
                raise MeshstressError(
                    f"flow {flow.spec.name}: its {role} agent ended before it started "
                    f"(exit {p.returncode}): {_last_line(flow.path(role + '.log'))}"
                )
    t0 = time.monotonic() + lead
    tmp = f"{go}.tmp"
    with open(tmp, "w") as f:
        f.write(repr(t0))
    os.replace(tmp, go)  # whole or absent: an agent never reads half a number
    for flow in flows:
        flow.t_start += t0
        flow.t_end += t0
    return t0


# --- reading the ends' files ---------------------------------------------------------


def _load_json(path: str, errors: list[str], what: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        errors.append(f"{what}: no record ({os.path.basename(path)} missing)")
        return {}
    except (OSError, ValueError) as exc:
        errors.append(f"{what}: unreadable record: {exc}")
        return {}
    errors.extend(f"{what}: {e}" for e in data.get("errors", []))
    return data if isinstance(data, dict) else {}


def load_record(spec: FlowSpec, files: dict[str, str], t_start: float, t_end: float) -> FlowRecord:
    """The ends' files -> FlowRecord (missing or broken files become errors, not raises)."""
    rec = FlowRecord(spec=spec, t_start=t_start, t_end=t_end)
    if spec.kind == "udp":
        send = _load_json(files["send"], rec.errors, "sender")
        recv = _load_json(files["recv"], rec.errors, "receiver")
        rec.sent = [(int(s), float(t)) for s, t in send.get("sent", [])]
        rec.received = [(int(s), float(a), float(b)) for s, a, b in recv.get("packets", [])]
        rec.send_errors = int(send.get("send_errors", 0))
        for kind, n in (send.get("error_kinds") or {}).items():
            rec.errors.append(f"sender: {n} send(s) failed: {kind}")
    elif spec.kind == "tcp":
        send = _load_json(files["send"], rec.errors, "sender")
        recv = _load_json(files["recv"], rec.errors, "receiver")
        bin_s = float(recv.get("bin_s", TCP_BIN))
        origin = float(recv.get("origin", t_start))
        rec.bin_s = bin_s
        rec.bins = [(origin + int(k) * bin_s, int(n)) for k, n in recv.get("bins", [])]
        rec.tcp_info = {k: int(v) for k, v in (send.get("tcp_info") or {}).items()}
        rec.bytes_written = int(send.get("bytes_written", 0))
        rec.connected = "connected_at" in send if send else None
        if send.get("connected_at") is not None:
            rec.connected_at = float(send["connected_at"])
    elif spec.kind == "crafted":
        send = _load_json(files["send"], rec.errors, "sender")
        rec.sent = [(int(s), float(t)) for s, t in send.get("sent", [])]
        rec.send_errors = int(send.get("send_errors", 0))
        rec.frames_per_packet = int(send.get("frames_per_packet", 1))
        rec.frames_sent = int(send.get("frames_sent", 0))
        for kind, n in (send.get("error_kinds") or {}).items():
            rec.errors.append(f"sender: {n} frame(s) not sent: {kind}")
    elif spec.kind == "rr":
        client = _load_json(files["client"], rec.errors, "client")
        server = _load_json(files["server"], rec.errors, "server")
        for q in client.get("requests", []):
            rec.requests.append(
                RRRequest(
                    id=int(q["id"]),
                    t_sched=float(q["t"]),
                    sends=[float(t) for t in q.get("sends", [])],
                    results=[str(r) if r is not None else "pending" for r in q.get("results", [])],
                    connect_s=[None if c is None else float(c) for c in q.get("connect_s", [])],
                    outcome=str(q.get("outcome", "pending")),
                    ok_attempt=None if q.get("ok_attempt") is None else int(q["ok_attempt"]),
                    t_done=None if q.get("t_done") is None else float(q["t_done"]),
                )
            )
        rec.responses = [(int(i), int(k), float(t)) for i, k, t in client.get("responses", [])]
        rec.served = [(int(i), int(k), float(t)) for i, k, t in server.get("served", [])]
        for kind, n in (client.get("error_kinds") or {}).items():
            rec.errors.append(f"client: {n} attempt(s) failed: {kind}")
        for kind, n in (server.get("send_errors") or {}).items():
            rec.errors.append(f"server: {n} response(s) not sent: {kind}")
    elif spec.kind == "ping":
        from meshstress.traffic import ping_records

        try:
            with open(files["ping"]) as f:
                text = f.read()
        except OSError as exc:
            rec.errors.append(f"ping: no output: {exc}")
            text = ""
        offset_data = _load_json(files["offset"], rec.errors, "ping")
        offset = offset_data.get("realtime_minus_monotonic")
        if offset is None:
            offset = time.time() - time.monotonic()
            rec.errors.append("ping: clock offset not recorded; using the current one")
        rec.sent, rec.received = ping_records(text, float(offset), 1.0 / spec.pps(), t_start)
    return rec
