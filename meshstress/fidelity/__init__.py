"""Does the mesh do what its topology says? Configured impairments against measured ones.

Each case is one link of its own (nodes `<case>a`, `<case>b`) carrying a fixed number
of numbered UDP datagrams from a to b (the `dir` case: both ways at once). A datagram
carries its sequence number and its send time (CLOCK_REALTIME, taken just before
sendto); the receiver records each arrival with the kernel's receive timestamp
(SO_TIMESTAMPNS, taken when veth hands the frame over, so the receiver's own scheduling
delay does not count). Every number comes from what was actually sent and what arrived,
packet by packet; the statistics, accepted intervals and neighbouring settings of each
check are in docs/fidelity.md.

`measure_netem(mesh, dir)` runs the netem cases on a mesh of `netem_topology()`;
`measure_rate(mesh, rate, dir)` one tbf case on `rate_topology(rates)` (tbf alone works
on hosts without netem). They return `Row`s (`Row.as_dict()` for JSON). The agents run
inside the nodes: `python -m meshstress.fidelity.agent send|recv ...`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from meshstress.judge import stats

if TYPE_CHECKING:
    from meshstress.build import Mesh
    from meshstress.model.topology import Topology

FRAME_OVERHEAD = 14 + 20 + 8  # Ethernet, IPv4, UDP headers: tbf counts the whole frame
SIZE = 200  # payload bytes of the statistics cases
RATE_SIZE = 1472  # payload of the rate cases: 1514-byte frames at MTU 1500
# bits of a frame whose flip no checksum catches: source MAC (48), destination group bit
UNDETECTED_BITS = 49

# The binomial checks accept a count inside its 99.9% interval: with 8 such checks a 99%
# level would fail a correct kernel in about 7.7% of CI runs, 99.9% in about 0.8%. The
# counts are chosen so that neighbouring settings still have disjoint intervals
# (tests/test_stats.py); the table of benchmarks/fidelity.py uses the same level.
CONFIDENCE = 0.999
LOSS = (0.01, 0.05, 0.20, 0.50)
LOSS_PACKETS = 2000
BURST = 4.0
BURST_LOSS = 0.20
BURST_PACKETS = 4000
BURST_TOLERANCE = 0.20
DELAYS_MS = (10.0, 50.0, 200.0)
DELAY_PACKETS = 400
DELAY_TOLERANCE = 0.05
JITTERS_MS = (5.0, 10.0)
JITTER_DELAY_MS = 50.0
JITTER_PACKETS = 1000
JITTER_TOLERANCE = 0.10
BASE_PACKETS = 600
REF_DELAY_MS = 1.0  # the netem baseline: a link with this delay, minus it
# delays are read at a low quantile: a VM's timers fire late (a heavy tail that grows with
# the host's load), which adds to the delay netem applies; the 5% quantile of d + late is
# d plus the 5% quantile of the lateness, which the netem baseline subtracts
DELAY_QUANTILE = 0.05
REORDER = 0.25
REORDER_DELAY_MS = 20.0
DUPLICATE = 0.10
CORRUPT = 0.05
PACKETS = 3000  # reorder, duplicate, corrupt, each direction (corrupt 5% vs 2.5% needs it)
DIR_LOSS = 0.20
DIR_DELAY_MS = 50.0
ZERO_DELAY_BAND_MS = 1.0  # a direction configured without delay: residual within +-1 ms
RATES_MBIT = (1.0, 10.0, 100.0)
RATE_TOLERANCE = 0.05
RATE_OFFER = 1.5  # offered load / configured rate
RATE_SECONDS = 3.0
BACKLOG_MARGIN = 0.001  # a datagram sent this long before its predecessor left was queued
RATE_MIN_PAIRS = 100  # backlogged pairs needed for a rate


# --- running flows on a mesh -----------------------------------------------------------


@dataclass
class Stream:
    """One direction's datagrams: send times by seq, arrivals in arrival order."""

    name: str
    size: int
    sent: list[float]
    arrivals: list[tuple[int, float, float]]  # (seq, t_send, t_recv)
    drops: int = 0  # the receiving socket's overflow counter (must stay 0)
    errors: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.sent)

    def distinct(self) -> set[int]:
        return {s for s, _, _ in self.arrivals if s < self.n}

    def lost(self) -> int:
        return self.n - len(self.distinct())

    def duplicates(self) -> int:
        return sum(1 for s, _, _ in self.arrivals if s < self.n) - len(self.distinct())

    def latencies_ms(self) -> list[float]:
        """One-way latency of each datagram's first arrival."""
        seen: set[int] = set()
        out = []
        for s, ts, tr in self.arrivals:
            if s < self.n and s not in seen:
                seen.add(s)
                out.append((tr - ts) * 1000.0)
        return out

    def loss_runs(self) -> list[int]:
        got = self.distinct()
        runs, k = [], 0
        for seq in range(self.n):
            if seq in got:
                if k:
                    runs.append(k)
                k = 0
            else:
                k += 1
        if k:
            runs.append(k)
        return runs


