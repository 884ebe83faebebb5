"""Sweeps on the host (root): a rate sweep (tbf) and a failed_links sweep (static routing),
each step applied on the running mesh and measured in its own window."""

from __future__ import annotations

import pytest

from meshstress.build import impair
from meshstress.model import scenario
from meshstress.model.sweep import link_order
from meshstress.model.topology import Impairment

pytestmark = pytest.mark.network

SIZE = 1000
FRAME_BITS = (SIZE + 8 + 20 + 14) * 8  # UDP payload + UDP, IPv4 and Ethernet headers

RATE = f"""
[scenario]
name = "rate-sweep"

[mesh]
generate = "line 3"
routing = "static"

[[traffic]]
name = "cbr"
kind = "udp"
from = "n0"
to = "n2"
rate = "200pps"
size = {SIZE}

[sweep]
rate = ["20mbit", "1mbit", "500kbit"]
links = [["n1", "n2"]]
step = "3s"
settle = "1s"

[verdict]
assert = ["curve.flows.cbr.delivery_ratio monotone",
          "curve.flows.cbr.delivery_ratio floor 99% up_to rate=20mbit"]
"""


def test_a_rate_sweep_delivers_what_each_step_lets_through(run_scenario) -> None:
    r = run_scenario(RATE)
    sw = r["sweep"]
    assert sw["axis"] == "rate" and sw["stress"] == [20e6, 1e6, 500e3]
    assert [w["step"] for w in sw["windows"]] == [0, 1, 2]
    for w in sw["windows"]:
        cbr = w["flows"]["cbr"]
        sent, got = cbr["sent"], cbr["received"]
        assert sent > 0 and got + cbr["lost"] == sent, cbr
        rate = w["stress"]
        seconds = w["measured"][1] - w["measured"][0]
        # tbf lets through rate x time, plus what its bucket and queue held at the
        # window's edges
        args = impair.tbf_args(Impairment(rate=int(rate)))
        slack = (args["limit"] + args["burst"]) * 8
        top = (rate * seconds + slack) / FRAME_BITS
        floor = (rate * seconds - slack) / FRAME_BITS
        assert got <= top, (w["text"], got, top)
        assert got >= 0.9 * min(sent, floor), (w["text"], got, sent, floor)
        # the step was applied when its window began, to both directions of n1-n2
        applied = w["applied"]
        assert abs(applied["t_rel"] - w["start"]) < 0.5, applied
        (change,) = applied["changes"]
        assert change["action"] == "impair" and change["target"] == "n1-n2"
        assert set(change["detail"]) == {"n1->n2", "n2->n1"}
    first = sw["windows"][0]["flows"]["cbr"]
    assert first["received"] == first["sent"]  # 1.6 Mbit/s fits in 20mbit
    pts = sw["points"]
    k, n = (pts[1]["metrics"]["flows.cbr.delivery_ratio"][x] for x in ("k", "n"))
    assert k < n * 0.75  # 1mbit of 1.67 Mbit/s on the wire
    assert [c["passed"] for c in r["checks"]] == [True, True, True], r["checks"]
    assert r["passed"]


FAILED = """
[scenario]
name = "failed-links"

[mesh]
generate = "line 4"
routing = "static"

[[traffic]]
name = "far"
kind = "udp"
from = "n0"
to = "n3"
rate = "100pps"

[[traffic]]
name = "near"
kind = "udp"
from = "n0"
to = "n1"
rate = "100pps"

[sweep]
failed_links = [0, 1, 2]
step = "2s"
settle = "0.5s"
seed = 5
"""


def test_a_failed_links_sweep_cuts_the_chosen_links_in_one_step(run_scenario) -> None:
    sc = scenario.loads(FAILED, "f.toml")
    assert sc.sweep is not None
    order = link_order(sc.sweep)
    r = run_scenario(FAILED)
    sw = r["sweep"]
    for w in sw["windows"]:
        down = {frozenset(lk) for lk in order[: int(w["stress"])]}
        far, near = w["flows"]["far"], w["flows"]["near"]
        assert far["sent"] > 0 and near["sent"] > 0
        # static routes never go around: the far flow crosses every link of the line
        if down:
            assert far["received"] == 0, (w["text"], far)
        else:
            assert far["received"] == far["sent"], far
        if frozenset(("n0", "n1")) in down:
            assert near["received"] == 0, (w["text"], near)
        else:
            assert near["received"] == near["sent"], (w["text"], near)
        changes = w["applied"]["changes"]
        went = {frozenset(x.split("-")) for c in changes for x in c.get("down", [])}
        assert went == down - {frozenset(lk) for lk in order[: int(w["stress"]) - 1]} or (
            w["step"] == 0 and not changes
        ), changes
    # no assertion given: the default verdict judged each flow's delivery
    defaults = [c for c in r["checks"] if c.get("default")]
    assert {c["assert"] for c in defaults} == {
        f"curve.flows.{f}.delivery_ratio {check}"
        for f in ("far", "near")
        for check in ("monotone", "knee")
    }
    assert all(c["passed"] for c in defaults), defaults
