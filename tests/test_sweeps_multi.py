"""Several sweeps in one scenario ([[sweep]]), without root: parsing, their timeline one
after another with each axis restored, per-axis curve assertions, results, the tables
and one plot per axis; and process metrics per step (the provider of [[process]])."""

from __future__ import annotations

import json

import pytest

from meshstress import report
from meshstress.errors import InputError
from meshstress.judge import degradation
from meshstress.model import scenario
from meshstress.model import sweep as msweep
from meshstress.procs import metrics as pmetrics
from meshstress.report import sweep as sweep_report
from meshstress.stress import sweep as ssweep

HEAD = """
[mesh]
generate = "line 3"
routing = "static"

[[traffic]]
name = "cbr"
kind = "udp"
from = "n0"
to = "n2"
rate = "100pps"
"""

TWO = """
[[sweep]]
rate = ["4mbit", "1mbit"]
step = "4s"

[[sweep]]
failed_links = [0, 1, 2]
step = "2s"
"""


def load(sweeps: str = TWO, verdict: str = "", head: str = HEAD) -> scenario.Scenario:
    return scenario.loads(head + sweeps + verdict, "s.toml")


def error(sweeps: str = TWO, verdict: str = "", head: str = HEAD) -> InputError:
    with pytest.raises(InputError) as exc:
        load(sweeps, verdict, head)
    assert exc.value.source == "s.toml"
    return exc.value


def verdict(*lines: str) -> str:
    return "\n[verdict]\nassert = " + json.dumps(list(lines)) + "\n"


# --- parsing ---------------------------------------------------------------------------


def test_sweeps_follow_one_another_and_add_up_to_the_duration() -> None:
    sc = load()
    assert [(s.axis, s.index, s.offset) for s in sc.sweeps] == [
        ("rate", 0, 0.0),
        ("failed_links", 1, 8.0),
    ]
    assert sc.duration == 14.0 and sc.sweep is sc.sweeps[0]
    starts = [w.start for s in sc.sweeps for w in msweep.windows(s)]
    assert starts == [0.0, 4.0, 8.0, 10.0, 12.0]
    e = error(TWO.replace("[[sweep]]\nrate", '[scenario]\nduration = "10s"\n[[sweep]]\nrate', 1))
    assert e.field == "scenario.duration" and "8s + 6s = 14s" in e.message, e


@pytest.mark.parametrize(
    ("sweeps", "field", "words"),
    [
        ('[[sweep]]\nloss = ["0%"]\n[[sweep]]\nloss = ["1%"]', "sweep[1].loss", "one sweep per"),
        ('[[sweep]]\nloss = ["0%"]\n[[sweep]]\nrate = ["2mbit", "3mbit"]', "sweep[1].rate[1]",
         "fall strictly"),
        ('[[sweep]]\nloss = ["0%"]\n[[sweep]]\nspeed = 1', "sweep[1].speed", "unknown key"),
        ('[[sweep]]\nloss = ["0%"]\n[[sweep]]\nfailed_links = [0]\nfresh = true',
         "sweep[1].fresh", "one sweep only"),
    ],
)  # fmt: skip
def test_bad_sweeps_of_several_name_their_index(sweeps: str, field: str, words: str) -> None:
    e = error(sweeps)
    assert e.field == field and words in e.message, e


def test_curve_assertions_name_the_axis_when_there_are_several() -> None:
    sc = load(verdict=verdict(
        "curve[rate].flows.cbr.delivery_ratio floor 90% up_to rate=1mbit",
        "curve[failed_links].flows.cbr.delivery_ratio monotone",
    ))  # fmt: skip
    assert [a.axis for a in sc.curve_assertions] == ["rate", "failed_links"]
    e = error(verdict=verdict("curve[rate].flows.cbr.delivery_ratio monotone",
                              "curve.flows.cbr.delivery_ratio monotone"))  # fmt: skip
    assert e.field == "verdict.assert[1]" and "name the axis" in e.message, e
    assert "curve[rate].flows.cbr.delivery_ratio" in e.message
    e = error(verdict=verdict("curve[loss].flows.cbr.delivery_ratio monotone"))
    assert e.field == "verdict.assert[0]" and "no sweep of 'loss'" in e.message, e
    e = error(verdict=verdict("curve[rate].flows.cbr.delivery_ratio knee after loss=5%"))
    assert e.field == "verdict.assert[0]" and "axis is rate" in e.message, e
    # one sweep: the plain form, and the named one, are both valid
    one = load(
        '[sweep]\nrate = ["4mbit", "1mbit"]\n',
        verdict(
            "curve.flows.cbr.delivery_ratio monotone", "curve[rate].flows.cbr.delivery_ratio knee"
        ),
    )
    assert [a.axis for a in one.curve_assertions] == [None, "rate"]


