"""Sweeps without root: [sweep] parsing, expansion into step actions and windows, windowed
metrics, pooled intervals, curve verdicts and the degradation table."""

from __future__ import annotations

import pytest

from meshstress import report
from meshstress.errors import InputError
from meshstress.judge import curves, degradation, metrics, stats
from meshstress.model import scenario
from meshstress.model import sweep as msweep
from meshstress.report import sweep as sweep_report
from meshstress.stress import sweep as ssweep
from meshstress.traffic.flows import FlowRecord, FlowSpec

HEAD = """
[mesh]
generate = "line 4"
routing = "static"

[[traffic]]
name = "cbr"
kind = "udp"
from = "n0"
to = "n3"
rate = "100pps"

[[traffic]]
name = "bulk"
kind = "tcp"
from = "n3"
to = "n0"
"""


def load(sweep: str, verdict: str = "", head: str = HEAD) -> scenario.Scenario:
    return scenario.loads(head + "\n[sweep]\n" + sweep + "\n" + verdict, "s.toml")


def error(sweep: str, verdict: str = "", head: str = HEAD) -> InputError:
    with pytest.raises(InputError) as exc:
        load(sweep, verdict, head)
    assert exc.value.source == "s.toml"
    return exc.value


# --- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sweep", "field", "words"),
    [
        ('loss = ["0%"]\ndelay = ["1ms"]', "sweep", "exactly one axis"),
        ('step = "1s"', "sweep", "exactly one axis"),
        ('loss = ["0%"]\nspeed = 1', "sweep.speed", "unknown key"),
        ("loss = []", "sweep.loss", "non-empty"),
        ('loss = ["5%", "2%"]', "sweep.loss[1]", "rise strictly"),
        ('loss = ["5%", "120%"]', "sweep.loss[1]", ""),
        ('rate = ["1mbit", "2mbit"]', "sweep.rate[1]", "fall strictly"),
        ('delay = ["1ms", "x"]', "sweep.delay[1]", ""),
        ("failed_links = [0, 4]", "sweep.failed_links[1]", "only 3 link"),
        ("failed_links = [0, 1.5]", "sweep.failed_links[1]", "whole number"),
        ('loss = ["1%"]\nlinks = [["n0", "n2"]]', "sweep.links[0]", "no link n0-n2"),
        ('loss = ["1%"]\nlinks = [["n0", "n1"], ["n1", "n0"]]', "sweep.links[1]", "twice"),
        ('loss = ["1%"]\nstep = "0s"', "sweep.step", "longer than 0s"),
        ('loss = ["1%"]\nstep = "2s"\nsettle = "2s"', "sweep.settle", "shorter than the step"),
        ('loss = ["1%"]\nrepeat = 0', "sweep.repeat", ">= 1"),
        ('loss = ["1%"]\nfresh = "yes"', "sweep.fresh", "true or false"),
        ('loss = ["1%"]\nnodes = ["n1"]', "sweep.nodes", "only a churn sweep"),
        ('churn = [0, 6]\nnodes = ["zz"]', "sweep.nodes[0]", "unknown node"),
        ('churn = [0, 6]\nstep = "5s"', "sweep.churn_down", "inside its step"),
        ("churn = [0, -1]", "sweep.churn[1]", ">= 0"),
    ],
)
def test_bad_sweeps_name_the_field(sweep: str, field: str, words: str) -> None:
    e = error(sweep)
    assert e.field == field, e
    assert words in e.message, e


def test_a_sweep_sets_the_duration_and_a_given_one_must_agree() -> None:
    sc = load('loss = ["0%", "10%"]\nstep = "4s"\nrepeat = 2')
    assert sc.sweep is not None and sc.duration == 16.0 and sc.sweep.windows_count == 4
    assert sc.sweep.settle == 1.0  # default: 1 s, at most a quarter of the step
    assert load('loss = ["0%"]\nstep = "2s"').sweep.settle == 0.5  # type: ignore[union-attr]
    head = HEAD.replace("[mesh]", '[scenario]\nduration = "10s"\n\n[mesh]')
    e = error('loss = ["0%", "10%"]\nstep = "4s"', head=head)
    assert e.field == "scenario.duration" and "8s" in e.message
    ok = HEAD.replace("[mesh]", '[scenario]\nduration = "8s"\n\n[mesh]')
    assert load('loss = ["0%", "10%"]\nstep = "4s"', head=ok).duration == 8.0


