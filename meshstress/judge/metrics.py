"""Numbers from a flow's per-packet record (pure: no I/O). Keys in docs/traffic.md.

An outage of a udp or ping flow is a run of consecutive sent packets none of which
arrived: it starts at the send time of the first lost packet and ends at the send time
of the next delivered one (or, if none followed, at the flow's end: not resumed). Runs
shorter than `min_gap` (default: 3 packet intervals, at least 0.1 s) are ordinary loss.
A tcp flow's outages ("stalls") are runs of 100 ms receiver intervals without a byte
(default min_gap 0.3 s).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshstress.traffic.flows import FlowRecord

SERIES_BIN = 0.5  # seconds per point of a udp/ping flow's time series
TCP_MIN_GAP = 0.3
NEAR = 1.0  # an outage "follows" an event if it begins at most this long after it


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks
    (numpy's default): rank q/100 * (n - 1) of the sorted values."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"percentile q must be within 0..100, got {q!r}")
    s = sorted(values)
    rank = q / 100.0 * (len(s) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(s) - 1)
    frac = rank - lo
    if frac == 0 or s[lo] == s[hi]:
        return float(s[lo])
    return float(s[lo] + (s[hi] - s[lo]) * frac)


def _default_gap(record: FlowRecord) -> float:
    interval = record.interval
    if interval is None:
        return TCP_MIN_GAP
    return max(3.0 * interval, 0.1)


def _sent(record: FlowRecord) -> list[tuple[int, float]]:
    """Sent packets by send time; rebuilt from the received ones if the sender's record
    is missing."""
    sent = record.sent
    if not sent and record.received:
        first: dict[int, float] = {}
        for seq, ts, _ in record.received:
            first.setdefault(seq, ts)
        sent = list(first.items())
    return sorted(sent, key=lambda p: (p[1], p[0]))


def _first_arrivals(record: FlowRecord, sent_seqs: set[int]) -> list[tuple[int, float, float]]:
    seen: set[int] = set()
    out = []
    for p in record.received:
        if p[0] in sent_seqs and p[0] not in seen:
            seen.add(p[0])
            out.append(p)
    return out


def span(record: FlowRecord) -> tuple[float, float]:
    """The flow's span: first send to last send plus one interval (udp, ping), or the
    scheduled start to end (tcp, or nothing sent)."""
    interval = record.interval
    sent = _sent(record) if interval is not None else []
    if not sent or interval is None:
        return record.t_start, max(record.t_start, record.t_end)
    return sent[0][1], sent[-1][1] + interval


def _gaps(record: FlowRecord, min_gap: float | None) -> list[tuple[float, float, bool]]:
    """(start, end, resumed) of every outage at least min_gap long, in time order."""
    gap = _default_gap(record) if min_gap is None else min_gap
    runs: list[tuple[float, float, bool]] = []
    if record.spec.kind == "rr":
        runs = _rr_runs(record)
    elif record.interval is None:  # tcp: 100 ms bins without a byte
        width = record.bin_s
        n = max(0, math.ceil((record.t_end - record.t_start) / width - 1e-9))
        got = set()
        for t, nbytes in record.bins:
            if nbytes > 0:
                got.add(round((t - record.t_start) / width))
        lost_from: int | None = None
        for k in range(n):
            if k in got:
                if lost_from is not None:
                    runs.append(
                        (record.t_start + lost_from * width, record.t_start + k * width, True)
                    )
                    lost_from = None
            elif lost_from is None:
                lost_from = k
        if lost_from is not None:
            runs.append((record.t_start + lost_from * width, record.t_end, False))
    else:
        sent = _sent(record)
        delivered = {p[0] for p in record.received}
        first_lost: float | None = None
        for seq, ts in sent:
            if seq in delivered:
                if first_lost is not None:
                    runs.append((first_lost, ts, True))
                    first_lost = None
            elif first_lost is None:
                first_lost = ts
        if first_lost is not None:
            runs.append((first_lost, span(record)[1], False))
    return [r for r in runs if r[1] - r[0] >= gap - 1e-9]


def outages(record: FlowRecord, min_gap: float | None = None) -> list[tuple[float, float]]:
    """Disjoint (start, end) monotonic times when nothing was delivered for at least
    min_gap seconds, in time order."""
    return [(a, b) for a, b, _ in _gaps(record, min_gap)]


def outage_after(record: FlowRecord, t_event: float, horizon: float = 30.0) -> float | None:
    """Seconds from t_event until delivery resumed: the first outage in progress at
    t_event or beginning within NEAR (1 s) after it. 0.0 if there is none; None if
    delivery never resumed, or only more than `horizon` seconds after t_event."""
    for start, end, resumed in _gaps(record, None):
        if end <= t_event or start > t_event + NEAR:
            continue
        if not resumed or end - t_event > horizon:
            return None
        return max(0.0, end - t_event)
    return 0.0


def _ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {k: None for k in ("min", "mean", "p50", "p90", "p99", "max")}
    return {
        "min": round(min(values), 3),
        "mean": round(sum(values) / len(values), 3),
        "p50": round(percentile(values, 50), 3),
        "p90": round(percentile(values, 90), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(max(values), 3),
    }


def _stddev(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def rfc3550_jitter(arrivals: Sequence[tuple[float, float]]) -> float | None:
    """RFC 3550 interarrival jitter (seconds) over (t_send, t_recv) pairs in arrival
    order: J += (|D| - J) / 16 with D the change in transit time between consecutive
    arrivals."""
    if len(arrivals) < 2:
        return None
    j = 0.0
    prev = arrivals[0][1] - arrivals[0][0]
    for ts, tr in arrivals[1:]:
        transit = tr - ts
        j += (abs(transit - prev) - j) / 16.0
        prev = transit
    return j


def _outage_fields(record: FlowRecord, t0: float) -> dict[str, Any]:
    outs = outages(record)
    lengths = [b - a for a, b in outs]
    return {
        "outages": [[round(a - t0, 3), round(b - t0, 3), round(b - a, 3)] for a, b in outs],
        "longest_outage_s": round(max(lengths), 3) if lengths else 0.0,
        "outage_total_s": round(sum(lengths), 3),
    }


def loss_runs(fates: Sequence[bool]) -> dict[str, Any]:
    """Runs of consecutive lost packets in send order (`fates`: arrived or not, by
    sequence number): how many, their mean and longest length. Independent loss p gives
    a mean run of 1/(1-p); Gilbert-Elliott bursts give longer ones."""
    runs: list[int] = []
    n = 0
    for arrived in fates:
        if arrived:
            if n:
                runs.append(n)
            n = 0
        else:
            n += 1
    if n:
        runs.append(n)
    return {
        "loss_runs": len(runs),
        "loss_run_mean": round(sum(runs) / len(runs), 3) if runs else None,
        "loss_run_max": max(runs) if runs else 0,
    }


def _packet_metrics(record: FlowRecord, t0: float) -> dict[str, Any]:
    sent = _sent(record)
    seqs = {s for s, _ in sent}
    first = _first_arrivals(record, seqs)
    n_sent, n_recv = len(sent), len(first)
    in_sent = sum(1 for p in record.received if p[0] in seqs)
    reordered = 0
    highest = -1
    for seq, _, _ in first:
        if seq < highest:
            reordered += 1
        highest = max(highest, seq)
    delays = [(tr - ts) * 1000.0 for _, ts, tr in first]
    arrived = {seq for seq, _, _ in first}
    lo, hi = span(record)
    out: dict[str, Any] = {
        "sent": n_sent,
        "received": n_recv,
        "lost": n_sent - n_recv,
        "duplicates": in_sent - n_recv,
        "reordered": reordered,
        "delivery_ratio": round(n_recv / n_sent, 6) if n_sent else 0.0,
        "span_s": round(hi - lo, 3),
        "start_delay_s": round(lo - record.t_start, 3) if sent else None,
        **loss_runs([seq in arrived for seq, _ in sorted(sent)]),
    }
    sd = _stddev(delays)
    if record.spec.kind == "ping":
        out["rtt_ms"] = _ms(delays)
        out["rtt_stddev_ms"] = None if sd is None else round(sd, 3)
    else:
        jit = rfc3550_jitter([(ts, tr) for _, ts, tr in first])
        out["latency_ms"] = _ms(delays)
        out["jitter_ms"] = None if jit is None else round(jit * 1000.0, 3)
        out["latency_stddev_ms"] = None if sd is None else round(sd, 3)
        length = hi - lo
        size = record.spec.size
        out["throughput_bps"] = round(n_recv * size * 8 / length, 1) if length > 0 else 0.0
        out["offered_bps"] = round(n_sent * size * 8 / length, 1) if length > 0 else 0.0
        out["send_errors"] = record.send_errors
    out.update(_outage_fields(record, t0))
    # time series by send time: share delivered and median one-way delay / RTT per bin
    delivered = {p[0]: (p[2] - p[1]) * 1000.0 for p in first}
    nbins = max(1, math.ceil((hi - t0) / SERIES_BIN)) if sent else 0
    start_bin = max(0, math.floor((lo - t0) / SERIES_BIN)) if sent else 0
    counts: dict[int, list[Any]] = {}
    for seq, ts in sent:
        b = math.floor((ts - t0) / SERIES_BIN)
        c = counts.setdefault(b, [0, []])
        c[0] += 1
        if seq in delivered:
            c[1].append(delivered[seq])
    ts_, ratio, lat = [], [], []
    for b in range(start_bin, nbins):
        if b not in counts:
            continue
        n, ds = counts[b]
        ts_.append(round(b * SERIES_BIN, 3))
        ratio.append(round(len(ds) / n, 4))
        lat.append(round(percentile(ds, 50), 3) if ds else None)
    lat_key = "rtt_ms" if record.spec.kind == "ping" else "latency_ms"
    out["series"] = {"bin_s": SERIES_BIN, "t": ts_, "delivery_ratio": ratio, lat_key: lat}
    return out


def _tcp_metrics(record: FlowRecord, t0: float) -> dict[str, Any]:
    info = record.tcp_info
    total = sum(n for _, n in record.bins)
    length = record.t_end - record.t_start
    retrans = info.get("total_retrans")
    segs = info.get("data_segs_out", info.get("segs_out"))
    out: dict[str, Any] = {
        "bytes": total,
        "bytes_written": record.bytes_written,
        "goodput_bps": round(total * 8 / length, 1) if length > 0 else 0.0,
        "connected": record.connected,
        "retransmissions": retrans,
        "segments_out": segs,
        "retransmission_rate": round(retrans / segs, 6) if retrans is not None and segs else None,
        "bytes_retrans": info.get("bytes_retrans"),
        "rtt_ms": round(info["rtt"] / 1000.0, 3) if "rtt" in info else None,
        "span_s": round(length, 3),
        "start_delay_s": None
        if record.connected_at is None
        else round(record.connected_at - record.t_start, 3),
        "interval_s": record.bin_s,
    }
    out.update(_outage_fields(record, t0))
    out["stalls"] = out["outages"]
    n = max(0, math.ceil(length / record.bin_s - 1e-9))
    per = [0] * n
    for t, nbytes in record.bins:
        k = round((t - record.t_start) / record.bin_s)
        if 0 <= k < n:
            per[k] += nbytes
    out["series"] = {
        "bin_s": record.bin_s,
        "t": [round(record.t_start - t0 + k * record.bin_s, 3) for k in range(n)],
        "goodput_bps": [round(b * 8 / record.bin_s, 1) for b in per],
    }
    return out


def windowed(record: FlowRecord, window: tuple[float, float]) -> FlowRecord:
    """The part of a record that a window [start, end) of monotonic seconds holds: udp
    and ping packets SENT inside it, with their fate (received later or not: arrivals
    after the window's end count); tcp: the receiver's bins that start inside it (tcp_info
    is the sender's at its end, so what it gives is dropped). The record's scheduled
    span is cut to the window."""
    from dataclasses import replace

    a, b = window
    if not b > a:
        raise ValueError(f"a window ends after it starts, got {window!r}")
    lo, hi = max(a, record.t_start), min(b, max(record.t_start, record.t_end))
    if record.spec.kind == "tcp":
        bins = [(t, n) for t, n in record.bins if a <= t < b]
        return replace(record, bins=bins, t_start=lo, t_end=max(lo, hi), tcp_info={},
                       bytes_written=0)  # fmt: skip
    sent = [(s, t) for s, t in _sent(record) if a <= t < b]
    seqs = {s for s, _ in sent}
    received = [p for p in record.received if p[0] in seqs]
    return replace(record, sent=sent, received=received, t_start=lo, t_end=max(lo, hi))


def flow_metrics(
    record: FlowRecord, t0: float, window: tuple[float, float] | None = None
) -> dict[str, Any]:
    """A flow's numbers as a JSON-ready dict (times relative to t0; keys in
    docs/traffic.md). With `window` (start, end) in the records' clock (monotonic
    seconds), only what was sent inside it counts (`windowed`; rr: the requests
    scheduled inside [start, end)); a tcp flow then has no tcp_info numbers
    (retransmissions: None)."""
    if record.spec.kind == "crafted":
        out = crafted_metrics(record, t0)
        out["errors"] = list(record.errors)
        return out
    if record.spec.kind == "rr":
        out = _rr_metrics(rr_window(record, window) if window else record, t0)
        out["errors"] = list(record.errors)
        return out
    if window is not None:
        record = windowed(record, window)
        if record.spec.kind == "tcp":
            out = _tcp_metrics(record, t0)
            out["bytes_written"] = None
            out["errors"] = list(record.errors)
            return out
    if record.spec.kind == "tcp":
        out = _tcp_metrics(record, t0)
    else:
        out = _packet_metrics(record, t0)
    out["errors"] = list(record.errors)
    return out


def crafted_metrics(record: FlowRecord, t0: float) -> dict[str, Any]:
    """A crafted flow's numbers: what its raw socket sent (nobody receives these)."""
    sent = record.sent
    span_s = sent[-1][1] - sent[0][1] if len(sent) > 1 else 0.0
    return {
        "sent": len(sent),
        "frames_per_packet": record.frames_per_packet,
        "frames_sent": record.frames_sent,
        "send_errors": record.send_errors,
        "asked_pps": record.spec.pps(),
        "achieved_pps": round((len(sent) - 1) / span_s, 1) if span_s > 0 else None,
        "first_s": round(sent[0][1] - t0, 3) if sent else None,
        "last_s": round(sent[-1][1] - t0, 3) if sent else None,
    }