# --- the timeline: one after another, each axis restored -------------------------------


def test_each_sweep_puts_its_axis_back_before_the_next_begins() -> None:
    topo_toml = """
[[sweep]]
loss = ["0%", "5%"]
step = "2s"

[[sweep]]
delay = ["0ms", "20ms"]
links = [["n0", "n1"]]
step = "2s"

[[sweep]]
failed_links = [0, 2]
step = "2s"

[[sweep]]
rate = ["2mbit", "1mbit"]
step = "2s"
"""
    sc = load(topo_toml)
    acts = msweep.expand_all(sc.sweeps, sc.topology, sc.ideal)
    bounds = [a for a in acts if a.boundary]
    assert [(a.at, a.sweep) for a in bounds] == [(2.0 * i, i // 2) for i in range(8)]
    # the delay sweep (on n0-n1 only) starts by putting loss back as configured (0 here)
    # on n1-n2; on n0-n1 its own step does that (configured impairment, its delay)
    first_delay = bounds[2]
    assert [(ev.action, ev.link) for ev in first_delay.restore] == [("impair", ("n1", "n2"))]
    assert all(ev.ab is not None and ev.ab.loss == 0 for ev in first_delay.restore)
    assert [ev.link for ev in first_delay.events] == [("n0", "n1")]
    assert all(ev.ab is not None and ev.ab.loss == 0 for ev in first_delay.events)
    # the failed_links sweep: delay back to 0 first
    assert [ev.link for ev in bounds[4].restore] == [("n0", "n1")]
    assert all(ev.ab is not None and ev.ab.delay == 0 for ev in bounds[4].restore)
    # the rate sweep: the links the failed_links sweep took down come up
    assert sorted(ev.action for ev in bounds[6].restore) == ["link-up", "link-up"]
    assert not bounds[0].restore and not bounds[1].restore
    # what EventRunner.prepare is given includes the restores
    assert len(msweep.all_events(acts)) == sum(len(a.events) + len(a.restore) for a in acts)


class _Runner:
    """An EventRunner stand-in: records what the applier asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def set_links(
        self, down: list[object], up: list[object], carrier: str = "keep"
    ) -> dict[str, object]:
        self.calls.append(("links", (list(down), list(up))))
        return {"took_s": 0.001, "down": {}, "up": {}, "carrier": carrier}

    def apply(self, ev: object) -> dict[str, object]:
        self.calls.append(("apply", ev))
        return {"action": ev.action, "target": "x", "took_s": 0.001, "detail": {}}  # type: ignore[attr-defined]


def test_the_applier_restores_first_and_says_each_step() -> None:
    sc = load()
    acts = ssweep.actions(sc)
    said: list[str] = []
    runner = _Runner()
    applier = ssweep.SweepApplier(runner, None, said.append, 0.0, sc)  # type: ignore[arg-type]
    recs = [applier.step(a) for a in acts]
    assert [r["sweep_index"] for r in recs] == [0, 0, 1, 1, 1]
    assert "sweep rate 1/2: 4mbit for 4 s (2 change(s) in " in said[0], said
    assert "sweep failed_links 1/3: 0 for 2 s; rate back as configured" in said[2]
    # the rate restore (impair, back to no limit) comes before the failed links' batch
    kinds = [c[0] for c in runner.calls]
    assert kinds[-1] == "links"  # the last step takes one more link down
    restore = [c for c in runner.calls[4:] if c[0] == "apply"]
    assert restore and all(c[1].action == "impair" for c in restore)  # type: ignore[attr-defined]
    assert all(c[1].ab.rate is None for c in restore)  # type: ignore[attr-defined]


# --- results, checks, reports ----------------------------------------------------------


def _fake_results(sc: scenario.Scenario, delivered: dict[str, list[int]]) -> dict[str, object]:
    """Each sweep's results as ssweep.results makes them, from synthetic counts."""
    out = []
    for sw in sc.sweeps:
        wins = msweep.windows(sw)
        raw = [
            {
                "flows.cbr.delivery_ratio": degradation.Ratio(delivered[sw.axis][w.step], 100),
                "process.client.ok": degradation.Ratio(delivered[sw.axis][w.step] // 2, 50),
                "process.client.latency_ms": degradation.Mean((1.0 + w.step, 2.0 + w.step)),
            }
            for w in wins
        ]
        pts = degradation.points(sw, wins, raw)
        out.append({"index": sw.index, "axis": sw.axis, "unit": sw.unit, "start_s": sw.offset,
                    "steps": sw.texts(), "stress": list(sw.values), "step_s": sw.step,
                    "settle_s": sw.settle, "repeat": 1, "flows": {"cbr": "udp"},
                    "processes": ["client"], "points": pts, "windows": [],
                    "curves": degradation.curve_dicts(sw, pts)})  # fmt: skip
    return {"sweeps": out} if len(out) > 1 else {"sweep": out[0]}


def test_checks_judge_each_axis_against_its_own_curves() -> None:
    sc = load(verdict=verdict(
        "curve[failed_links].flows.cbr.delivery_ratio floor 90%",
        "curve[rate].flows.cbr.delivery_ratio floor 90%",
    ))  # fmt: skip
    res = _fake_results(sc, {"rate": [100, 95], "failed_links": [100, 60, 0]})
    checks = ssweep.checks(sc, degradation.sweeps_of(res))
    # in the order written, each judged on its axis: rate holds 90%, failed links do not
    assert [(c["axis"], c["passed"]) for c in checks] == [("failed_links", False), ("rate", True)]
    # no assertion: the default verdict per axis, named by it
    plain = load()
    checks = ssweep.checks(plain, degradation.sweeps_of(res))
    assert [c["assert"] for c in checks] == [
        "curve[rate].flows.cbr.delivery_ratio monotone",
        "curve[rate].flows.cbr.delivery_ratio knee",
        "curve[failed_links].flows.cbr.delivery_ratio monotone",
        "curve[failed_links].flows.cbr.delivery_ratio knee",
    ]
    assert all(c["default"] for c in checks)


def test_process_metrics_get_curves_with_binomial_intervals() -> None:
    sc = load()
    res = _fake_results(sc, {"rate": [100, 80], "failed_links": [100, 60, 20]})
    sw = degradation.sweeps_of(res)[1]
    ok = sw["curves"]["process.client.ok"]
    assert ok["values"] == [1.0, 0.6, 0.2] and ok["better"] == "higher"
    step1 = sw["points"][1]["metrics"]["process.client.ok"]
    assert (step1["k"], step1["n"]) == (30, 50)
    from meshstress.judge import stats

    lo, hi = stats.clopper_pearson(30, 50)
    assert step1["interval"] == [pytest.approx(lo, rel=1e-5), pytest.approx(hi, rel=1e-5)]
    mean = sw["curves"]["process.client.latency_ms"]
    assert mean["values"] == [1.5, 2.5, 3.5] and mean["better"] == "lower"


def test_a_process_provider_counts_its_samples_per_window() -> None:
    offset = 1000.0  # unix = monotonic + 1000
    samples = [(1000.0 + t, "ok", float(t < 5)) for t in range(10)]
    samples += [(1000.0 + t, "ms", float(t)) for t in range(10)]
    provide = pmetrics.step_provider(samples, offset)
    got = provide(0.0, 4.5)  # monotonic seconds
    assert got["ok"] == degradation.Ratio(5, 5)
    got = provide(4.5, 9.0)
    assert got["ok"] == degradation.Ratio(0, 5)
    assert got["ms"] == degradation.Mean((5.0, 6.0, 7.0, 8.0, 9.0))
    assert provide(20.0, 30.0) == {}


def test_the_summary_has_a_table_per_axis_and_a_plot_per_axis(tmp_path) -> None:
    sc = load()
    res = _fake_results(sc, {"rate": [100, 80], "failed_links": [100, 60, 20]})
    results = {"run": {"scenario": "x"}, "mesh": {}, **res, "checks": [],
               "passed": True, "valid": True}  # fmt: skip
    text = report.summary(results)
    assert "degradation over rate (2 steps of 4 s" in text
    assert (
        "degradation over failed_links (3 steps of 2 s, first 0.5 s not measured, "
        "from t = 8 s" in text
    )
    row = next(ln for ln in text.splitlines() if ln.split()[:3] == ["1", "1", "client.ok"])
    assert "(30/50)" in row
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = sweep_report.plot(results, tmp_path, plt)
    assert sorted(p.rsplit("/", 1)[1] for p in written) == [
        "degradation-failed_links.png", "degradation-rate.png"]  # fmt: skip
    assert not (tmp_path / "degradation.png").exists()