@dataclass
class Plan:
    name: str
    src: str
    dst: str
    count: int
    pps: float
    size: int = SIZE


def pin_neighbour(mesh: Mesh, src: str, dst: str) -> None:
    """A permanent ARP entry for dst on src's link to it: a lossy direction could
    otherwise lose the ARP exchange itself and with it a second of the stream."""
    src_if = next(i["ifname"] for i in mesh.state.interfaces[src] if i["peer"] == dst)
    dst_if = next(i["ifname"] for i in mesh.state.interfaces[dst] if i["peer"] == src)
    dsock = mesh.netlink(dst)
    mac = dsock.get_links(dsock.link_lookup(ifname=dst_if)[0])[0].get_attr("IFLA_ADDRESS")
    ssock = mesh.netlink(src)
    ssock.neigh(
        "replace",
        dst=mesh.address(dst),
        lladdr=mac,
        ifindex=ssock.link_lookup(ifname=src_if)[0],
        state=0x80,  # NUD_PERMANENT
    )


def run_streams(
    mesh: Mesh, plans: list[Plan], workdir: str, linger: float = 1.0
) -> dict[str, Stream]:
    """Run every plan at once: one receiver process for all of them, then one sender
    (`python -m meshstress.fidelity.agent`); return the streams by name."""
    os.makedirs(workdir, exist_ok=True)
    agent = [sys.executable, "-m", "meshstress.fidelity.agent"]

    def path(p: Plan, what: str) -> str:
        return os.path.join(workdir, f"{p.name}.{what}")

    def launch(node: str, argv: list[str], log: str) -> subprocess.Popen[Any]:
        with open(log, "w") as err:
            proc = mesh.popen(
                node, argv, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL
            )
        mesh.record_process(proc, node, "fidelity", argv[:4])
        return proc

    ready = os.path.join(workdir, "ready")
    for p in plans:
        pin_neighbour(mesh, p.src, p.dst)
        pin_neighbour(mesh, p.dst, p.src)
        for what in ("recv.json", "send.json"):
            if os.path.exists(path(p, what)):
                os.unlink(path(p, what))
    if os.path.exists(ready):
        os.unlink(ready)
    ports = {p.name: 47000 + i for i, p in enumerate(plans)}
    recv_spec = [
        {"ns": mesh.ns(p.dst), "bind": mesh.address(p.dst), "port": ports[p.name],
         "out": path(p, "recv.json")}
        for p in plans
    ]  # fmt: skip
    send_spec = [
        {"ns": mesh.ns(p.src), "bind": mesh.address(p.src), "to": mesh.address(p.dst),
         "port": ports[p.name], "count": p.count, "pps": p.pps, "size": p.size,
         "out": path(p, "send.json")}
        for p in plans
    ]  # fmt: skip
    for name, spec in (("recv", recv_spec), ("send", send_spec)):
        with open(os.path.join(workdir, f"{name}.spec.json"), "w") as f:
            json.dump(spec, f)
    recv_log = os.path.join(workdir, "recv.log")
    receiver = launch(
        plans[0].dst, [*agent, "recv", os.path.join(workdir, "recv.spec.json"), ready], recv_log
    )
    sender: subprocess.Popen[Any] | None = None
    try:
        limit = time.monotonic() + 120.0
        while not os.path.exists(ready):
            if receiver.poll() is not None or time.monotonic() > limit:
                raise RuntimeError(f"fidelity receiver did not start: see {recv_log}")
            time.sleep(0.02)
        sender = launch(
            plans[0].src,
            [*agent, "send", os.path.join(workdir, "send.spec.json")],
            os.path.join(workdir, "send.log"),
        )
        sender.wait(timeout=900)
        time.sleep(linger)
    finally:
        for proc in (sender, receiver):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (sender, receiver):
            if proc is None:
                continue
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
    if sender.returncode != 0:
        raise RuntimeError(f"fidelity sender exited {sender.returncode}: see {workdir}/send.log")
    return read_streams(plans, workdir)


