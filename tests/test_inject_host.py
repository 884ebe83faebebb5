"""A hostile node against babeld on the host (root, babeld): the run sends every planned
forged packet, records each one in inject/NODE.pcap (the generator's bytes for the
seed: replayable), every babeld lives through it, and the routes come back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshstress.traffic.crafted import read_pcap

pytestmark = pytest.mark.network
pytest.importorskip("scapy", reason="scapy not installed (pip install scapy)")

SCENARIO = """
[scenario]
name = "inject-babel"
duration = "14s"
route_interval = "0.5s"

[mesh]
generate = "grid4 3 3"
routing = "babeld"
settings = { hello_interval = "0.5s" }
converge_timeout = "60s"

[[traffic]]
name = "cbr"
kind = "udp"
from = "n0"
to = "n8"
rate = "20pps"

[[events]]
at = "1s"
action = "inject"
node = "n4"
protocol = "babel"
attack = "ATTACK"
rate = "40pps"
for = "3s"
seed = 99
recover_within = "30s"
"""


@pytest.mark.parametrize("attack", ["malformed-tlv", "seqno-jump"])
def test_babeld_survives_a_hostile_node(run_scenario, tmp_path, attack):
    r = run_scenario(SCENARIO.replace("ATTACK", attack))
    inj = r["inject"]
    (ev,) = inj["events"]
    assert (ev["planned"], ev["sent"], ev["send_errors"]) == (120, 120, 0), ev
    assert inj["daemons"] == {"role": "babeld", "expected": 9, "dead": [], "alive": True}
    assert ev["routes"]["snapshots"] > 0
    # the pcap holds exactly the frames sent, which are the plan's (the seed's) frames
    (run,) = [p for p in Path(tmp_path).iterdir() if p.name.startswith("run")]
    sent = [f for _, f in read_pcap(str(run / ev["pcap"]))]
    plan = json.loads((run / "inject" / "n4.plan.json").read_text())
    assert plan["seed"] == 99
    assert sent == [bytes.fromhex(h) for _, h in plan["frames"]]
    daemons = [c for c in r["checks"] if c["metric"] == "inject.daemons.alive"]
    assert daemons and daemons[0]["passed"]


def test_the_sender_is_armed_before_t0_and_fired_at_its_event(run_scenario):
    """The sender is started with the flows (before t0) and fired at the event: its first
    frame goes out no earlier than the event began (t_rel), and soon after it; the
    event's own record says when its frames went out and how many."""
    r = run_scenario(SCENARIO.replace("ATTACK", "bogus-metric").replace('"14s"', '"8s"'))
    (ev,) = [e for e in r["events"] if e["action"] == "inject"]
    d = ev["detail"]
    assert d["armed"] is True
    assert (d["planned"], d["sent"]) == (120, 120), d
    assert d["first_s"] >= ev["t_rel"], (d, ev["t_rel"])
    # a sender started only at the event was seconds late (7.5-22 s in the lab): armed, it
    # fires inside the attack's own span (what the scenario sets, not the host's speed)
    assert d["first_s"] - ev["t_rel"] < 119 / 40, (d, ev["t_rel"])
    # frame k is due k / rate after the first: the last no earlier than 119 / 40 s on
    assert d["last_s"] - d["first_s"] >= 119 / 40 - 0.001, d
    (inj,) = r["inject"]["events"]
    assert (inj["first_s"], inj["last_s"], inj["sent"]) == (d["first_s"], d["last_s"], 120)