# --- request/response (kind "rr") ------------------------------------------------------

RR_OUTCOMES = ("ok", "timeout", "connect_failed", "error", "skipped", "pending")


def _rr_runs(record: FlowRecord) -> list[tuple[float, float, bool]]:
    """(start, end, resumed) of every stretch without a successful response: between
    consecutive responses that completed a request, from the first request's schedule to
    the first response, and from the last response to the last schedule plus one interval
    (not resumed)."""
    reqs = record.requests
    if not reqs:
        return []
    interval = 1.0 / record.spec.pps()
    lo = min(q.t_sched for q in reqs)
    hi = max(q.t_sched for q in reqs) + interval
    points = [lo] + sorted(q.t_done for q in reqs if q.outcome == "ok" and q.t_done is not None)
    runs = [(a, b, True) for a, b in zip(points, points[1:], strict=False) if b > a]
    if hi > points[-1]:
        runs.append((points[-1], hi, False))
    return runs


def rr_window(record: FlowRecord, window: tuple[float, float]) -> FlowRecord:
    """The part of an rr record whose requests were scheduled in [start, end)."""
    lo, hi = window
    reqs = [q for q in record.requests if lo <= q.t_sched < hi]
    ids = {q.id for q in reqs}
    return dataclasses.replace(
        record,
        t_start=max(record.t_start, lo),
        t_end=min(record.t_end, hi),
        requests=reqs,
        served=[p for p in record.served if p[0] in ids],
        responses=[p for p in record.responses if p[0] in ids],
    )


