"""`meshstress run` where the kernel has batman-adv and netem (the VM lab in CI)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.kernel("batman-adv", "netem")

SCENARIO = """
[scenario]
name = "lossy-line"
duration = "12s"
route_interval = "0.5s"

[mesh]
generate = "line 4"
routing = "batman-adv"
settings = { algorithm = "BATMAN_V" }
converge_timeout = "60s"

[[traffic]]
name = "cbr"
kind = "udp"
from = "n0"
to = "n3"
rate = "100pps"

[[events]]
at = "3s"
action = "impair"
link = ["n1", "n2"]
loss = "30%"
delay = "40ms"

[[events]]
at = "8s"
action = "impair"
link = ["n1", "n2"]
loss = "0%"  # back to ideal, both directions

[verdict]
assert = ["flows.cbr.delivery_ratio >= 50%", "flows.cbr.latency_ms.max >= 40ms"]
"""


def test_run_on_batman_adv_measures_an_impairment_event(run_scenario) -> None:
    r = run_scenario(SCENARIO)
    assert r["mesh"]["routing"] == "batman-adv" and r["mesh"]["converged"]
    cbr = r["flows"]["cbr"]
    # 12 s at 100 pps (at most 1200 on schedule; how many a slow host gets out varies);
    # n1->n2 loses 30% for 5 s: about an eighth of what was sent is lost
    assert 0 < cbr["sent"] <= 1250, cbr["sent"]
    assert 0.75 <= cbr["delivery_ratio"] <= 0.97, cbr["delivery_ratio"]
    # one way crosses the delayed direction while it lasts: 40 ms shows, then goes away
    assert cbr["latency_ms"]["max"] >= 40.0
    assert cbr["latency_ms"]["p50"] < 40.0  # most of the run was ideal
    series = cbr["series"]
    during = [x for t, x in zip(series["t"], series["latency_ms"], strict=True) if 4 <= t < 7.5]
    after = [x for t, x in zip(series["t"], series["latency_ms"], strict=True) if t >= 9]
    assert during and min(x for x in during if x is not None) >= 40.0
    assert after and max(x for x in after if x is not None) < 20.0
    assert [e["action"] for e in r["events"]] == ["impair", "impair"]
    assert r["passed"], r["checks"]