def test_fresh_sweeps_take_no_events() -> None:
    head = HEAD + '\n[[events]]\nat = "1s"\naction = "link-down"\nlink = ["n0", "n1"]\n'
    assert error('loss = ["1%"]\nfresh = true', head=head).field == "events"


def test_churn_nodes_default_to_all_but_flow_ends() -> None:
    sc = load('churn = [0, 6]\nchurn_down = "2s"')
    assert sc.sweep is not None and sc.sweep.nodes == ("n1", "n2")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("curve.flows.cbr.delivery_ratio floor", "floor VALUE"),
        ("curve.flows.cbr.delivery_ratio steep", "unknown check"),
        ("curve.flows.nope.delivery_ratio monotone", "no flow 'nope'"),
        ("curve.mesh.nodes monotone", "per flow"),
        ("curve.flows.cbr.delivery_ratio floor 90% up_to delay=5ms", "axis is loss"),
        ("curve.flows.cbr.delivery_ratio knee after loss=5ms", "fraction"),
        ("curve.flows.cbr.jitter monotone", "udp flow has"),
    ],
)
def test_bad_curve_assertions_name_their_index(text: str, words: str) -> None:
    verdict = f'[verdict]\nassert = ["flows.cbr.sent >= 1", "{text}"]'
    e = error('loss = ["0%", "10%"]', verdict)
    assert e.field == "verdict.assert[1]", e
    assert words in e.message, e


def test_curve_assertions_need_a_sweep() -> None:
    text = HEAD + '\n[verdict]\nassert = ["curve.flows.cbr.delivery_ratio monotone"]\n'
    with pytest.raises(InputError) as exc:
        scenario.loads(text, "s.toml")
    assert exc.value.field == "verdict.assert[0]" and "[sweep]" in exc.value.message


def test_curve_assertions_are_kept_apart_from_plain_ones() -> None:
    verdict = (
        '[verdict]\nassert = ["flows.cbr.sent >= 1", '
        '"curve.flows.cbr.delivery_ratio floor 90% up_to loss=5%"]'
    )
    sc = load('loss = ["0%", "5%", "10%"]', verdict)
    assert [a.text for a in sc.assertions] == ["flows.cbr.sent >= 1"]
    assert [a.check for a in sc.curve_assertions] == ["floor"]


def test_needs_follow_the_axis() -> None:
    # netem for loss: choose_where sends it to the lab; tbf alone for rate; failed links
    # the drop filter of radio-like cuts (tc-bpf), nothing with carrier = "lose"
    assert "netem" in load('loss = ["0%", "5%"]').needs()
    assert load('rate = ["2mbit", "1mbit"]').needs() == ["tbf"]
    assert load("failed_links = [0, 1]").needs() == ["tc-bpf"]
    assert load('failed_links = [0, 1]\ncarrier = "lose"').needs() == []
    assert "netem" in load('delay = ["0ms", "5ms"]').needs()


# --- expansion ---------------------------------------------------------------------------

TOPO = """
[mesh]
topology = "t.toml"
"""


def test_an_impairment_step_replaces_one_parameter_and_keeps_the_rest(tmp_path) -> None:
    (tmp_path / "t.toml").write_text(
        'topology = { name = "t", routing = "static" }\n'
        'nodes = [{ name = "a" }, { name = "b" }, { name = "c" }]\n'
        'links = [{ a = "a", b = "b", delay = "7ms", rate = "5mbit" },\n'
        '         { a = "b", b = "c", b_to_a = { delay = "3ms" } }]\n'
    )
    sc = scenario.loads(
        TOPO + '[sweep]\nloss = ["0%", "20%"]\nlinks = [["c", "b"], ["a", "b"]]\n',
        str(tmp_path / "s.toml"),
        tmp_path,
    )
    assert sc.sweep is not None
    acts = msweep.expand(sc.sweep, sc.topology)
    assert [a.at for a in acts] == [0.0, 10.0] and all(a.boundary for a in acts)
    second = {ev.link: ev for ev in acts[1].events}
    assert set(second) == {("b", "c"), ("a", "b")}  # topology order, both directions
    bc = second[("b", "c")]
    assert bc.ab is not None and bc.ba is not None
    assert (bc.ab.loss, bc.ab.delay) == (0.2, 0.0) and (bc.ba.loss, bc.ba.delay) == (0.2, 0.003)
    ab = second[("a", "b")]
    assert ab.ab is not None and (ab.ab.loss, ab.ab.delay, ab.ab.rate) == (0.2, 0.007, 5_000_000)
    # ideal = true: the rest is off
    ideal = msweep.expand(sc.sweep, sc.topology, ideal=True)[1].events[1]
    assert ideal.ab is not None and (ideal.ab.delay, ideal.ab.rate) == (0.0, None)


