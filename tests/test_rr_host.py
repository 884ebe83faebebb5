"""Request/response flows (kind "rr") on a real 3-node static line on the host (root). No
netem here: loss is made by setting the middle link down and up through netlink (the
helpers of tests/test_flows_host.py). Counts are checked against the client's and the
server's records (what was really sent and received), never against a nominal rate."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_flows_host import cut_for_a_while, gone, line

from meshstress import report
from meshstress.judge.metrics import flow_metrics, outage_after
from meshstress.traffic.flows import FlowSpec, RRSpec, start_flow

pytestmark = pytest.mark.network


def attempts(rec) -> set[tuple[int, int]]:
    return {(q.id, k) for q in rec.requests for k in range(len(q.sends))}


def test_rr_udp_on_an_ideal_line_answers_every_request(mesh_factory, tmp_path: Path) -> None:
    mesh = line(mesh_factory)
    spec = FlowSpec("rr", "rr", "n0", "n2", rate_pps=50.0,
                    rr=RRSpec(request_size=200, response_size=1200, timeout=2.0))  # fmt: skip
    t0 = time.monotonic() + 0.5
    flow = start_flow(mesh, spec, str(tmp_path), t0, duration=2.0)
    assert {p.pid for _, p in flow.procs} <= {
        r.pid for r in mesh.state.processes if r.role == "traffic"
    }
    flow.wait(timeout=15)
    rec = flow.record()
    m = flow_metrics(rec, t0)
    assert m["errors"] == [], m["errors"]
    # how many the client started in 2 s depends on the host; never more than the schedule
    assert 0 < m["requests"] <= 101 and m["requests"] == len(rec.requests)
    assert m["success_ratio"] == 1.0 and m["ok"] == m["decided"] == m["requests"]
    assert m["attempts"] == m["requests"] and m["retries"] == 0 and m["timeouts"] == 0
    assert m["attempts_per_success"] == 1.0
    # the server got each request once, across two hops, and the client each answer
    assert sorted((i, k) for i, k, _ in rec.served) == sorted(attempts(rec))
    assert sorted((i, k) for i, k, _ in rec.responses) == sorted(attempts(rec))
    lat = m["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"] < 200
    assert all(q.t_sched >= t0 - 1e-3 for q in rec.requests)
    assert gone(flow)


def test_rr_udp_link_cut_times_out_and_retries(mesh_factory, tmp_path: Path) -> None:
    mesh = line(mesh_factory)
    rr = RRSpec(timeout=0.1, retries=2, backoff=2.0)  # attempts at +0, +0.1, +0.3; out at +0.7
    spec = FlowSpec("rr", "rr", "n0", "n2", rate_pps=20.0, rr=rr)
    t0 = time.monotonic() + 0.5
    flow = start_flow(mesh, spec, str(tmp_path), t0, duration=4.0)
    t_cut0, t_cut1, t_up0 = cut_for_a_while(mesh, t0 + 1.0, 1.5)
    flow.wait(timeout=15)
    rec = flow.record()
    m = flow_metrics(rec, t0)
    sent = attempts(rec)
    served = {(i, k) for i, k, _ in rec.served}
    answered = {(i, k) for i, k, _ in rec.responses}
    # what was counted is what was sent: every attempt is in the client's record
    assert m["attempts"] == len(sent) == m["requests"] + m["retries"]
    assert answered <= served <= sent
    # nothing sent while the link was down reached the server
    during = {(q.id, k) for q in rec.requests for k, t in enumerate(q.sends)
              if t_cut1 <= t <= t_up0}  # fmt: skip
    assert during and not during & served
    # requests whose three attempts all fell in the cut timed out after exactly three
    lost = [q for q in rec.requests if q.sends and t_cut1 <= q.sends[0] and q.sends[-1] <= t_up0]
    assert lost, "no request lay wholly inside the cut"
    for q in lost:
        assert q.outcome == "timeout" and len(q.sends) == 3 and q.results == ["timeout"] * 3
        assert q.sends[1] - q.sends[0] >= 0.1 and q.sends[2] - q.sends[1] >= 0.2
    assert m["timeouts"] > 0 and m["outcomes"]["timeout"] >= len(lost)
    assert m["attempts"] > m["requests"]
    # an answered request was answered on an attempt the server got; requests made well
    # before the cut were answered
    for q in rec.requests:
        if q.outcome == "ok":
            assert (q.id, q.ok_attempt) in served
        if q.sends and q.sends[-1] < t_cut0 - 0.1:
            assert q.outcome == "ok", q
    # some request made during the cut got through on a retry after the link came back
    assert any(q.outcome == "ok" and q.ok_attempt and q.sends[0] < t_up0 for q in rec.requests)
    assert m["success_ratio"] == round(m["ok"] / m["decided"], 6) < 1.0
    tried = sum(len(q.sends) for q in rec.requests if q.decided)
    assert m["attempts_per_success"] == round(tried / m["ok"], 4) > 1.0
    # the outage: from the last answer before the cut to the first one after the link was
    # back; the recovery after the cut ends with that answer
    first_after = min(q.t_done for q in rec.requests if q.outcome == "ok" and q.t_done > t_cut1)
    last_before = max(q.t_done for q in rec.requests if q.outcome == "ok" and q.t_done < t_cut1)
    assert first_after >= t_up0
    assert m["longest_outage_s"] == round(first_after - last_before, 3)
    assert outage_after(rec, t_cut0) == pytest.approx(first_after - t_cut0)
    assert gone(flow)


def test_rr_tcp_per_request_connect_times_and_failures(mesh_factory, tmp_path: Path) -> None:
    mesh = line(mesh_factory)
    rr = RRSpec(proto="tcp", request_size=100, response_size=20000, timeout=0.1, retries=1)
    spec = FlowSpec("api", "rr", "n0", "n2", rate_pps=20.0, rr=rr)
    t0 = time.monotonic() + 0.5
    flow = start_flow(mesh, spec, str(tmp_path), t0, duration=3.5)
    t_cut0, t_cut1, t_up0 = cut_for_a_while(mesh, t0 + 1.0, 1.0)
    flow.wait(timeout=15)
    rec = flow.record()
    m = flow_metrics(rec, t0)
    # every answered attempt connected first, and its connect time is in the record
    for q in rec.requests:
        if q.outcome == "ok":
            assert q.ok_attempt is not None and q.connect_s[q.ok_attempt] is not None
            assert 0 < q.connect_s[q.ok_attempt] <= q.t_done - q.sends[q.ok_attempt]
    assert m["connects_ok"] >= m["ok"] > 0
    c = m["connect_ms"]
    assert 0 < c["min"] <= c["p50"] <= c["p95"] <= c["p99"] <= c["max"]
    # no attempt begun while the link was down connected: its SYN was lost (or refused by
    # an ICMP error), and TCP's own SYN retry (1 s) comes after the attempt's timeout
    during = [(q, k) for q in rec.requests for k, t in enumerate(q.sends)
              if t_cut1 <= t and t + rr.attempt_timeout(k) <= t_up0]  # fmt: skip
    assert during
    for q, k in during:
        assert q.results[k] == "connect_failed" and q.connect_s[k] is None, q
    assert m["connect_failures"] >= len(during)
    assert m["connect_failures"] == sum(r == "connect_failed" for q in rec.requests
                                        for r in q.results)  # fmt: skip
    assert m["outcomes"]["connect_failed"] > 0 and m["success_ratio"] < 1.0
    # the server got one request per connected attempt that sent it, and answered it
    served = {(i, k) for i, k, _ in rec.served}
    assert {(q.id, q.ok_attempt) for q in rec.requests if q.outcome == "ok"} <= served
    assert m["attempts"] == m["requests"] + m["retries"] > m["requests"]
    assert gone(flow)


RR_SCENARIO = """
[scenario]
name = "rr-cut"
duration = "5s"
warmup = "0.5s"

