"""A run on a saturated host is INVALID (exit 4), not failed: its numbers measured the
host. The judge on given load samples, the scenario's limits, the run folder's views,
and a real run whose limit makes any measured load count as saturation."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from meshstress import report
from meshstress.cli.run import exit_code
from meshstress.errors import InputError
from meshstress.judge.verdict import HostLimits, judge_host, softnet_dropped
from meshstress.model import scenario
from meshstress.runner import host_load

DEFAULT = HostLimits()


def test_judge_host_on_given_load_samples() -> None:
    calm = [0.10, 0.30, 0.20, 0.99]  # one saturated sample of four: 25%, not above
    valid, why = judge_host(calm, 0, DEFAULT)
    assert valid, why
    assert why == "host not saturated: CPUs 95%+ busy in 1 of 4 samples, 0 softnet backlog drops"
    # two of four at or above 95%: half the run
    valid, why = judge_host([0.95, 1.0, 0.40, 0.50], 0, DEFAULT)
    assert not valid
    assert why.startswith("the host's CPUs were 95%+ busy in 50% of the run's samples (limit 25%)")
    assert why.endswith("the numbers measure the host, not the mesh")
    # softnet backlog drops alone invalidate, and both reasons are named on one line
    valid, why = judge_host(calm, 3, DEFAULT)
    assert not valid and "dropped 3 packets from full softnet backlogs (limit 0)" in why
    valid, why = judge_host([1.0, 1.0], 7, DEFAULT)
    assert not valid and "100% of the run's samples" in why and "dropped 7 packets" in why
    assert "\n" not in why
    # the limits are the scenario's
    assert judge_host(calm, 3, HostLimits(max_softnet_drops=3))[0]
    assert not judge_host(calm, 0, HostLimits(max_host_busy=0.3))[0]  # 0.30, 0.99: 50%
    assert judge_host([1.0, 1.0], 0, HostLimits(max_saturated_share=1.0))[0]
    assert not judge_host([0.0, 0.001], 0, HostLimits(max_host_busy=0.0))[0]  # any load
    # nothing measured: nothing to hold against the run, and it says so
    assert judge_host([], None, DEFAULT) == (True, "host not saturated: host CPU not sampled")


def test_softnet_dropped_sums_the_second_column_of_every_cpu() -> None:
    text = (
        "000d3520 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n"
        "000e2d07 0000001a 00000002 00000000 00000000 00000000 00000000 00000000\n"
        "00000001 00000100 00000000 00000000 00000000 00000000 00000000 00000000\n"
    )
    assert softnet_dropped(text) == 0x1A + 0x100
    assert softnet_dropped("") == 0


def test_host_load_counts_saturated_samples_at_the_scenarios_threshold() -> None:
    calm = host_load([10.0, 30.0, 20.0], [0.01, 0.03], softnet_dropped=0)
    assert calm == {"cpu_mean_pct": 20.0, "cpu_max_pct": 30.0, "cpu_samples": 3,
                    "saturated_share": 0.0, "route_snapshot_s": 0.02, "softnet_dropped": 0}  # fmt: skip
    busy = host_load([99.0, 100.0, 40.0, 97.0], [])
    assert busy["saturated_share"] == 0.75 and "softnet_dropped" not in busy
    assert (
        host_load([99.0, 100.0, 40.0, 97.0], [], HostLimits(max_host_busy=0.4))["saturated_share"]
        == 1.0
    )
    assert host_load([], []) == {}


SCEN = """
[mesh]
generate = "line 2"
[verdict]
assert = []
"""


def test_scenario_host_limits_default_parse_and_reject_bad_values() -> None:
    assert scenario.loads(SCEN, "s.toml").host_limits == DEFAULT
    sc = scenario.loads(SCEN + 'max_host_busy = "80%"\nmax_saturated_share = 0.5\n'
                        "max_softnet_drops = 10\n", "s.toml")  # fmt: skip
    assert sc.host_limits == HostLimits(0.8, 0.5, 10)
    for line, fld in (
        ('max_host_busy = "120%"', "verdict.max_host_busy"),
        ("max_host_busy = -0.1", "verdict.max_host_busy"),
        ('max_saturated_share = "lots"', "verdict.max_saturated_share"),
        ("max_softnet_drops = -1", "verdict.max_softnet_drops"),
        ("max_softnet_drops = 1.5", "verdict.max_softnet_drops"),
        ("max_host_load = 1", "verdict.max_host_load"),
    ):
        with pytest.raises(InputError) as exc:
            scenario.loads(SCEN + line + "\n", "s.toml")
        assert (exc.value.source, exc.value.field) == ("s.toml", fld), line


RESULTS = {
    "run": {"scenario": "demo", "source": "demo.toml", "where": "host", "kernel": "6.18",
            "host": {"cpu_mean_pct": 97.0, "cpu_max_pct": 100.0, "saturated_share": 0.8,
                     "softnet_dropped": 0}},
    "mesh": {"nodes": 2},
    "flows": {"cbr": {"kind": "udp", "from": "n0", "to": "n1", "sent": 100, "received": 99,
                      "delivery_ratio": 0.99}},
    "checks": [{"assert": "flows.cbr.delivery_ratio >= 90%", "metric": "flows.cbr.delivery_ratio",
                "actual": 0.99, "passed": True}],
    "passed": True,
    "valid": False,
    "validity": "the host's CPUs were 95%+ busy in 80% of the run's samples (limit 25%): "
                "the numbers measure the host, not the mesh",
}  # fmt: skip


def test_an_invalid_run_says_invalid_once_and_exits_4() -> None:
    text = report.summary(RESULTS)
    assert "demo.toml) on host, kernel 6.18: INVALID" in text.splitlines()[0]
    assert [ln for ln in text.splitlines() if "INVALID:" in ln] == [
        f"INVALID: {RESULTS['validity']}"
    ]
    assert "PASS flows.cbr.delivery_ratio" in text  # the numbers and checks stay
    root = ET.fromstring(report.junit(RESULTS))
    assert root.get("errors") == "1" and root.get("failures") == "0" and root.get("tests") == "2"
    err = root.find("testcase/error")
    assert err is not None and err.get("message") == RESULTS["validity"]
    assert exit_code(RESULTS) == 4
    assert exit_code({**RESULTS, "passed": False}) == 4
    valid = {**RESULTS, "valid": True, "validity": "host not saturated: ..."}
    assert exit_code(valid) == 0 and exit_code({**valid, "passed": False}) == 1
    assert "INVALID" not in report.summary(valid) and "PASSED" in report.summary(valid)
    assert ET.fromstring(report.junit(valid)).get("errors") == "0"


RUN = """
[scenario]
name = "busy"
duration = "3s"
warmup = "0.2s"
route_interval = "0.25s"