def test_windows_repeat_the_whole_sweep_in_turn() -> None:
    sc = load('rate = ["4mbit", "1mbit"]\nstep = "5s"\nsettle = "1s"\nrepeat = 2')
    assert sc.sweep is not None
    ws = msweep.windows(sc.sweep)
    assert [(w.step, w.repeat, w.start, w.end, w.measured) for w in ws] == [
        (0, 0, 0.0, 5.0, (1.0, 5.0)),
        (1, 0, 5.0, 10.0, (6.0, 10.0)),
        (0, 1, 10.0, 15.0, (11.0, 15.0)),
        (1, 1, 15.0, 20.0, (16.0, 20.0)),
    ]


def test_failed_links_grow_by_a_seeded_nested_choice_and_come_back_on_repeat() -> None:
    sc = load("failed_links = [0, 1, 3]\nrepeat = 2\nseed = 7")
    assert sc.sweep is not None
    acts = msweep.expand(sc.sweep, sc.topology)
    order = msweep.link_order(sc.sweep)
    assert sorted(order) == sorted(sc.sweep.links)
    down: set[tuple[str, str]] = set()
    seen = []
    for a in acts:
        for ev in a.events:
            assert ev.link is not None
            (down.add if ev.action == "link-down" else down.discard)(ev.link)
        seen.append(set(down))
    assert seen == [set(), set(order[:1]), set(order[:3])] * 2
    assert [ev.action for ev in acts[3].events] == ["link-up"] * 3
    other = load("failed_links = [0, 1, 3]\nseed = 8").sweep
    assert other is not None
    assert msweep.link_order(other) != order or len(order) < 3  # the seed matters


