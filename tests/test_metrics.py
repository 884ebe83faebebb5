"""meshstress.judge.metrics, pure: worked examples and hypothesis properties."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshstress.judge.metrics import (
    flow_metrics,
    outage_after,
    outages,
    percentile,
    rfc3550_jitter,
    span,
)
from meshstress.traffic.flows import FlowRecord, FlowSpec

UDP = FlowSpec("u", "udp", "a", "b", rate_pps=100, size=200)


def udp_record(delivered: list[bool], delay: float = 0.002, t_start: float = 50.0) -> FlowRecord:
    sent = [(i, t_start + i / 100) for i in range(len(delivered))]
    received = [(i, t, t + delay) for (i, t), ok in zip(sent, delivered, strict=True) if ok]
    return FlowRecord(UDP, t_start, t_start + len(delivered) / 100, sent=sent, received=received)


# --- percentile ------------------------------------------------------------------------


def test_percentile_interpolates_linearly() -> None:
    v = [10.0, 20.0, 30.0, 40.0]
    assert percentile(v, 0) == 10 and percentile(v, 100) == 40
    assert percentile(v, 50) == pytest.approx(25.0)
    assert percentile(v, 90) == pytest.approx(37.0)  # rank 2.7
    assert percentile([5.0], 99) == 5.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(st.lists(finite, min_size=1, max_size=50), st.floats(0, 100), st.floats(0, 100))
def test_percentile_is_monotone_in_q_and_bounded(values: list[float], q1: float, q2: float) -> None:
    lo, hi = sorted((q1, q2))
    a, b = percentile(values, lo), percentile(values, hi)
    assert a <= b + 1e-9 * max(1.0, abs(b))
    assert min(values) - 1e-6 <= a and b <= max(values) + 1e-6


# --- udp --------------------------------------------------------------------------------


def test_udp_example_counts_loss_duplicates_reordering_latency() -> None:
    sent = [(i, 10.0 + i / 100) for i in range(100)]
    received = [(i, t, t + 0.004) for i, t in sent if not 40 <= i < 60]  # 20 lost in a row
    received[5], received[6] = received[6], received[5]  # one reordered
    received.append(received[-1])  # one duplicate
    rec = FlowRecord(UDP, 10.0, 11.0, sent=sent, received=received)
    m = flow_metrics(rec, t0=9.0)
    assert (m["sent"], m["received"], m["lost"], m["duplicates"], m["reordered"]) == (
        100, 80, 20, 1, 1,
    )  # fmt: skip
    assert m["delivery_ratio"] == 0.8
    assert m["latency_ms"]["p50"] == pytest.approx(4.0) and m["latency_ms"]["max"] == 4.0
    assert m["jitter_ms"] == pytest.approx(0.0, abs=1e-6)
    assert m["outages"] == [[1.4, 1.6, 0.2]] and m["longest_outage_s"] == 0.2
    assert m["span_s"] == 1.0 and m["start_delay_s"] == 0.0
    assert m["throughput_bps"] == pytest.approx(80 * 200 * 8 / 1.0)
    assert m["series"]["t"] == [1.0, 1.5] and m["series"]["delivery_ratio"] == [0.8, 0.8]
    json.dumps(m, allow_nan=False)  # JSON-ready


def test_short_losses_are_not_outages_and_a_final_one_never_resumes() -> None:
    pattern = [True] * 10 + [False, False] + [True] * 10 + [False] * 30
    rec = udp_record(pattern)
    outs = outages(rec)  # 2 lost (20 ms) < default min gap (0.1 s); the trailing 30 count
    assert outs == [pytest.approx((50.22, 50.52))]
    assert outages(rec, min_gap=0.01)[0] == pytest.approx((50.10, 50.12))
    assert outage_after(rec, 50.2) is None  # never resumed
    assert outage_after(rec, 49.0) == 0.0  # nothing began within a second of it


def test_outage_after_measures_until_delivery_resumed() -> None:
    rec = udp_record([True] * 100 + [False] * 150 + [True] * 100)  # out 51.0 .. 52.5
    assert outage_after(rec, 50.99) == pytest.approx(1.51)
    assert outage_after(rec, 51.9) == pytest.approx(0.6)  # in progress at the event
    assert outage_after(rec, 50.2) == pytest.approx(2.3)  # began 0.8 s after it
    assert outage_after(rec, 49.0) == 0.0  # began 2 s later: not this event's
    assert outage_after(rec, 52.6) == 0.0
    assert outage_after(rec, 50.99, horizon=1.0) is None  # not within the horizon


def test_rfc3550_jitter() -> None:
    assert rfc3550_jitter([(0.0, 1.0)]) is None
    # transit alternates 1 ms / 3 ms: |D| = 2 ms each time; J converges towards 2 ms
    pairs = [(i * 0.01, i * 0.01 + (0.001 if i % 2 else 0.003)) for i in range(500)]
    j = rfc3550_jitter(pairs)
    assert j is not None and j == pytest.approx(0.002, rel=1e-3)


def test_rebuilds_sent_from_received_without_a_sender_record() -> None:
    rec = udp_record([True] * 20)
    rec.sent = []
    rec.errors.append("sender: no record")
    m = flow_metrics(rec, 50.0)
    assert m["sent"] == 20 and m["delivery_ratio"] == 1.0 and m["errors"] == ["sender: no record"]


# --- tcp --------------------------------------------------------------------------------

TCP = FlowSpec("t", "tcp", "a", "b")


def test_tcp_metrics_goodput_retransmissions_and_stalls() -> None:
    per = [125_000] * 10 + [0] * 8 + [125_000] * 12  # 3 s of 100 ms bins, 0.8 s stall
    bins = [(20.0 + k * 0.1, n) for k, n in enumerate(per) if n]
    rec = FlowRecord(TCP, 20.0, 23.0, bins=bins, bin_s=0.1, bytes_written=2_800_000,
                     tcp_info={"total_retrans": 5, "data_segs_out": 500, "segs_out": 600,
                               "rtt": 1500}, connected=True)  # fmt: skip
    m = flow_metrics(rec, t0=19.0)
    assert m["bytes"] == 22 * 125_000
    assert m["goodput_bps"] == pytest.approx(22 * 125_000 * 8 / 3.0, rel=1e-6)
    assert m["retransmissions"] == 5 and m["segments_out"] == 500
    assert m["retransmission_rate"] == 0.01 and m["rtt_ms"] == 1.5
    assert m["stalls"] == m["outages"] == [[2.0, 2.8, 0.8]]
    assert len(m["series"]["t"]) == 30 and m["series"]["t"][0] == 1.0
    assert m["series"]["goodput_bps"][0] == pytest.approx(10_000_000)
    assert outage_after(rec, 21.0) == pytest.approx(0.8)
    json.dumps(m, allow_nan=False)


def test_tcp_without_a_sender_record_has_no_retransmission_figures() -> None:
    rec = FlowRecord(TCP, 0.0, 1.0, bins=[], errors=["sender: no record"])
    m = flow_metrics(rec, 0.0)
    assert m["retransmissions"] is None and m["retransmission_rate"] is None
    assert m["bytes"] == 0 and m["outages"] == [[0.0, 1.0, 1.0]] and m["series"]["t"]
    assert outage_after(rec, 0.0) is None


# --- properties --------------------------------------------------------------------------


@st.composite
def udp_records(draw: st.DrawFn) -> FlowRecord:
    n = draw(st.integers(0, 300))
    rate = draw(st.sampled_from([10.0, 50.0, 100.0, 1000.0]))
    spec = FlowSpec("u", "udp", "a", "b", rate_pps=rate, size=100)
    t_start = draw(st.floats(0, 1e5))
    # sends on schedule with a little scheduling noise, never before the previous one
    sent, t = [], t_start
    for i in range(n):
        t += (1 / rate) * draw(st.floats(0.5, 1.5))
        sent.append((i, t))
    fate = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))  # 0 lost, 2 dup
    received = []
    for (seq, ts), f in zip(sent, fate, strict=True):
        if f:
            received.append((seq, ts, ts + draw(st.floats(1e-5, 0.5))))
        if f == 2:
            received.append((seq, ts, ts + 0.6))
    perm = draw(st.permutations(range(len(received))))
    received = [received[i] for i in perm]  # any arrival order
    return FlowRecord(spec, t_start, t + 1 / rate, sent=sent, received=received)


@settings(max_examples=150, deadline=None)
@given(udp_records(), st.floats(0.0, 2.0))
def test_udp_metrics_properties(rec: FlowRecord, min_gap: float) -> None:
    m = flow_metrics(rec, rec.t_start)
    assert 0.0 <= m["delivery_ratio"] <= 1.0
    assert m["received"] + m["lost"] == m["sent"] and m["duplicates"] >= 0
    assert 0 <= m["reordered"] < max(1, m["received"])
    lat = m["latency_ms"]
    if m["received"]:
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    else:
        assert lat["p50"] is None
    json.dumps(m, allow_nan=False)
    lo, hi = span(rec)
    outs = outages(rec, min_gap=min_gap)
    for a, b in outs:  # each within the flow's span, at least min_gap long
        assert lo - 1e-9 <= a < b <= hi + 1e-9
        assert b - a >= min_gap - 1e-6
    for (_, b1), (a2, _) in zip(outs, outs[1:], strict=False):  # disjoint, in order
        assert b1 <= a2
    assert m["longest_outage_s"] <= (hi - lo) + 1e-3
    if m["delivery_ratio"] == 1.0:
        assert outs == []
    for t_event in (lo, (lo + hi) / 2, hi):
        r = outage_after(rec, t_event)
        assert r is None or 0.0 <= r <= 30.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 200_000), min_size=0, max_size=80), st.floats(0.05, 2.0))
def test_tcp_stalls_are_disjoint_and_inside_the_flow(per: list[int], gap: float) -> None:
    bins = [(100.0 + k * 0.1, n) for k, n in enumerate(per) if n]
    end = 100.0 + max(1, len(per)) * 0.1
    rec = FlowRecord(TCP, 100.0, end, bins=bins, bin_s=0.1)
    outs = outages(rec, min_gap=gap)
    for a, b in outs:
        assert 100.0 - 1e-9 <= a < b <= end + 1e-9 and b - a >= gap - 1e-6
    for (_, b1), (a2, _) in zip(outs, outs[1:], strict=False):
        assert b1 <= a2
    m = flow_metrics(rec, 100.0)
    assert m["bytes"] == sum(per) and m["goodput_bps"] >= 0
    assert not math.isnan(m["goodput_bps"])


def test_loss_runs_count_consecutive_losses_in_send_order() -> None:
    from meshstress.judge.metrics import loss_runs

    fates = [True, False, False, True, False, True, True, False, False, False]
    assert loss_runs(fates) == {"loss_runs": 3, "loss_run_mean": 2.0, "loss_run_max": 3}
    assert loss_runs([True, True]) == {"loss_runs": 0, "loss_run_mean": None, "loss_run_max": 0}