[mesh]
generate = "line 2"
routing = "static"

[[traffic]]
name = "cbr"
kind = "udp"
from = "n0"
to = "n1"
rate = "50pps"

[verdict]
assert = ["flows.cbr.sent >= 1"]
"""


@pytest.mark.network
def test_cli_run_on_a_saturated_host_is_invalid_exit_4_numbers_kept(tmp_path: Path) -> None:
    """max_host_busy = 0%: any measured load counts as saturation, whatever the host's
    speed; the run is INVALID although its check passes."""
    scen = tmp_path / "busy.toml"
    scen.write_text(RUN + 'max_host_busy = "0%"\n')
    out = tmp_path / "out"
    p = subprocess.run(
        [sys.executable, "-m", "meshstress", "run", "--where", "host", "--out", str(out), str(scen)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 4, p.stdout + p.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["valid"] is False and results["passed"] is True
    assert results["flows"]["cbr"]["sent"] > 0 and results["run"]["host"]["cpu_samples"] > 0
    assert results["validity"].startswith("the host's CPUs were 0%+ busy in 100% of the run's")
    said = [ln for ln in p.stderr.splitlines() if "INVALID" in ln]
    assert said == [f"meshstress: INVALID: {results['validity']}"]
    assert "INVALID" in p.stdout.splitlines()[0]
    # `meshstress report` renders it again and exits 4 as well
    again = subprocess.run([sys.executable, "-m", "meshstress", "report", str(out)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert again.returncode == 4 and f"INVALID: {results['validity']}" in again.stdout


@pytest.mark.network
def test_a_run_within_its_host_limits_is_valid_with_the_reason(run_scenario) -> None:
    # a share of saturated samples cannot exceed 100%, and drops by other meshes on this
    # shared host are allowed: valid whatever the host's load
    r = run_scenario(RUN + 'max_saturated_share = "100%"\nmax_softnet_drops = 1000000000\n')
    assert r["valid"] is True and r["passed"] is True
    assert r["validity"].startswith("host not saturated: CPUs 95%+ busy in ")
    assert r["run"]["host"]["cpu_samples"] > 0 and r["run"]["host"]["softnet_dropped"] >= 0