def read_streams(plans: list[Plan], workdir: str) -> dict[str, Stream]:
    """The streams of `plans` from the ends' files in workdir (what run_streams wrote)."""

    def path(p: Plan, what: str) -> str:
        return os.path.join(workdir, f"{p.name}.{what}")

    out = {}
    for p in plans:
        errors: list[str] = []
        try:
            with open(path(p, "send.json")) as f:
                send = json.load(f)
            with open(path(p, "recv.json")) as f:
                recv = json.load(f)
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"fidelity stream {p.name}: no record: {exc}") from None
        if send.get("send_errors"):
            errors.append(f"{send['send_errors']} sendto errors")
        if recv.get("bad"):
            errors.append(f"{recv['bad']} short datagrams")
        out[p.name] = Stream(
            name=p.name,
            size=p.size,
            sent=[float(t) for t in send["sent"]],
            arrivals=[(int(s), float(a), float(b)) for s, a, b, _ in recv["packets"]],
            drops=int(recv.get("drops", 0)),
            errors=errors,
        )
    return out


# --- topology -------------------------------------------------------------------------


def _link(name: str, a_to_b: str, b_to_a: str = "") -> str:
    text = f'[[links]]\na = "{name}a"\nb = "{name}b"\n'
    if a_to_b:
        text += f"a_to_b = {{ {a_to_b} }}\n"
    if b_to_a:
        text += f"b_to_a = {{ {b_to_a} }}\n"
    return text


def _pct(p: float) -> str:
    return f'"{p * 100:g}%"'


def netem_cases() -> list[tuple[str, str, str]]:
    """(link name, a_to_b keys, b_to_a keys) of the netem cases."""
    cases = [("base", "", ""), ("ref", f'delay = "{REF_DELAY_MS:g}ms"', "")]
    cases += [(f"loss{p * 100:g}", f"loss = {_pct(p)}", "") for p in LOSS]
    cases.append(("burst", f"loss = {_pct(BURST_LOSS)}, loss_burst = {BURST:g}", ""))
    cases += [(f"delay{d:g}", f'delay = "{d:g}ms"', "") for d in DELAYS_MS]
    cases += [
        (f"jitter{j:g}", f'delay = "{JITTER_DELAY_MS:g}ms", jitter = "{j:g}ms"', "")
        for j in JITTERS_MS
    ]
    cases.append(("reorder", f'delay = "{REORDER_DELAY_MS:g}ms", reorder = {_pct(REORDER)}', ""))
    cases.append(("dup", f"duplicate = {_pct(DUPLICATE)}", ""))
    cases.append(("corrupt", f"corrupt = {_pct(CORRUPT)}", ""))
    cases.append(("dir", f"loss = {_pct(DIR_LOSS)}", f'delay = "{DIR_DELAY_MS:g}ms"'))
    return cases