[mesh]
generate = "line 3"
routing = "static"

[[traffic]]
name = "api"
kind = "rr"
from = "n0"
to = "n2"
rate = "20rps"
timeout = "100ms"
retries = 2

[[events]]
at = "1.5s"
action = "link-down"
link = ["n1", "n2"]
for = "1.5s"

[verdict]
assert = ["flows.api.success_ratio >= 10%", "events[0].recovery_s.api >= 1s"]
max_saturated_share = "100%"
max_softnet_drops = 1000000000
"""


def test_a_run_reports_rr_flows_and_their_recovery(run_scenario) -> None:
    r = run_scenario(RR_SCENARIO)
    api = r["flows"]["api"]
    assert api["kind"] == "rr" and 0 < api["ok"] < api["decided"] <= api["requests"], api
    assert api["timeouts"] > 0 and api["attempts"] > api["requests"]
    down, up = r["events"]
    # recovery from the cut: until the first answer after the link came back
    assert down["recovery_s"]["api"] >= up["t_rel"] - down["t_rel"] - 0.05, (down, up)
    assert r["passed"], r["checks"]
    text = report.summary(r)
    row = next(line for line in text.splitlines() if line.strip().startswith("api "))
    assert row.split()[3:6] == [str(api["decided"]), str(api["ok"]),
                                report._fmt(api["success_ratio"], 4)]  # fmt: skip
