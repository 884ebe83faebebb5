"""A loss sweep where the kernel has netem (the VM lab in CI): each step's delivery ratio
lies in the binomial interval of 1 - loss for the packets that step actually sent."""

from __future__ import annotations

import pytest
from sweep_scenarios import cbr_sweep

from meshstress.judge import stats

pytestmark = pytest.mark.kernel("netem")

SCENARIO = cbr_sweep(
    "loss-sweep-lab",
    "loss",
    ["0%", "10%", "30%"],
    step="4s",
    floor="60% up_to loss=30%",
)


def test_a_loss_sweep_delivers_one_minus_loss_per_step(run_scenario) -> None:
    r = run_scenario(SCENARIO)
    sw = r["sweep"]
    assert sw["axis"] == "loss" and sw["stress"] == [0.0, 0.1, 0.3]
    for p in sw["points"]:
        e = p["metrics"]["flows.cbr.delivery_ratio"]
        k, n = e["k"], e["n"]
        # a loaded emulated guest may send fewer than 300 in a window: judge what it sent
        assert n >= 50, p
        lo, hi = stats.binomial_interval(n, 1.0 - p["stress"])
        assert lo <= k <= hi, (p["text"], k, n, (lo, hi))
    # and the loss changed between steps: 30% is not what 0% delivers
    last = sw["points"][-1]["metrics"]["flows.cbr.delivery_ratio"]
    assert last["k"] < last["n"] * 0.8
    assert r["passed"], r["checks"]