def netem_topology() -> Topology:
    from meshstress.model import topofile

    cases = netem_cases()
    nodes = ", ".join(f'"{n}a", "{n}b"' for n, _, _ in cases)
    text = f"nodes = [{nodes}]\n" + "".join(_link(*c) for c in cases)
    return topofile.loads_toml(text, "fidelity.toml")


def rate_topology(rates_mbit: tuple[float, ...] = RATES_MBIT) -> Topology:
    from meshstress.model import topofile

    names = [f"rate{r:g}" for r in rates_mbit] + ["free"]
    nodes = ", ".join(f'"{n}a", "{n}b"' for n in names)
    text = f"nodes = [{nodes}]\n"
    text += "".join(_link(f"rate{r:g}", f'rate = "{r:g}mbit"') for r in rates_mbit)
    text += _link("free", "")
    return topofile.loads_toml(text, "fidelity-rate.toml")


# --- checks ---------------------------------------------------------------------------


@dataclass
class Row:
    """One check: the configured value, what was measured, the accepted band, and the
    neighbouring settings with their bands (each must reject the measurement)."""

    check: str
    unit: str
    configured: float
    measured: float | None
    n: int  # datagrams sent (or used) for this check
    count: int | None  # the counted events (lost, duplicated, ...), if a count
    accept: tuple[float, float]
    method: str
    neighbours: list[tuple[float, tuple[float, float]]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.measured is not None
            and not self.errors
            and stats.inside(self.measured, self.accept)
        )

    def neighbour_ok(self) -> list[bool]:
        """For each neighbour: would the measurement have passed as that setting?"""
        return [
            self.measured is not None and stats.inside(self.measured, b) for _, b in self.neighbours
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "unit": self.unit,
            "configured": self.configured,
            "measured": None if self.measured is None else round(self.measured, 6),
            "n": self.n,
            "count": self.count,
            "accept": [round(x, 6) for x in self.accept],
            "ok": self.ok,
            "method": self.method,
            "neighbours": [
                {"configured": v, "accept": [round(x, 6) for x in b], "ok": ok}
                for (v, b), ok in zip(self.neighbours, self.neighbour_ok(), strict=True)
            ],
            **self.extra,
            "errors": self.errors,
        }


def _adjacent(values: tuple[float, ...], v: float) -> list[float]:
    i = values.index(v)
    return [values[j] for j in (i - 1, i + 1) if 0 <= j < len(values)]


def binomial_row(
    check: str,
    n: int,
    count: int,
    p: float,
    neighbours: list[float],
    method: str,
    factor: float = 1.0,
) -> Row:
    """A count against Binomial(n, p * factor); measured and bands as shares of n."""

    def band(q: float) -> tuple[float, float]:
        lo, hi = stats.binomial_interval(n, min(1.0, q * factor), CONFIDENCE)
        return lo / n, hi / n

    ci = stats.clopper_pearson(count, n, CONFIDENCE) if n else (0.0, 1.0)
    return Row(
        check=check,
        unit="share",
        configured=p,
        measured=count / n if n else None,
        n=n,
        count=count,
        accept=band(p),
        method=method,
        neighbours=[(q, band(q)) for q in neighbours],
        extra={"measured_ci99": [round(ci[0], 6), round(ci[1], 6)]},
    )


def _delay_band(d: float) -> tuple[float, float]:
    if d == 0:
        return -ZERO_DELAY_BAND_MS, ZERO_DELAY_BAND_MS
    return stats.relative_band(d, DELAY_TOLERANCE)


def _stream_errors(*streams: Stream) -> list[str]:
    out = []
    for s in streams:
        out += [f"{s.name}: {e}" for e in s.errors]
        if s.drops:
            out.append(f"{s.name}: the receiving socket dropped {s.drops} datagrams")
    return out


def _plan(name: str, count: int, pps: float, src: str = "a", dst: str = "b") -> Plan:
    return Plan(name, name + src, name + dst, count, pps)