def _pcts(values: list[float]) -> dict[str, float | None]:
    keys = ("min", "mean", "p50", "p95", "p99", "max")
    if not values:
        return {k: None for k in keys}
    return {
        "min": round(min(values), 3),
        "mean": round(sum(values) / len(values), 3),
        "p50": round(percentile(values, 50), 3),
        "p95": round(percentile(values, 95), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(max(values), 3),
    }


def _rr_metrics(record: FlowRecord, t0: float) -> dict[str, Any]:
    reqs = record.requests
    rr = record.spec.rr
    tcp = rr is not None and rr.proto == "tcp"
    outcomes = Counter(q.outcome for q in reqs)
    decided = [q for q in reqs if q.decided]
    ok = [q for q in reqs if q.outcome == "ok" and q.ok_attempt is not None]
    results = Counter(r for q in reqs for r in q.results)
    attempts = sum(len(q.sends) for q in reqs)
    started = sum(1 for q in reqs if q.sends)
    tried = sum(len(q.sends) for q in decided)
    latency: dict[int, float] = {}  # id -> ms from the first send to the response
    first, last = [], []
    for q in ok:
        k = q.ok_attempt or 0
        if q.t_done is not None and k < len(q.sends):
            latency[q.id] = (q.t_done - q.sends[0]) * 1000.0
            first.append(latency[q.id])
            last.append((q.t_done - q.sends[k]) * 1000.0)
    connect = [c * 1000.0 for q in reqs for c in q.connect_s if c is not None]
    out: dict[str, Any] = {
        "proto": rr.proto if rr else None,
        "requests": len(reqs),
        "started": started,
        "decided": len(decided),
        "ok": len(ok),
        "success_ratio": round(len(ok) / len(decided), 6) if decided else 0.0,
        "outcomes": {k: outcomes.get(k, 0) for k in RR_OUTCOMES},
        "attempts": attempts,
        "retries": attempts - started,
        "attempts_per_success": round(tried / len(ok), 4) if ok else None,
        "first_attempt_ok": sum(1 for q in ok if q.ok_attempt == 0),
        "timeouts": results.get("timeout", 0),
        "connect_failures": results.get("connect_failed", 0),
        "attempt_errors": results.get("error", 0),
        "server_received": len(record.served),
        "responses": len(record.responses),
        "late_responses": len(record.responses) - len(ok),
        "latency_ms": _pcts(first),
        "attempt_latency_ms": _pcts(last),
        "connect_ms": _pcts(connect) if tcp else None,
        "connects_ok": len(connect) if tcp else None,
        "rate_rps": record.spec.pps(),
        "start_delay_s": round(min(q.t_sched for q in reqs) - record.t_start, 3) if reqs else None,
    }
    out.update(_outage_fields(record, t0))
    # per 0.5 s of schedule time: the share of decided requests that succeeded, and the
    # median latency of those
    bins: dict[int, tuple[list[bool], list[float]]] = {}
    for q in decided:
        done, ms = bins.setdefault(math.floor((q.t_sched - t0) / SERIES_BIN), ([], []))
        done.append(q.id in latency)
        if q.id in latency:
            ms.append(latency[q.id])
    t_: list[float] = []
    ratio: list[float] = []
    lat: list[float | None] = []
    for b, (done, ms) in sorted(bins.items()):
        t_.append(round(b * SERIES_BIN, 3))
        ratio.append(round(sum(done) / len(done), 4))
        lat.append(round(percentile(ms, 50), 3) if ms else None)
    out["series"] = {"bin_s": SERIES_BIN, "t": t_, "success_ratio": ratio, "latency_ms": lat}
    return out
