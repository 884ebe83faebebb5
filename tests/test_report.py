"""Run folders: summary, JUnit, the lab's self-contained scenario copy, routing summaries."""

from __future__ import annotations

import json
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

from meshstress import report
from meshstress.routing.converge import RouteSnapshot
from meshstress.runner import routing_summary

RESULTS = {
    "run": {"scenario": "demo", "source": "demo.toml", "where": "host", "kernel": "6.18",
            "wall_s": 12.5},
    "mesh": {"nodes": 9, "links": 12, "segments": 0, "routing": "babeld", "setup_s": 0.1,
             "converged": True, "convergence_s": 2.0, "teardown_s": 0.3},
    "flows": {"cbr": {"kind": "udp", "from": "n0", "to": "n8", "sent": 1000, "received": 800,
                      "delivery_ratio": 0.8, "latency_ms": {"p50": 0.2, "p99": 4.0},
                      "longest_outage_s": 2.0, "throughput_bps": 160000.0}},
    "events": [{"t_rel": 5.0, "action": "link-down", "target": "n0-n1", "late_s": 0.001,
                "recovery_s": {"cbr": 2.0}}],
    "checks": [
        {"assert": "flows.cbr.delivery_ratio >= 90%", "metric": "flows.cbr.delivery_ratio",
         "actual": 0.8, "passed": False},
        {"assert": "events[0].recovery_s.cbr <= 5s", "metric": "events[0].recovery_s.cbr",
         "actual": 2.0, "passed": True},
    ],
    "passed": False,
}  # fmt: skip


def test_summary_names_verdict_flows_events_and_each_check() -> None:
    text = report.summary(RESULTS)
    assert "FAILED" in text.splitlines()[0]
    assert "cbr" in text and "n0->n8" in text and "160 kbit/s" in text
    assert "link-down" in text and "cbr 2" in text
    assert "FAIL flows.cbr.delivery_ratio >= 90%: measured 0.8" in text
    assert "PASS events[0].recovery_s.cbr <= 5s: measured 2" in text


def test_junit_has_one_case_per_check_and_the_failure() -> None:
    root = ET.fromstring(report.junit(RESULTS))
    assert root.get("tests") == "2" and root.get("failures") == "1"
    cases = root.findall("testcase")
    assert [c.get("name") for c in cases] == [c["assert"] for c in RESULTS["checks"]]
    failure = cases[0].find("failure")
    assert failure is not None and "0.8" in (failure.get("message") or "")
    assert cases[1].find("failure") is None


def test_write_all_and_rerender(tmp_path: Path) -> None:
    results = json.loads(json.dumps(RESULTS))
    report.write_all(results, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["passed"] is False
    assert "FAILED" in (tmp_path / "summary.txt").read_text()
    (tmp_path / "summary.txt").unlink()
    again = report.rerender(tmp_path)
    assert again["flows"] == RESULTS["flows"] and (tmp_path / "summary.txt").exists()


def test_scenario_data_dumps_as_toml_that_loads_back() -> None:
    data = {
        "scenario": {"name": "x", "duration": "20s", "probes": ["traffic"]},
        "mesh": {"topology": "topology.toml", "ideal": False},
        "traffic": [{"kind": "udp", "from": "n0", "to": "n8", "rate": "100pps"}],
        "events": [{"at": "5s", "action": "partition", "groups": [["n0", "n1"]],
                    "a_to_b": {"loss": "5%"}}],
        "verdict": {"assert": ["flows.a.delivery_ratio >= 90%", 'x == "q\\"uote"']},
    }  # fmt: skip
    assert tomllib.loads(report.dumps_scenario_data(data)) == data


def _snap(t: float, routes: dict) -> RouteSnapshot:
    return RouteSnapshot(t, routes)


def test_routing_summary_counts_changes_and_reachability() -> None:
    full = {"a": {"b": ("b", 1)}, "b": {"a": ("a", 1)}}
    half = {"a": {"b": (None, None)}, "b": {"a": ("a", 1)}}
    snaps = [_snap(10.0, full), _snap(11.0, half), _snap(12.0, full)]
    s = routing_summary(snaps, t0=10.0)
    assert s["snapshots"] == 3
    assert s["reachable_min"] == 0.5 and s["reachable_final"] == 1.0
    assert s["reachable_series"] == [(0.0, 1.0), (1.0, 0.5), (2.0, 1.0)]
    assert s["route_changes"] >= 1
    assert routing_summary([], 0.0) == {"snapshots": 0}


def test_probe_totals_sum_nodes_and_split_batman_signalling_from_payload() -> None:
    from meshstress.runner import probe_totals

    iface = {"tx_packets": 10, "tx_bytes": 1000, "rx_packets": 0, "rx_bytes": 0,
             "batman_types": {"ogm2": {"tx_packets": 4, "tx_bytes": 200},
                              "unicast": {"tx_packets": 6, "tx_bytes": 800}}}  # fmt: skip
    delta = {
        "nodes": {
            "a": {"interfaces": {"i0": iface, "lo": {"tx_packets": 99, "tx_bytes": 99}},
                  "drops": {"NO_SOCKET": 2}, "tcp_retransmits": 3},
            "b": {"interfaces": {"i1": iface}, "drops": {"NO_SOCKET": 1, "QDISC_DROP": 5},
                  "tcp_retransmits": 0},
        }
    }  # fmt: skip
    t = probe_totals(delta)
    assert t["tx_packets"] == 20 and t["tx_bytes"] == 2000  # lo left out
    assert t["drops"] == 8 and list(t["drop_reasons"]) == ["QDISC_DROP", "NO_SOCKET"]
    assert t["tcp_retransmits"] == 3
    assert t["batman_control_tx_bytes"] == 400 and t["batman_control_share"] == 0.2


def test_the_summary_has_a_probe_table_per_node() -> None:
    iface = {"tx_packets": 0, "tx_bytes": 0, "rx_packets": 0, "rx_bytes": 0}
    results = {
        "run": {}, "mesh": {}, "checks": [],
        "probes": {"nodes": {
            "n0": {"interfaces": {"lo": dict(iface, tx_packets=99),
                                  "ms-ab-i0": dict(iface, tx_packets=10, rx_packets=7,
                                                   tx_bytes=1000),
                                  "ms-ab-i1": dict(iface, tx_packets=5, rx_packets=1),
                                  "bat0": dict(iface, tx_packets=12, rx_packets=6)},
                   "drops": {"QDISC_DROP": 3}, "tcp_retransmits": 4},
            "n1": {"interfaces": {"ms-ab-i0": dict(iface, rx_packets=15)},
                   "drops": {}, "tcp_retransmits": 0},
        }},
    }  # fmt: skip
    lines = report.summary(results).splitlines()
    at = lines.index("probes per node (BCC, over the run):")
    assert lines[at + 1].split() == ["node", "link", "tx", "pkts", "link", "rx", "pkts", "link",
                                     "tx", "bytes", "bat0", "tx", "pkts", "bat0", "rx", "pkts",
                                     "tcp", "retrans", "drops"]  # fmt: skip
    assert lines[at + 2].split() == ["n0", "15", "8", "1000", "12", "6", "4", "3"]
    assert lines[at + 3].split() == ["n1", "0", "15", "0", "0", "0", "0", "0"]