def stats_plans() -> list[Plan]:
    """The counting cases (loss, bursts, reorder, duplicate, corrupt, both directions of
    one link, with a netem baseline for the latter's delays): run together."""
    plans = [_plan(f"loss{p * 100:g}", LOSS_PACKETS, 500.0) for p in LOSS]
    plans.append(_plan("burst", BURST_PACKETS, 500.0))
    plans += [_plan(n, PACKETS, 500.0) for n in ("reorder", "dup", "corrupt")]
    plans.append(Plan("dir-ab", "dira", "dirb", PACKETS, 500.0))
    plans.append(Plan("dir-ba", "dirb", "dira", PACKETS, 500.0))
    plans.append(Plan("ref-s", "refa", "refb", DELAY_PACKETS, 150.0))
    return plans


def timing_plans() -> list[Plan]:
    """The latency cases (baselines, delay, jitter): run together, apart from the
    counting ones (less load, fewer late timers), at modest rates."""
    plans = [_plan("base", BASE_PACKETS, 150.0), _plan("ref", BASE_PACKETS, 150.0)]
    plans += [_plan(f"delay{d:g}", DELAY_PACKETS, 100.0) for d in DELAYS_MS]
    plans += [_plan(f"jitter{j:g}", JITTER_PACKETS, 200.0) for j in JITTERS_MS]
    return plans


