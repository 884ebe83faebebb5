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
    # 12 s at 100 pps; n1->n2 loses 30% and is 40 ms late from 3 s to 8 s. How many
    # packets the sender got out depends on the host: judge each time bin by what was
    # sent in it (the series is by send time).
    assert 0 < cbr["sent"] <= 1250, cbr["sent"]
    assert cbr["received"] + cbr["lost"] == cbr["sent"]
    series = cbr["series"]
    rows = list(zip(series["t"], series["delivery_ratio"], series["latency_ms"], strict=True))
    during = [(d, x) for t, d, x in rows if 3.5 <= t < 7.5]
    after = [(d, x) for t, d, x in rows if t >= 9]
    assert during and after, rows
    # 30% loss: 8 bins of ~50 packets average 0.7 (s.d. ~0.02 over the window)
    assert 0.55 <= sum(d for d, _ in during) / len(during) <= 0.85, during
    assert min(x for _, x in during if x is not None) >= 40.0
    # back to ideal: nothing lost on purpose, and the 40 ms are gone
    assert sum(d for d, _ in after) / len(after) >= 0.95, after
    assert max(x for _, x in after if x is not None) < 20.0
    assert cbr["latency_ms"]["max"] >= 40.0
    assert [e["action"] for e in r["events"]] == ["impair", "impair"]
    assert r["passed"], r["checks"]
