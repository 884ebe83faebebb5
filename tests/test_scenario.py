"""Scenario files: parsing, validation (file and field named), where a scenario runs."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshstress import report
from meshstress.cli import cli
from meshstress.cli.run import default_scenario
from meshstress.errors import InputError
from meshstress.model import scenario

GOOD = """
[scenario]
name = "cut"
duration = "12s"

[mesh]
generate = "grid4 3 3"
routing = "static"

[[traffic]]
name = "cbr"
kind = "udp"
from = "n0"
to = "n8"
rate = "50pps"

[[events]]
at = "3s"
action = "link-down"
link = ["n0", "n1"]
for = "4s"

[verdict]
assert = ["flows.cbr.delivery_ratio >= 50%", "events[1].recovery_s.cbr <= 5s"]
"""


def test_good_scenario_parses() -> None:
    sc = scenario.loads(GOOD, "cut.toml")
    assert sc.name == "cut" and sc.duration == 12.0
    assert len(sc.topology.nodes) == 9 and sc.topology.routing == "static"
    assert [f.name for f in sc.flows] == ["cbr"]
    assert [(e.at, e.action) for e in sc.events] == [(3.0, "link-down"), (7.0, "link-up")]
    assert [a.metric for a in sc.assertions] == [
        "flows.cbr.delivery_ratio",
        "events[1].recovery_s.cbr",
    ]
    # static routing, no impairments, a radio-like link-down (the drop filter: clsact and
    # cls_bpf, in every stock kernel): a plain host runs it
    assert sc.needs() == ["tc-bpf"]
    lose = GOOD.replace('link = ["n0", "n1"]', 'link = ["n0", "n1"]\ncarrier = "lose"')
    assert lose != GOOD and scenario.loads(lose, "cut.toml").needs() == []


def test_default_scenario_is_the_mission() -> None:
    # batman-adv, netem steps in loss, latency and bandwidth, BCC probes, a verdict on
    # the curves (runs natively where the kernel has them, else in the VM lab)
    sc = scenario.load(default_scenario())
    assert sc.name == "mission" and sc.topology.routing == "batman-adv"
    assert [s.axis for s in sc.sweeps] == ["loss", "delay", "rate"]
    assert {"traffic", "tcp_retrans"} <= set(sc.probes)
    assert {f.kind for f in sc.flows} >= {"udp", "tcp"}
    assert {a.check for a in sc.curve_assertions} >= {"floor", "monotone", "knee"}
    assert {a.axis for a in sc.curve_assertions} == {"loss", "delay", "rate"}
    assert sc.needs() == ["batman-adv", "netem", "tbf", "bcc+headers"]


def test_quick_scenario_needs_nothing_special() -> None:
    # for hosts that can run the default neither natively nor in the VM lab: no
    # batman-adv, netem or BCC; its crash and partition cut radio-like (clsact, cls_bpf)
    sc = scenario.load(Path(__file__).parent.parent / "scenarios" / "quick.toml")
    assert sc.name == "quick" and sc.flows and sc.events and sc.assertions
    assert sc.needs() == ["tc-bpf"]


def test_example_scenarios_are_valid() -> None:
    files = sorted(Path(__file__).parent.parent.joinpath("scenarios").glob("*.toml"))
    assert files
    for f in files:
        scenario.load(f)


def test_topology_file_is_relative_to_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "t.toml").write_text('nodes = ["a", "b"]\n[[links]]\na = "a"\nb = "b"\n')
    (tmp_path / "s.toml").write_text('[mesh]\ntopology = "t.toml"\nrouting = "static"\n')
    sc = scenario.load(tmp_path / "s.toml")
    assert sc.topology.node_names() == ["a", "b"] and sc.topology.routing == "static"


def test_needs_names_what_the_kernel_must_offer(tmp_path: Path) -> None:
    text = GOOD.replace('routing = "static"', 'routing = "batman-adv"')
    assert scenario.loads(text, "s.toml").needs() == ["batman-adv", "tc-bpf"]
    link = '\n[[links]]\na = "a"\nb = "b"\n'
    (tmp_path / "rate.toml").write_text('nodes = ["a", "b"]' + link + 'rate = "2mbit"\n')
    (tmp_path / "loss.toml").write_text('nodes = ["a", "b"]' + link + 'loss = "5%"\n')
    rate = scenario.loads('[mesh]\ntopology = "rate.toml"\n', "s.toml", base=tmp_path)
    assert rate.needs() == ["tbf"]  # a rate limit alone runs on hosts without netem
    lossy = scenario.loads('[mesh]\ntopology = "loss.toml"\n', "s.toml", base=tmp_path)
    assert lossy.needs() == ["netem"]
    ideal = scenario.loads(
        '[mesh]\ntopology = "loss.toml"\nideal = true\n', "s.toml", base=tmp_path
    )
    assert ideal.needs() == []
    probes = scenario.loads('[scenario]\nprobes = ["drops"]\n' + GOOD.split("\n", 4)[4], "s.toml")
    assert probes.probes == ["drops"] and probes.needs() == ["tc-bpf", "bcc+headers"]
    ev = GOOD + '[[events]]\nat = "1s"\naction = "impair"\nlink = ["n4", "n5"]\ndelay = "5ms"\n'
    assert scenario.loads(ev, "s.toml").needs() == ["netem", "tc-bpf"]


def _err(text: str, tmp_path: Path | None = None) -> InputError:
    with pytest.raises(InputError) as info:
        scenario.loads(text, "s.toml", base=tmp_path or ".")
    return info.value


@pytest.mark.parametrize(
    "old, new, field",
    [
        ('duration = "12s"', 'duration = "12"', "scenario.duration"),
        ('duration = "12s"', 'duration = "0s"', "scenario.duration"),
        ('duration = "12s"', 'duration = "12s"\nwhere = "moon"', "scenario.where"),
        ('duration = "12s"', 'duration = "12s"\ncolour = 1', "scenario.colour"),
        ('generate = "grid4 3 3"', 'generate = "grid4 3"', "mesh.generate"),
        ('generate = "grid4 3 3"', 'generate = "hexagon 3"', "mesh.generate"),
        ('routing = "static"', 'routing = "ospf"', "mesh.routing"),
        ('routing = "static"', 'routing = "babeld"\nsettings = { hello = 1 }', "mesh.settings"),
        ('at = "3s"', 'at = "30s"', "events"),
        (
            '"flows.cbr.delivery_ratio >= 50%"',
            '"flows.nope.delivery_ratio >= 50%"',
            "verdict.assert[0]",
        ),
        (
            '"flows.cbr.delivery_ratio >= 50%"',
            '"flows.cbr.delivery_ratio >> 50%"',
            "verdict.assert[0]",
        ),
        (
            '"events[1].recovery_s.cbr <= 5s"',
            '"events[2].recovery_s.cbr <= 5s"',
            "verdict.assert[1]",
        ),
        ('"events[1].recovery_s.cbr <= 5s"', '"weather.rain < 1"', "verdict.assert[1]"),
    ],
)
def test_bad_input_names_file_and_field(old: str, new: str, field: str) -> None:
    assert old in GOOD
    err = _err(GOOD.replace(old, new, 1))
    assert err.source == "s.toml"
    assert err.field == field or err.field.startswith(field), (err.field, err.message)
    assert "\n" not in str(err)


def test_mesh_is_required_and_one_source_only(tmp_path: Path) -> None:
    assert _err('[scenario]\nname = "x"\n').field == "mesh"
    both = '[mesh]\ntopology = "t.toml"\ngenerate = "line 3"\n'
    assert _err(both).field == "mesh"
    missing = _err('[mesh]\ntopology = "nope.toml"\n', tmp_path)
    assert missing.field == "mesh.topology" and "no such file" in missing.message
    assert _err("[wat]\n").field == "wat"


def test_lab_copy_is_self_contained(tmp_path: Path) -> None:
    sc = scenario.loads(GOOD, "cut.toml")
    path = report.write_resolved(sc, tmp_path)
    data = tomllib.loads(path.read_text())
    assert data["mesh"] == {"topology": "topology.toml"}
    again = scenario.load(path)
    assert again.name == "cut" and again.topology.routing == "static"
    assert [e.action for e in again.events] == [e.action for e in sc.events]
    assert len(again.topology.links) == len(sc.topology.links)


def test_cli_bad_scenario_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('to = "n8"', 'to = "n99"'))
    result = CliRunner().invoke(cli, ["run", str(bad)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line]
    assert len(lines) == 1 and str(bad) in lines[0] and "traffic[0]" in lines[0], result.output


def test_cli_check_says_where_it_would_run(tmp_path: Path) -> None:
    f = tmp_path / "ok.toml"
    f.write_text(GOOD)
    result = CliRunner().invoke(cli, ["run", "--check", "--where", "lab", str(f)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "lab" in result.output