def netem_rows(st: dict[str, Stream]) -> list[Row]:
    """The checks of the netem cases from their streams (pure)."""
    rows: list[Row] = []

    # zero-delay baselines: the ideal link (the stack), and a 1 ms netem link minus 1 ms
    # (the stack, netem, and its timer firing late). Delays are read at DELAY_QUANTILE:
    # a late timer adds a lateness L to a delay d, and the q-quantile of d + L minus that
    # of ref + L is d - ref exactly; a low q keeps clear of L's heavy tail.
    def q(values: list[float]) -> float:
        return stats.quantile(values, DELAY_QUANTILE)

    base = st["base"].latencies_ms()
    base_q = q(base) if base else 0.0
    ref = st["ref"].latencies_ms()
    ref_q = (q(ref) - REF_DELAY_MS) if ref else 0.0
    ref_s = st["ref-s"].latencies_ms()  # the same, measured alongside the dir streams
    ref_s_q = (q(ref_s) - REF_DELAY_MS) if ref_s else 0.0
    base_errors = []
    for b in (st["base"], st["ref"]):
        base_errors += _stream_errors(b) + ([f"{b.name} lost {b.lost()}"] if b.lost() else [])
    delay50 = (
        st[f"delay{JITTER_DELAY_MS:g}"].latencies_ms() if JITTER_DELAY_MS in DELAYS_MS else ref
    )

    for p in LOSS:
        s = st[f"loss{p * 100:g}"]
        r = binomial_row(
            f"loss {p * 100:g}%",
            s.n,
            s.lost(),
            p,
            _adjacent(LOSS, p),
            "sent - distinct received vs Binomial(n, p) 99% interval",
        )
        r.errors = _stream_errors(s)
        rows.append(r)

    s = st["burst"]
    runs = s.loss_runs()
    m = len(runs)
    mean = sum(runs) / m if m else None
    stat = stats.mean_interval(BURST, stats.geometric_sd(BURST), max(1, m))
    rows.append(
        Row(
            check=f"burst {BURST:g} (loss {BURST_LOSS * 100:g}%)",
            unit="packets",
            configured=BURST,
            measured=mean,
            n=s.n,
            count=m,
            accept=stats.relative_band(BURST, BURST_TOLERANCE),
            method="mean length of runs of lost sequence numbers, +-20%",
            neighbours=[
                (b, stats.relative_band(b, BURST_TOLERANCE)) for b in (BURST / 2, BURST * 2)
            ],
            extra={
                "bursts": m,
                "stat_interval99": [round(x, 4) for x in stat],
                "loss": round(s.lost() / s.n, 6) if s.n else None,
            },
            errors=_stream_errors(s),
        )
    )

    for d in DELAYS_MS:
        s = st[f"delay{d:g}"]
        lat = s.latencies_ms()
        rows.append(
            Row(
                check=f"delay {d:g} ms",
                unit="ms",
                configured=d,
                measured=q(lat) - ref_q if lat else None,
                n=s.n,
                count=len(lat),
                accept=_delay_band(d),
                method="5% quantile of latency - netem baseline (that of a 1 ms link - 1 ms), +-5%",
                neighbours=[(q, _delay_band(q)) for q in _adjacent(DELAYS_MS, d)],
                extra={
                    "over_ideal_baseline_ms": round(q(lat) - base_q, 4) if lat else None,
                    "median_over_ideal_ms": round(stats.median(lat) - base_q, 4) if lat else None,
                    "ideal_baseline_ms": round(base_q, 4),
                    "netem_baseline_ms": round(ref_q, 4),
                    "lost": s.lost(),
                },
                errors=_stream_errors(s) + base_errors,
            )
        )

    for j in JITTERS_MS:
        s = st[f"jitter{j:g}"]
        lat = s.latencies_ms()
        sd = stats.sample_sd(lat)
        # J: where the 50 ms link's latencies start minus where these start (d - J); the
        # earliest packets are the timely ones, whatever share of the others came late
        half = min(delay50) - min(lat) if lat and delay50 else None
        noise_sd = stats.sample_sd(delay50)
        literal = math.sqrt(max(0.0, sd**2 - noise_sd**2)) if sd is not None and noise_sd else None
        measured = None if half is None else half / math.sqrt(3)
        expect = j / math.sqrt(3)
        rows.append(
            Row(
                check=f"jitter {j:g} ms (sd {expect:.3f} ms)",
                unit="ms",
                configured=expect,
                measured=measured,
                n=s.n,
                count=len(lat),
                accept=stats.relative_band(expect, JITTER_TOLERANCE),
                method=f"J'/sqrt(3), J': min latency of the {JITTER_DELAY_MS:g} ms link - min of "
                "these; vs J/sqrt(3) (netem: uniform on d +- J), +-10%",
                neighbours=[
                    (q / math.sqrt(3), stats.relative_band(q / math.sqrt(3), JITTER_TOLERANCE))
                    for q in _adjacent(JITTERS_MS, j)
                ],
                extra={
                    "jitter_ms": j,
                    "raw_sd_ms": None if sd is None else round(sd, 4),
                    "median_ms": round(stats.median(lat), 4) if lat else None,
                    "min_ms": round(min(lat), 4) if lat else None,
                    "sd_minus_50ms_link_sd_ms": None if literal is None else round(literal, 4),
                },
                errors=_stream_errors(s) + base_errors,
            )
        )

    s = st["reorder"]
    lat = s.latencies_ms()
    early = sum(1 for x in lat if x < REORDER_DELAY_MS / 2)
    r = binomial_row(
        f"reorder {REORDER * 100:g}% (delay {REORDER_DELAY_MS:g} ms)",
        len(lat),
        early,
        REORDER,
        [REORDER / 2, REORDER * 2],
        "datagrams with latency < delay/2 (sent at once) vs Binomial(received, p)",
    )
    r.errors = _stream_errors(s)
    r.extra["lost"] = s.lost()
    rows.append(r)

    s = st["dup"]
    r = binomial_row(
        f"duplicate {DUPLICATE * 100:g}%",
        s.n,
        s.duplicates(),
        DUPLICATE,
        [DUPLICATE / 2, DUPLICATE * 2],
        "arrivals - distinct vs Binomial(n, p)",
    )
    r.errors = _stream_errors(s)
    rows.append(r)

    s = st["corrupt"]
    frame = s.size + FRAME_OVERHEAD
    caught = 1.0 - UNDETECTED_BITS / (8.0 * frame)
    r = binomial_row(
        f"corrupt {CORRUPT * 100:g}%",
        s.n,
        s.lost(),
        CORRUPT,
        [CORRUPT / 2, CORRUPT * 2],
        f"sent - distinct received (checksum drops) vs Binomial(n, p * {caught:.4f})",
        factor=caught,
    )
    # the socket's drop counter counts the UDP checksum failures here, not an overflow
    r.errors = _stream_errors(Stream(s.name, s.size, s.sent, s.arrivals, 0, s.errors))
    r.extra["udp_checksum_drops"] = s.drops
    rows.append(r)

    ab, ba = st["dir-ab"], st["dir-ba"]
    r = binomial_row(
        f"dir a->b loss {DIR_LOSS * 100:g}%",
        ab.n,
        ab.lost(),
        DIR_LOSS,
        [0.0],
        "a->b loss vs its own setting; neighbour: b->a's (0%)",
    )
    r.errors = _stream_errors(ab)
    rows.append(r)
    r = binomial_row(
        "dir b->a loss 0%",
        ba.n,
        ba.lost(),
        0.0,
        [DIR_LOSS],
        "b->a loss vs its own setting; neighbour: a->b's",
    )
    r.errors = _stream_errors(ba)
    rows.append(r)
    for name, s, d, other in (("a->b", ab, 0.0, DIR_DELAY_MS), ("b->a", ba, DIR_DELAY_MS, 0.0)):
        lat = s.latencies_ms()
        rows.append(
            Row(
                check=f"dir {name} delay {d:g} ms",
                unit="ms",
                configured=d,
                measured=q(lat) - ref_s_q if lat else None,
                n=s.n,
                count=len(lat),
                accept=_delay_band(d),
                method="5% quantile of latency - netem baseline; neighbour: the other direction's",
                neighbours=[(other, _delay_band(other))],
                errors=_stream_errors(s) + base_errors,
            )
        )
    return rows