def test_churn_crashes_are_seeded_and_end_inside_their_step() -> None:
    sc = load('churn = [0, 12, 30]\nstep = "10s"\nchurn_down = "2s"\nseed = 3')
    assert sc.sweep is not None
    acts = msweep.expand(sc.sweep, sc.topology)
    assert acts == msweep.expand(sc.sweep, sc.topology)  # deterministic
    crashes = [(a.at, a.events[0]) for a in acts if not a.boundary]
    per_step = [sum(1 for t, ev in crashes if ev.action == "node-crash" and w * 10 <= t < w * 10 + 10)
                for w in range(3)]  # fmt: skip
    assert per_step == [0, 2, 5]
    for t, ev in crashes:
        assert ev.node in ("n1", "n2")
        if ev.action == "node-restart":
            step = int((t - 2.0) // 10)
            assert t <= step * 10 + 10
    # never the same node twice at once
    down: set[str] = set()
    for _, ev in sorted(crashes, key=lambda c: (c[0], c[1].action != "node-restart")):
        assert ev.node is not None
        if ev.action == "node-crash":
            assert ev.node not in down
            down.add(ev.node)
        else:
            down.discard(ev.node)


def test_fresh_step_scenarios_build_the_stress_in() -> None:
    sc = load('rate = ["4mbit", "1mbit"]\nlinks = [["n1", "n2"]]\nfresh = true\nstep = "3s"')
    sub = ssweep.step_scenario(sc, 1)
    assert sub.sweep is None and sub.duration == 3.0 and not sub.events
    rates = {(lk.a, lk.b): (lk.ab.rate, lk.ba.rate) for lk in sub.topology.links}
    assert rates == {("n0", "n1"): (None, None), ("n1", "n2"): (1_000_000, 1_000_000),
                     ("n2", "n3"): (None, None)}  # fmt: skip
    fl = load("failed_links = [0, 2]\nfresh = true\nseed = 1")
    sub = ssweep.step_scenario(fl, 1)
    assert [ev.action for ev in sub.events] == ["link-down", "link-down"]
    assert fl.sweep is not None
    assert [ev.link for ev in sub.events] == msweep.link_order(fl.sweep)[:2]


# --- windowed metrics ----------------------------------------------------------------------


def udp_record(sent: int = 100, lost: set[int] | None = None, delay: float = 0.01) -> FlowRecord:
    spec = FlowSpec("cbr", "udp", "n0", "n3", rate_pps=10.0, size=100)
    rec = FlowRecord(spec, t_start=100.0, t_end=100.0 + sent / 10)
    lost = lost or set()
    for i in range(sent):
        ts = 100.0 + i / 10
        rec.sent.append((i, ts))
        if i not in lost:
            rec.received.append((i, ts, ts + delay + (0.001 * (i % 10))))
    return rec


def test_a_window_counts_what_was_sent_inside_it_with_its_fate() -> None:
    rec = udp_record(100, lost={12, 13, 50})
    # a packet sent just before the end and arriving after it still counts
    rec.received = [p if p[0] != 19 else (19, p[1], 200.0) for p in rec.received]
    m = metrics.flow_metrics(rec, 100.0, window=(101.0, 102.0))
    assert (m["sent"], m["received"], m["lost"]) == (10, 8, 2)
    assert m["delivery_ratio"] == 0.8
    assert m["latency_ms"]["max"] == pytest.approx((200.0 - 101.9) * 1000, rel=1e-9)
    whole = metrics.flow_metrics(rec, 100.0)
    assert whole["sent"] == 100 and whole["lost"] == 3
    with pytest.raises(ValueError):
        metrics.flow_metrics(rec, 100.0, window=(2.0, 1.0))


def test_a_tcp_window_counts_its_bins() -> None:
    spec = FlowSpec("bulk", "tcp", "n3", "n0")
    rec = FlowRecord(spec, t_start=100.0, t_end=110.0, tcp_info={"total_retrans": 5})
    rec.bins = [(100.0 + k / 10, 1000 if k < 50 else 500) for k in range(100)]
    m = metrics.flow_metrics(rec, 100.0, window=(104.0, 106.0))
    assert m["bytes"] == 10 * 1000 + 10 * 500
    assert m["goodput_bps"] == pytest.approx(15000 * 8 / 2.0)
    assert m["retransmissions"] is None  # tcp_info is the whole flow's, not the window's
    raw = degradation.flow_raw(rec, (104.0, 106.0))["goodput_bps"]
    assert isinstance(raw, degradation.Rate) and raw.amount == 15000 * 8 and len(raw.bins) == 20


# --- pooling and intervals -----------------------------------------------------------------


def test_ratios_pool_their_counts_over_repeats_with_clopper_pearson() -> None:
    got = degradation.pool([degradation.Ratio(90, 100), degradation.Ratio(80, 100)])[""]
    assert (got["k"], got["n"], got["value"]) == (170, 200, 0.85)
    lo, hi = stats.clopper_pearson(170, 200)
    assert got["interval"] == [pytest.approx(lo, rel=1e-5), pytest.approx(hi, rel=1e-5)]
    assert degradation.pool([degradation.Ratio(0, 0)])[""]["value"] is None


def test_percentiles_get_the_bootstrap_of_stats() -> None:
    values = [float((i * 37) % 101) for i in range(300)]
    mine = degradation.bootstrap_quantiles(values, {"p99": 0.99, "p50": 0.5}, resamples=300, seed=4)
    assert mine["p99"] == stats.bootstrap_quantile(values, 0.99, resamples=300, seed=4)
    assert mine["p50"] == stats.bootstrap_quantile(values, 0.5, resamples=300, seed=4)
    half = [degradation.Samples(tuple(values[:150]), "latency_ms"),
            degradation.Samples(tuple(values[150:]), "latency_ms")]  # fmt: skip
    pooled = degradation.pool(half)
    assert pooled[".p50"]["n"] == 300
    assert pooled[".p50"]["value"] == pytest.approx(stats.quantile(values, 0.5))


def sweep_results(ks: list[int], n: int = 200) -> dict:
    """A synthetic loss sweep of two repeats: step k delivered ks[k] of n, split evenly."""
    sc = load('loss = ["0%", "10%", "20%", "30%"]\nrepeat = 2\nstep = "2s"')
    assert sc.sweep is not None
    wins = msweep.windows(sc.sweep)
    raw = [{"flows.cbr.delivery_ratio": degradation.Ratio(ks[w.step] // 2, n // 2)} for w in wins]
    pts = degradation.points(sc.sweep, wins, raw)
    return {"axis": "loss", "unit": "fraction", "steps": sc.sweep.texts(),
            "stress": list(sc.sweep.values), "step_s": 2.0, "settle_s": 0.5, "repeat": 2,
            "flows": {"cbr": "udp"}, "points": pts,
            "curves": degradation.curve_dicts(sc.sweep, pts), "windows": []}  # fmt: skip


def test_curves_and_their_verdict() -> None:
    sw = sweep_results([200, 180, 160, 60])
    c = sw["curves"]["flows.cbr.delivery_ratio"]
    assert c["values"] == [1.0, 0.9, 0.8, 0.3] and c["stress"] == [0.0, 0.1, 0.2, 0.3]
    checks = degradation.judge(
        [
            "curve.flows.cbr.delivery_ratio floor 80% up_to loss=20%",
            "curve.flows.cbr.delivery_ratio floor 85% up_to loss=20%",
            "curve.flows.cbr.delivery_ratio no_cliff 20%",
            "curve.flows.cbr.delivery_ratio monotone",
            "curve.flows.cbr.delivery_ratio knee after loss=20%",
        ],
        sw["curves"],
    )
    assert [ch["passed"] for ch in checks] == [True, False, False, True, True]
    assert checks[4]["value"] == pytest.approx(0.26)  # 50% between 80% at 20% and 30% at 30%
    assert "at loss=30%" in checks[2]["explanation"]


def test_the_default_verdict_passes_a_graceful_decline_and_fails_a_rise() -> None:
    graceful = sweep_results([200, 196, 186, 150])
    defaults = degradation.default_assertions({"cbr": "udp", "bulk": "tcp"})
    assert defaults == [
        "curve.flows.cbr.delivery_ratio monotone", "curve.flows.cbr.delivery_ratio knee",
        "curve.flows.bulk.goodput_bps monotone", "curve.flows.bulk.goodput_bps knee",
    ]  # fmt: skip
    checks = degradation.judge(defaults[:2], graceful["curves"], default=True)
    assert all(ch["passed"] and ch["default"] for ch in checks), checks
    # delivery that rises well beyond its intervals under more loss is not monotone
    rising = sweep_results([150, 150, 200, 200])
    assert not degradation.judge(defaults[:1], rising["curves"])[0]["passed"]
    # noise inside the intervals is not a rise
    noisy = sweep_results([190, 194, 180, 182])
    assert degradation.judge(defaults[:1], noisy["curves"])[0]["passed"]


def test_the_degradation_table_and_verdict_lines() -> None:
    sw = sweep_results([200, 180, 160, 60])
    checks = degradation.judge(["curve.flows.cbr.delivery_ratio knee"], sw["curves"])
    results = {"run": {"scenario": "x"}, "mesh": {}, "sweep": sw, "checks": checks,
               "passed": True, "valid": True}  # fmt: skip
    text = report.summary(results)
    assert "degradation over loss (4 steps of 2 s, first 0.5 s not measured, 2 repeats" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("3 "))
    assert row.split()[:4] == ["3", "30%", "cbr", "30%"] and "(60/200)" in row
    lo, hi = stats.clopper_pearson(60, 200)
    assert f"[{curves.format_value(lo, 'delivery_ratio')}," in row
    assert "PASS curve.flows.cbr.delivery_ratio knee: flows.cbr.delivery_ratio falls below" in text
    assert sweep_report.table_lines({"flows": {}}) == []


def test_degradation_png_is_written(tmp_path) -> None:
    # python3-matplotlib is installed by scripts/setup.sh (as for timeline.png)
    sw = sweep_results([200, 180, 160, 60])
    results = {"run": {"scenario": "x"}, "sweep": sw, "checks": []}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = sweep_report.plot(results, tmp_path, plt)
    assert written and (tmp_path / "degradation.png").stat().st_size > 1000


def test_a_falling_stress_axis_reads_up_to_in_sweep_order() -> None:
    c = curves.Curve.from_texts("rate", ["4mbit", "2mbit", "1mbit"], [1.0, 0.9, 0.4],
                                metric="flows.cbr.delivery_ratio")  # fmt: skip
    assert curves.floor(c, 0.9, "rate=2mbit").passed
    assert not curves.floor(c, 0.9, "rate=1mbit").passed
    assert not curves.floor(c, 0.9, "rate=500kbit").passed  # beyond the sweep
    k = curves.knee(c)
    assert k.value == pytest.approx(1.2e6) and k.passed  # 50%: 80% of the way to 1mbit
    assert curves.knee(c, after="rate=2mbit").passed
    assert not curves.knee(c, after="rate=1mbit").passed
    with pytest.raises(ValueError, match="fall strictly"):
        curves.Curve("rate", [4e6, 2e6, 3e6], [1, 1, 1], unit="bit/s")
