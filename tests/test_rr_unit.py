"""Request/response flows (kind "rr") without root: parsing, the metrics on records built
by hand, and the client and server agents on the loopback of this namespace."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from meshstress import report
from meshstress.errors import InputError
from meshstress.judge.metrics import flow_metrics, outage_after, outages
from meshstress.model import generators
from meshstress.traffic.flows import (
    FlowRecord,
    FlowSpec,
    RRRequest,
    RRSpec,
    load_record,
    parse_flows,
)

TOPO = generators.line(3)
BASE = {"kind": "rr", "from": "n0", "to": "n2"}


def flows(text: str) -> list[FlowSpec]:
    return parse_flows(tomllib.loads(text).get("traffic", []), "s.toml", TOPO)


# --- parsing ----------------------------------------------------------------------------


def test_parse_rr_full_and_defaults() -> None:
    a, b, c = flows(
        """
[[traffic]]
kind = "rr"
from = "n0"
to = "n2"
[[traffic]]
name = "api"
kind = "rr"
from = "n2"
to = "n0"
proto = "tcp"
connection = "persistent"
rate = "50rps"
request_size = "1kb"
response_size = "64kb"
timeout = "150ms"
retries = 5
backoff = 1.5
max_timeout = "1s"
max_outstanding = 20
port = 6000
start = "1s"
duration = "10s"
[[traffic]]
kind = "rr"
from = "n1"
to = "n0"
rate = 2.5
"""
    )
    assert a.name == "rr-n0-n2" and a.kind == "rr" and a.rate_pps == 10.0
    assert a.rr == RRSpec()  # udp, 64 B each way, 200 ms, 3 retries, x2, per request
    assert a.rr.proto == "udp" and a.rr.timeout == 0.2 and a.rr.retries == 3
    assert a.rr.window() == pytest.approx(0.2 + 0.4 + 0.8 + 1.6)
    assert b == FlowSpec(
        "api", "rr", "n2", "n0", start=1.0, duration=10.0, rate_pps=50.0, port=6000, size=56,
        rr=RRSpec(proto="tcp", request_size=1024, response_size=65536, timeout=0.15,
                  retries=5, backoff=1.5, max_timeout=1.0, max_outstanding=20,
                  connection="persistent"),
    )  # fmt: skip
    # backoff 1.5 from 150 ms, capped at 1 s: .15 .225 .3375 .50625 .759375 1
    assert [round(b.rr.attempt_timeout(k), 6) for k in range(6)] == [  # type: ignore[union-attr]
        0.15, 0.225, 0.3375, 0.50625, 0.759375, 1.0]  # fmt: skip
    assert c.rate_pps == 2.5 and c.pps() == 2.5


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"proto": "sctp"}, "traffic[1].proto", '"udp" or "tcp"'),
        ({"request_size": "10b"}, "traffic[1].request_size", "20 to 65507 bytes over udp"),
        ({"request_size": "64kb"}, "traffic[1].request_size", "20 to 65507"),
        ({"request_size": "1zb"}, "traffic[1].request_size", "unknown size unit"),
        ({"response_size": "8"}, "traffic[1].response_size", "20 to"),
        ({"response_size": "-1kb"}, "traffic[1].response_size", "size"),
        ({"proto": "tcp", "response_size": "17mb"}, "traffic[1].response_size", "over tcp"),
        ({"timeout": "200"}, "traffic[1].timeout", "needs a unit"),
        ({"timeout": "0s"}, "traffic[1].timeout", "1ms to 60s"),
        ({"timeout": "2min"}, "traffic[1].timeout", "1ms to 60s"),
        ({"max_timeout": "fast"}, "traffic[1].max_timeout", "duration"),
        ({"max_timeout": "100ms"}, "traffic[1].max_timeout", "shorter than the timeout"),
        ({"retries": -1}, "traffic[1].retries", "0..100"),
        ({"retries": 1.5}, "traffic[1].retries", "count"),
        ({"retries": True}, "traffic[1].retries", "count"),
        ({"retries": 101}, "traffic[1].retries", "0..100"),
        ({"backoff": 0.5}, "traffic[1].backoff", "1..100"),
        ({"backoff": "2x"}, "traffic[1].backoff", "factor"),
        ({"backoff": False}, "traffic[1].backoff", "factor"),
        ({"max_outstanding": 0}, "traffic[1].max_outstanding", "1..100000"),
        ({"max_outstanding": "10"}, "traffic[1].max_outstanding", "count"),
        ({"connection": "persistent"}, "traffic[1].connection", 'proto = "tcp"'),
        ({"proto": "tcp", "connection": "pooled"}, "traffic[1].connection", "per-request"),
        ({"rate": "0rps"}, "traffic[1].rate", "(0, 10000]"),
        ({"rate": "20000rps"}, "traffic[1].rate", "(0, 10000]"),
        ({"rate": "2mbit"}, "traffic[1].rate", '"20rps"'),
        ({"rate": "fastrps"}, "traffic[1].rate", '"20rps"'),
        ({"rate": True}, "traffic[1].rate", '"20rps"'),
        ({"rate": ""}, "traffic[1].rate", '"20rps"'),
        ({"size": "100B"}, "traffic[1].size", "request_size and response_size"),
        ({"port": 70000}, "traffic[1].port", "1..65535"),
        ({"to": "n0"}, "traffic[1].to", "same node"),
        ({"kind": "udp", "timeout": "1s"}, "traffic[1].timeout", 'only a kind = "rr"'),
        ({"kind": "tcp", "proto": "tcp"}, "traffic[1].proto", 'only a kind = "rr"'),
        ({"kind": "ping", "retries": 2}, "traffic[1].retries", 'only a kind = "rr"'),
        ({"retry": 2}, "traffic[1].retry", "unknown key"),
    ],
)
def test_parse_rr_errors_name_the_field(change: dict, field: str, words: str) -> None:
    bad = {**BASE, **change}
    with pytest.raises(InputError) as e:
        parse_flows([{**BASE, "name": "ok"}, bad], "s.toml", TOPO)
    assert e.value.source == "s.toml" and e.value.field == field, e.value
    assert words in e.value.message, e.value.message
    assert str(e.value).startswith(f"s.toml: {field}: ")


# --- metrics on records built by hand ---------------------------------------------------

SPEC = FlowSpec("r", "rr", "a", "b", rate_pps=10.0, rr=RRSpec(timeout=0.1, retries=2))


def req(i: int, outcome: str, sends: list[float], ok_attempt: int | None = None,
        t_done: float | None = None, results: list[str] | None = None,
        connect_s: list[float | None] | None = None) -> RRRequest:  # fmt: skip
    t = 100.0 + i * 0.1
    if results is None:
        results = ["timeout"] * len(sends)
        if ok_attempt is not None:
            results[ok_attempt] = "ok"
    return RRRequest(i, t, [t + s for s in sends], results, connect_s or [], outcome,
                     ok_attempt, None if t_done is None else t + t_done)  # fmt: skip


def test_rr_metrics_count_retries_timeouts_and_latency() -> None:
    reqs = [
        req(0, "ok", [0.0], 0, 0.002),  # first attempt answered in 2 ms
        req(1, "ok", [0.0, 0.1], 1, 0.103),  # a retry answered 3 ms after it was sent
        req(2, "timeout", [0.0, 0.1, 0.3], t_done=0.7),  # every attempt timed out
        req(3, "ok", [0.0, 0.1, 0.3], 0, 0.35),  # the first attempt's answer came late
        req(4, "skipped", []),  # max_outstanding reached: never sent
        req(5, "pending", [0.0], results=["pending"]),  # undecided when the client stopped
    ]
    rec = FlowRecord(SPEC, 100.0, 100.6, requests=reqs,
                     responses=[(0, 0, 100.002), (1, 1, 100.203), (3, 0, 100.65), (3, 2, 100.66)],
                     served=[(0, 0, 1.0), (1, 1, 1.0), (3, 0, 1.0), (3, 2, 1.0)])  # fmt: skip
    m = flow_metrics(rec, 100.0)
    assert m["requests"] == 6 and m["decided"] == 5 and m["ok"] == 3 and m["started"] == 5
    assert m["success_ratio"] == 0.6  # 3 of the 5 decided (the skipped one counts, failed)
    assert m["outcomes"] == {"ok": 3, "timeout": 1, "connect_failed": 0, "error": 0,
                             "skipped": 1, "pending": 1}  # fmt: skip
    assert m["attempts"] == 1 + 2 + 3 + 3 + 0 + 1 and m["retries"] == 10 - 5
    assert m["attempts_per_success"] == round((1 + 2 + 3 + 3) / 3, 4)  # decided requests only
    assert m["first_attempt_ok"] == 2
    assert m["timeouts"] == 1 + 3 + 2  # expired attempts (request 3's first one was late)
    assert m["late_responses"] == 1 and m["responses"] == 4 and m["server_received"] == 4
    # from the first send: 2, 103, 350 ms; from the answered attempt: 2, 3, 350 ms
    assert m["latency_ms"]["min"] == 2.0 and m["latency_ms"]["max"] == 350.0
    assert m["latency_ms"]["p50"] == 103.0
    assert sorted([m["attempt_latency_ms"]["min"], m["attempt_latency_ms"]["p50"]]) == [2.0, 3.0]
    assert m["connect_ms"] is None and m["connect_failures"] == 0
    assert m["errors"] == []
    # the time series by schedule time: bin 0 holds the decided requests 0-4 (t 100.0 ..
    # 100.4); the pending one (t 100.5) is in none
    assert m["series"]["t"] == [0.0] and m["series"]["success_ratio"] == [0.6]


def test_rr_connect_times_and_failures() -> None:
    spec = FlowSpec("t", "rr", "a", "b", rate_pps=10.0, rr=RRSpec(proto="tcp", retries=1))
    reqs = [
        req(0, "ok", [0.0], 0, 0.004, connect_s=[0.001]),
        req(1, "connect_failed", [0.0, 0.2], t_done=0.6,
            results=["connect_failed", "connect_failed"], connect_s=[None, None]),
        req(2, "ok", [0.0, 0.2], 1, 0.205, results=["connect_failed", "ok"],
            connect_s=[None, 0.003]),
    ]  # fmt: skip
    m = flow_metrics(FlowRecord(spec, 100.0, 100.3, requests=reqs), 100.0)
    assert m["connect_failures"] == 3 and m["timeouts"] == 0 and m["connects_ok"] == 2
    assert m["connect_ms"]["min"] == 1.0 and m["connect_ms"]["max"] == 3.0
    assert m["connect_ms"]["p50"] == 2.0
    assert m["outcomes"]["connect_failed"] == 1 and m["success_ratio"] == round(2 / 3, 6)


def steady(n: int, down: tuple[float, float] | None = None) -> FlowRecord:
    """n requests at 10 per second from t=100; those scheduled inside `down` time out
    (3 attempts), the others are answered 1 ms after their first send."""
    reqs = []
    for i in range(n):
        t = 100.0 + i * 0.1
        if down and down[0] <= t < down[1]:
            reqs.append(req(i, "timeout", [0.0, 0.1, 0.3], t_done=0.7))
        else:
            reqs.append(req(i, "ok", [0.0], 0, 0.001))
    return FlowRecord(SPEC, 100.0, 100.0 + n * 0.1, requests=reqs)


def test_rr_outage_is_the_time_without_an_answer() -> None:
    rec = steady(50, down=(101.0, 102.0))  # requests 10..19 fail
    # the last answer before: request 9's at 100.901; the next: request 20's at 102.001
    assert outages(rec) == [pytest.approx((100.901, 102.001))]
    m = flow_metrics(rec, 100.0)
    assert m["longest_outage_s"] == 1.1 and m["outages"] == [[0.901, 2.001, 1.1]]
    assert outage_after(rec, 101.0) == pytest.approx(1.001)  # an event at the cut
    assert outage_after(rec, 104.0) == 0.0  # nothing followed this one
    assert outages(steady(50)) == []  # 0.1 s between answers: no outage
    # an outage at the end never resumed
    tail = steady(30, down=(102.0, 110.0))
    assert outages(tail) == [pytest.approx((101.901, 103.0))]
    assert outage_after(tail, 102.0) is None


def test_rr_window_keeps_the_requests_scheduled_inside_it() -> None:
    rec = steady(50, down=(101.0, 102.0))
    rec.served = [(i, 0, 0.0) for i in range(50)]
    m = flow_metrics(rec, 100.0, window=(100.95, 101.55))  # requests 10..15 (t 101.0..101.5)
    assert m["requests"] == 6 and m["ok"] == 0 and m["decided"] == 6
    assert m["success_ratio"] == 0.0 and m["attempts"] == 18 and m["timeouts"] == 18
    assert m["server_received"] == 6
    w = flow_metrics(rec, 100.0, window=(100.0, 101.0))  # 0..9: all answered
    assert (w["ok"], w["decided"], w["success_ratio"], w["attempts_per_success"]) == (
        10, 10, 1.0, 1.0)  # fmt: skip
    whole = flow_metrics(rec, 100.0)
    assert whole["ok"] == 40 and whole["decided"] == 50 and whole["success_ratio"] == 0.8
    assert whole["attempts_per_success"] == round((40 + 30) / 40, 4)


def test_rr_in_the_summary_table() -> None:
    m = flow_metrics(steady(50, down=(101.0, 102.0)), 100.0)
    text = report.summary({"flows": {"r": {"kind": "rr", "from": "a", "to": "b", **m},
                                      "u": {"kind": "udp", "from": "a", "to": "b", "sent": 5}}})  # fmt: skip
    lines = text.splitlines()
    head = next(line for line in lines if line.strip().startswith("name"))
    row = next(line for line in lines if line.strip().startswith("r "))
    assert head.split()[-1] == "attempts/ok"
    # decided, answered, success ratio, p50, p99 ... attempts per success
    assert row.split()[3:6] == ["50", "40", "0.8"] and row.split()[-1] == "1.75"
    assert "1.1" in row.split()  # the longest outage
    no_rr = report.summary({"flows": {"u": {"kind": "udp", "from": "a", "to": "b"}}})
    assert "attempts/ok" not in no_rr


# --- the agents on the loopback ---------------------------------------------------------


def agent(*args: object) -> list[str]:
    return [sys.executable, "-m", "meshstress.traffic.agent", *(str(a) for a in args)]


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_pair(tmp_path: Path, spec: FlowSpec, seconds: float, server: bool = True,
             during: object = None) -> FlowRecord:  # fmt: skip
    """Both rr agents on 127.0.0.1 as meshstress.traffic.flows starts them (or the client alone)."""
    rr = spec.rr or RRSpec()
    port = free_port(socket.SOCK_DGRAM if rr.proto == "udp" else socket.SOCK_STREAM)
    t0 = time.monotonic() + 0.4
    files = {"client": str(tmp_path / "c.json"), "server": str(tmp_path / "s.json")}
    sizes = ("--request-size", rr.request_size, "--response-size", rr.response_size)
    ready = tmp_path / "ready"
    procs = []
    if server:
        procs.append(subprocess.Popen(agent(
            "rr-server", "--proto", rr.proto, "--bind", "127.0.0.1", "--port", port,
            "--end", t0 + seconds + rr.drain() + 1, *sizes, "--out", files["server"],
            "--ready", ready, "--peer-done", files["client"])))  # fmt: skip
    else:
        ready.write_text("none")
    procs.append(subprocess.Popen(agent(
        "rr-client", "--proto", rr.proto, "--connection", rr.connection, "--bind", "127.0.0.1",
        "--to", "127.0.0.1", "--port", port, "--start", t0, "--end", t0 + seconds,
        "--drain", rr.drain(), "--rate", spec.pps(), *sizes, "--timeout", rr.timeout,
        "--retries", rr.retries, "--backoff", rr.backoff, "--max-timeout", rr.max_timeout or 0,
        "--max-outstanding", rr.max_outstanding, "--out", files["client"],
        "--ready", ready)))  # fmt: skip
    try:
        if callable(during):
            during(procs[0], t0)
        for p in procs:
            assert p.wait(timeout=seconds + rr.drain() + 15) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if not server:
        files["server"] = str(tmp_path / "absent.json")
    return load_record(spec, files, t0, t0 + seconds)


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_rr_agents_answer_every_request_on_loopback(tmp_path: Path, proto: str) -> None:
    spec = FlowSpec("r", "rr", "a", "b", rate_pps=100.0,
                    rr=RRSpec(proto=proto, request_size=100, response_size=3000, timeout=2.0))  # fmt: skip
    rec = run_pair(tmp_path, spec, 1.0)
    m = flow_metrics(rec, rec.t_start)
    assert m["errors"] == [] and 0 < m["requests"] <= 101
    assert m["ok"] == m["requests"] == m["decided"] == m["attempts"] and m["success_ratio"] == 1.0
    assert m["attempts_per_success"] == 1.0 and m["retries"] == 0 and m["timeouts"] == 0
    # the server got each request once, and the client the answer to each
    assert sorted(rec.served) == sorted(rec.served, key=lambda s: s[0])
    assert [(i, k) for i, k, _ in rec.served] == [(q.id, 0) for q in rec.requests]
    assert sorted(i for i, _, _ in rec.responses) == [q.id for q in rec.requests]
    for p, q in zip(rec.requests, rec.requests[1:], strict=False):  # open loop, no bursts
        assert q.id == p.id + 1 and q.t_sched - p.t_sched >= 0.01 - 1e-9
    for q in rec.requests:  # each started when due, answered after it was sent
        assert q.t_sched <= q.sends[0] < q.t_done  # type: ignore[operator]
    if proto == "tcp":  # a connection per request, each connect timed
        assert m["connects_ok"] == m["requests"] and m["connect_ms"]["max"] < 1000


def test_rr_udp_without_a_server_times_out_on_the_backoff_schedule(tmp_path: Path) -> None:
    spec = FlowSpec("r", "rr", "a", "b", rate_pps=20.0,
                    rr=RRSpec(timeout=0.05, retries=2, backoff=3.0, max_timeout=0.3))  # fmt: skip
    rec = run_pair(tmp_path, spec, 0.5, server=False)
    m = flow_metrics(rec, rec.t_start)
    assert m["requests"] > 0 and m["ok"] == 0 and m["success_ratio"] == 0.0
    assert m["outcomes"]["timeout"] == m["requests"] == m["decided"]
    assert m["attempts"] == 3 * m["requests"] and m["timeouts"] == m["attempts"]
    assert m["attempts_per_success"] is None and m["latency_ms"]["p50"] is None
    for q in rec.requests:  # each retry after its predecessor's timeout: 50 ms, then 150 ms
        gaps = [b - a for a, b in zip(q.sends, q.sends[1:], strict=False)]
        assert gaps[0] >= 0.05 and gaps[1] >= 0.15, gaps
        assert q.t_done is not None and q.t_done - q.sends[2] >= 0.3  # capped: not 0.45
    assert any("no record" in e for e in rec.errors)  # no server file


def test_rr_tcp_without_a_listener_fails_to_connect(tmp_path: Path) -> None:
    spec = FlowSpec("r", "rr", "a", "b", rate_pps=20.0,
                    rr=RRSpec(proto="tcp", timeout=0.05, retries=1))  # fmt: skip
    rec = run_pair(tmp_path, spec, 0.3, server=False)
    m = flow_metrics(rec, rec.t_start)
    assert m["requests"] > 0 and m["outcomes"]["connect_failed"] == m["requests"]
    assert m["connect_failures"] == m["attempts"] == 2 * m["requests"]
    assert m["connects_ok"] == 0 and m["connect_ms"]["p50"] is None
    assert any("refused" in e for e in rec.errors), rec.errors


@pytest.mark.parametrize("connection", ["per-request", "persistent"])
def test_rr_retries_while_the_server_is_stopped(tmp_path: Path, connection: str) -> None:
    """SIGSTOP the server for 0.6 s: requests time out and retry; when it runs again it
    answers every copy it got (udp: late answers to earlier attempts are seen)."""
    proto = "udp" if connection == "per-request" else "tcp"
    spec = FlowSpec("r", "rr", "a", "b", rate_pps=20.0,
                    rr=RRSpec(proto=proto, connection=connection, timeout=0.1, retries=6))  # fmt: skip
    frozen: list[float] = []

    def freeze(server: subprocess.Popen, t0: float) -> None:
        time.sleep(max(0.0, t0 + 0.5 - time.monotonic()))
        os.kill(server.pid, signal.SIGSTOP)
        frozen.append(time.monotonic())
        time.sleep(0.6)
        frozen.append(time.monotonic())
        os.kill(server.pid, signal.SIGCONT)

    rec = run_pair(tmp_path, spec, 2.0, during=freeze)
    m = flow_metrics(rec, rec.t_start)
    # six retries wait 0.1 x (2^7 - 1) = 12.7 s in all: every request outlives the freeze,
    # even when a loaded host lets the freezing thread sleep far longer than 0.6 s
    assert m["success_ratio"] == 1.0 and m["ok"] == m["requests"]
    assert m["retries"] > 0 and m["attempts"] > m["requests"] and m["timeouts"] > 0
    assert m["attempts"] == m["requests"] + m["retries"]
    # every attempt the server got, it answered; the client saw every answer
    assert len(rec.responses) == len(rec.served)
    retried = [q for q in rec.requests if len(q.sends) > 1]
    assert retried
    if proto == "udp":  # every copy answered: more answers than requests
        assert m["late_responses"] == len(rec.served) - m["ok"] > 0
    # the longest stretch without an answer covers the freeze
    assert m["longest_outage_s"] >= frozen[1] - frozen[0] - 0.1, (m["outages"], frozen)


def test_rr_client_flushes_pending_requests_on_sigterm(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    now = time.monotonic()
    (tmp_path / "ready").write_text("x")
    p = subprocess.Popen(agent("rr-client", "--bind", "127.0.0.1", "--to", "127.0.0.1",
                               "--port", port, "--start", now, "--end", now + 60, "--rate", 50,
                               "--timeout", 5, "--retries", 0, "--drain", 5,
                               "--out", tmp_path / "c.json", "--ready", tmp_path / "ready"))  # fmt: skip
    time.sleep(0.5)
    p.terminate()
    assert p.wait(timeout=5) == 0
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["stopped"] is True and data["requests"]
    assert {q["outcome"] for q in data["requests"]} == {"pending"}
    m = flow_metrics(load_record(SPEC, {"client": str(tmp_path / "c.json"),
                                        "server": str(tmp_path / "s.json")}, now, now + 60), now)  # fmt: skip
    assert m["decided"] == 0 and m["success_ratio"] == 0.0
    assert m["outcomes"]["pending"] == m["requests"] > 0


def test_rr_agent_refuses_bad_arguments(tmp_path: Path) -> None:
    now = time.monotonic()
    p = subprocess.run(agent("rr-client", "--bind", "127.0.0.1", "--to", "127.0.0.1",
                             "--port", 9, "--end", now + 5, "--request-size", 8,
                             "--out", tmp_path / "c.json"),
                       capture_output=True, text=True, timeout=10)  # fmt: skip
    assert p.returncode == 2 and "--request-size" in p.stderr
    assert not (tmp_path / "c.json").exists()


def test_rr_per_step_raw_material_for_sweep_curves() -> None:
    """A sweep's window of an rr flow: answered of decided and the answered latencies,
    by schedule time, as the whole-flow metrics count them."""
    from meshstress.judge.degradation import CURVE_METRICS, Ratio, flow_raw

    assert CURVE_METRICS["rr"][0] == "success_ratio"
    rec = steady(50, down=(101.0, 102.0))  # requests 10..19 time out
    good = flow_raw(rec, (100.0, 101.0))
    assert good["success_ratio"] == Ratio(10, 10)
    assert good["latency_ms"].values == pytest.approx((1.0,) * 10)  # type: ignore[union-attr]
    cut = flow_raw(rec, (100.95, 101.55))  # requests 10..15
    assert cut["success_ratio"] == Ratio(0, 6) and cut["latency_ms"].values == ()  # type: ignore[union-attr]
    whole = flow_metrics(rec, 100.0)
    everything = flow_raw(rec, (100.0, 105.0))["success_ratio"]
    assert (everything.k, everything.n) == (whole["ok"], whole["decided"])  # type: ignore[union-attr]