def measure_netem(
    mesh: Mesh, workdir: str, timings: dict[str, float] | None = None
) -> tuple[list[Row], dict[str, Stream]]:
    """All netem cases on a mesh of netem_topology(): the counting phase, then the
    timing phase (seconds of each into `timings`)."""
    linger = 1.0 + max(DELAYS_MS) / 1000.0
    t = time.monotonic()
    streams = run_streams(mesh, stats_plans(), os.path.join(workdir, "stats"), linger=linger)
    t1 = time.monotonic()
    streams.update(
        run_streams(mesh, timing_plans(), os.path.join(workdir, "timing"), linger=linger)
    )
    if timings is not None:
        timings["stats_phase_s"] = round(t1 - t, 1)
        timings["timing_phase_s"] = round(time.monotonic() - t1, 1)
    return netem_rows(streams), streams


# --- rate (tbf) -------------------------------------------------------------------------


def bucket_frames(rate_mbit: float, size: int = RATE_SIZE) -> int:
    """Frames that tbf's bucket (impair.tbf_args: 4 ms at the rate, at least two frames)
    lets through at once after the queue ran empty."""
    from meshstress.build import impair

    burst = max(2 * impair._frame(1500), math.ceil(rate_mbit * 1e6 / 8 * impair.TBF_BURST_S))
    return math.ceil(burst / (size + FRAME_OVERHEAD))


def rate_of(stream: Stream, skip: int = 0) -> tuple[float | None, int]:
    """The shaper's rate, from the arrivals while it held a backlog: a pair of
    consecutive arrivals counts when the second datagram was sent at least
    BACKLOG_MARGIN before the first arrived (so tbf held it: the gap between them is
    tbf's pace, not the sender's), and after the first `skip` such pairs of each busy
    spell (the bucket's stored tokens let those through early). Frame bits per second
    over those gaps, by the kernel's receive timestamps; and how many pairs."""
    arr = sorted(stream.arrivals, key=lambda a: a[2])
    frame_bits = (stream.size + FRAME_OVERHEAD) * 8
    run = pairs = 0
    gaps = 0.0
    for prev, cur in zip(arr, arr[1:], strict=False):
        if cur[1] + BACKLOG_MARGIN <= prev[2]:
            run += 1
            if run > skip:
                gaps += cur[2] - prev[2]
                pairs += 1
        else:
            run = 0
    return (pairs * frame_bits / gaps if gaps > 0 else None), pairs


def offered_of(stream: Stream) -> float | None:
    if stream.n < 2 or stream.sent[-1] <= stream.sent[0]:
        return None
    return (stream.n - 1) * (stream.size + FRAME_OVERHEAD) * 8 / (stream.sent[-1] - stream.sent[0])


def rate_plan(rate_mbit: float, seconds: float = RATE_SECONDS, offer: float = RATE_OFFER) -> Plan:
    pps = offer * rate_mbit * 1e6 / (8 * (RATE_SIZE + FRAME_OVERHEAD))
    return Plan(
        f"rate{rate_mbit:g}",
        f"rate{rate_mbit:g}a",
        f"rate{rate_mbit:g}b",
        max(50, round(pps * seconds)),
        pps,
        RATE_SIZE,
    )


def rate_row(rate_mbit: float, s: Stream, rates: tuple[float, ...] = RATES_MBIT) -> Row:
    measured, used = rate_of(s, skip=bucket_frames(rate_mbit, s.size))
    offered = offered_of(s)
    errors = _stream_errors(s)
    # infeasible: too few backlogged pairs, or a sender slower than the rate on average
    # (its bursts then meet late timers' stored tokens and the backlogged gaps mislead)
    if used < RATE_MIN_PAIRS or offered is None or offered < rate_mbit * 1e6:
        errors.append(
            f"infeasible here: the sender offered {0 if offered is None else offered / 1e6:.2f}"
            f" Mbit/s on average and tbf held a backlog for {used} datagrams: this machine "
            f"cannot check {rate_mbit:g} Mbit/s"
        )
    neighbours = [q for q in rates if q != rate_mbit]
    neighbours = (
        [q for q in neighbours if q in _adjacent(rates, rate_mbit)]
        if rate_mbit in rates
        else neighbours
    )
    return Row(
        check=f"rate {rate_mbit:g} Mbit/s",
        unit="Mbit/s",
        configured=rate_mbit,
        measured=None if measured is None else measured / 1e6,
        n=s.n,
        count=used,
        accept=stats.relative_band(rate_mbit, RATE_TOLERANCE),
        method="frame bits / arrival gaps while tbf held a backlog, +-5%",
        neighbours=[(q, stats.relative_band(q, RATE_TOLERANCE)) for q in neighbours],
        extra={
            "offered_mbit": None if offered is None else round(offered / 1e6, 3),
            "received": len(s.arrivals),
        },
        errors=errors,
    )


def measure_rate(mesh: Mesh, rate_mbit: float, workdir: str) -> tuple[Row, Stream]:
    """One tbf case, alone on the machine (the sender must outrun the rate)."""
    plan = rate_plan(rate_mbit)
    s = run_streams(mesh, [plan], workdir)[plan.name]
    return rate_row(rate_mbit, s), s


def measure_free(mesh: Mesh, workdir: str, count: int = 20000) -> dict[str, Any]:
    """What the machine delivers without shaping: `count` full-size datagrams as fast as
    the sender can, over the ideal link of rate_topology()."""
    plan = Plan("free", "freea", "freeb", count, 0.0, RATE_SIZE)
    s = run_streams(mesh, [plan], workdir)["free"]
    arr = sorted(tr for _, _, tr in s.arrivals)
    measured = (
        (len(arr) - 1) * (s.size + FRAME_OVERHEAD) * 8 / (arr[-1] - arr[0])
        if len(arr) > 1 and arr[-1] > arr[0]
        else None
    )
    offered = offered_of(s)
    return {
        "check": "unshaped",
        "n": s.n,
        "received": len(s.distinct()),
        "offered_mbit": None if offered is None else round(offered / 1e6, 3),
        "delivered_mbit": None if measured is None else round(measured / 1e6, 3),
        "drops": s.drops,
    }
