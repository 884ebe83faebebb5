"""`meshstress topo gen` and `meshstress topo show`, in-process and as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshstress.cli import cli
from meshstress.model.topofile import load, loads_toml

DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "freifunk"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_gen_grid4_to_stdout() -> None:
    code, out, _ = run("topo", "gen", "grid4", "10", "10")
    assert code == 0
    t = loads_toml(out, "g.toml")
    assert (t.name, len(t.nodes), len(t.links)) == ("grid4-10x10", 100, 180)


@pytest.mark.parametrize(
    ("args", "nodes", "links"),
    [
        (["line", "3"], 3, 2),
        (["ring", "5"], 5, 5),
        (["star", "4"], 4, 3),
        (["full", "4"], 4, 6),
        (["grid8", "3", "3"], 9, 20),
        (["tree", "7", "2"], 7, 6),
        (["random", "50", "--seed", "1"], 50, None),
    ],
)
def test_gen_kinds(args: list[str], nodes: int, links: int | None) -> None:
    code, out, _ = run("topo", "gen", *args)
    assert code == 0
    t = loads_toml(out)
    assert len(t.nodes) == nodes and t.is_connected()
    if links is not None:
        assert len(t.links) == links


def test_gen_random_is_reproducible() -> None:
    assert (
        run("topo", "gen", "random", "30", "--seed", "7")[1]
        == run("topo", "gen", "random", "30", "--seed", "7")[1]
    )
    assert (
        run("topo", "gen", "random", "30", "--seed", "7")[1]
        != run("topo", "gen", "random", "30", "--seed", "8")[1]
    )


def test_gen_options_and_output_file(tmp_path: Path) -> None:
    out = tmp_path / "l.toml"
    code, stdout, _ = run(
        "topo",
        "gen",
        "line",
        "3",
        "--loss",
        "5%",
        "--delay",
        "10ms",
        "--rate",
        "1mbit",
        "--model",
        "segment",
        "--routing",
        "batman-adv",
        "--prefix",
        "10.7.0.0/24",
        "--name",
        "mine",
        "-o",
        str(out),
    )
    assert code == 0 and stdout == ""
    t = load(out)
    assert t.name == "mine" and t.prefix == "10.7.0.0/24" and t.routing == "batman-adv"
    link = t.links[0]
    assert link.model == "segment"
    assert (link.ab.loss, link.ab.delay, link.ab.rate) == (0.05, 0.01, 1_000_000)
    assert link.ba == link.ab


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["grid4", "10"], "takes 2 argument"),
        (["ring", "2"], "at least 3"),
        (["line", "3", "--loss", "200%"], "above 100%"),
        (["line", "3", "--delay", "10"], "needs a unit"),
        (["hexagon", "3"], "hexagon"),
    ],
)
def test_gen_usage_errors(args: list[str], words: str) -> None:
    code, _, err = run("topo", "gen", *args)
    assert code == 2
    assert words in err


def test_gen_prefix_too_small() -> None:
    code, out, err = run("topo", "gen", "line", "5", "--prefix", "10.0.0.0/30")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "meshstress: <generated>: topology.prefix: 10.0.0.0/30 holds 2 addresses, "
        "too few for 5 nodes"
    ]


def test_show_text(tmp_path: Path) -> None:
    f = tmp_path / "g.toml"
    run("topo", "gen", "grid4", "10", "10", "--loss", "1%", "-o", str(f))
    code, out, _ = run("topo", "show", str(f))
    assert code == 0
    lines = dict(line.split(":", 1) for line in out.strip().splitlines())
    assert lines["name"].strip() == "grid4-10x10"
    assert lines["nodes"].strip() == "100"
    assert lines["links"].strip() == "180"
    assert lines["degree"].strip() == "min 2, mean 3.6, max 4"
    assert lines["diameter"].strip() == "18 hops"
    assert lines["link models"].strip() == "veth 180"
    assert lines["impaired"].strip() == "180 links, 0 segments"


def test_show_json_ulm() -> None:
    code, out, _ = run("topo", "show", str(DATA / "freifunk-ulm.json"), "--json")
    assert code == 0
    s = json.loads(out)
    assert (s["nodes"], s["links"], s["segments"]) == (217, 447, 0)
    assert s["connected"] is True and isinstance(s["diameter"], int)
    assert s["name"] == "freifunk-ulm"
    assert sum(s["link_kinds"].values()) == 447


def test_show_disconnected(tmp_path: Path) -> None:
    f = tmp_path / "d.toml"
    f.write_text('nodes = ["a", "b", "c"]\nlinks = [{ a = "a", b = "b" }]\n')
    code, out, _ = run("topo", "show", str(f), "--json")
    s = json.loads(out)
    assert s["diameter"] is None and s["connected"] is False
    assert "disconnected" in run("topo", "show", str(f))[1]


def test_show_diameter_agrees_with_the_model() -> None:
    from meshstress.cli.topo import summary

    t = load(DATA / "freifunk-ulm.json")
    assert summary(t)["diameter"] == t.diameter()


def test_show_segments(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text(
        'nodes = ["a", "b", "c", "d"]\n[[segments]]\nname = "air"\nnodes = ["a", "b", "c"]\n'
        'loss = "3%"\n[[links]]\na = "c"\nb = "d"\n'
    )
    s = json.loads(run("topo", "show", str(f), "--json")[1])
    assert s["segments"] == 1 and s["segment_members"] == 3
    assert s["degree"] == {"min": 1, "mean": 2.0, "max": 3}
    assert s["diameter"] == 2 and s["impaired_segments"] == 1 and s["impaired_links"] == 0


def test_show_bad_file_one_line_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('nodes = ["a", "b"]\n[[links]]\na = "a"\nb = "b"\nloss = "150%"\n')
    code, out, err = run("topo", "show", str(f))
    assert code == 2 and out == ""
    assert err == f"meshstress: {f}: links[0].loss: percentage '150%' is above 100%\n"


def test_show_missing_file() -> None:
    code, _, err = run("topo", "show", "/nonexistent/x.toml")
    assert code == 2
    assert err == "meshstress: /nonexistent/x.toml: file: no such file\n"


def test_real_subprocess_exit_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('nodes = ["a", "a"]\n')
    proc = subprocess.run(
        [sys.executable, "-m", "meshstress.cli", "topo", "show", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"meshstress: {bad}: nodes[1]: duplicate node name a (already nodes[0])"
    ]
    good = tmp_path / "g.toml"
    proc = subprocess.run(
        [sys.executable, "-m", "meshstress.cli", "topo", "gen", "grid4", "3", "3", "-o", str(good)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "meshstress.cli", "topo", "show", str(good)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0 and "nodes:       9" in proc.stdout


def test_examples_in_topologies_load() -> None:
    files = sorted((ROOT / "topologies").glob("*.toml"))
    names = {f.name for f in files}
    assert {"line3.toml", "segment5.toml", "grid3x3.toml", "mixed.toml"} <= names
    for f in files:
        t = load(f)
        assert t.is_connected(), f
    seg5 = load(ROOT / "topologies" / "segment5.toml")
    assert len(seg5.nodes) == 5 and len(seg5.segments) == 1 and seg5.diameter() == 1


def test_show_altdorf() -> None:
    """660 nodes (how fast: benchmarks/topo_load.py)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data directory {SHARED} is absent")
    code, out, _ = run("topo", "show", str(SHARED / "freifunk-altdorf.json"), "--json")
    assert code == 0 and json.loads(out)["nodes"] == 660


def test_help_lists_each_command_with_its_own_short_help() -> None:
    """`meshstress --help` writes the short helps from COMMANDS without importing the
    commands; they must read as a plain click group holding the real commands would."""
    import click

    from meshstress.cli import COMMANDS, load_command

    plain = click.Group("meshstress", help=cli.help)
    for name in COMMANDS:
        plain.add_command(load_command(name), name=name)
    lazy_help = CliRunner().invoke(cli, ["--help"]).output
    plain_help = CliRunner().invoke(plain, ["--help"]).output
    commands = lazy_help[lazy_help.index("Commands:"):]
    assert commands == plain_help[plain_help.index("Commands:"):]
    assert all(f"  {name} " in commands for name in COMMANDS), commands


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["topo", "gen", "line", "3"]])
def test_light_commands_do_not_import_netlink_or_the_runner(argv: list[str]) -> None:
    """--help, --version and topo start fast because they leave pyroute2, psutil, scapy and the
    runner unimported (benchmarks/startup.py has the times)."""
    code = (
        "import sys\n"
        "from meshstress.cli import cli\n"
        f"try:\n    cli.main({argv!r}, prog_name='meshstress')\n"
        "except SystemExit:\n    pass\n"
        "heavy = [m for m in ('pyroute2', 'psutil', 'scapy', 'meshstress.runner', 'meshstress.build')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in r.stderr, r.stderr


def test_gen_json_is_meshnet_lab_json_that_loads_back_equal() -> None:
    from meshstress.model.topofile import loads_meshnet_json

    code, out, _ = run("topo", "gen", "grid4", "4", "3", "--format", "json", "--loss", "5%")
    assert code == 0
    data = json.loads(out)
    assert len(data["nodes"]) == 12 and len(data["links"]) == 17
    assert {"source", "target", "source_tq", "target_tq"} <= set(data["links"][0])
    back = loads_meshnet_json(out, "g.json")
    toml = loads_toml(run("topo", "gen", "grid4", "4", "3", "--loss", "5%")[1], "g.toml")
    assert [n.name for n in back.nodes] == [n.name for n in toml.nodes]
    assert [n.pos for n in back.nodes] == [n.pos for n in toml.nodes]
    assert [(lk.a, lk.b) for lk in back.links] == [(lk.a, lk.b) for lk in toml.links]
    assert all(abs(lk.ab.loss - 0.05) < 1e-9 and abs(lk.ba.loss - 0.05) < 1e-9 for lk in back.links)


@pytest.mark.parametrize("args", [["--delay", "5ms"], ["--model", "segment"], ["--rate", "1mbit"]])
def test_gen_json_refuses_what_meshnet_lab_json_cannot_hold(args: list[str]) -> None:
    code, out, err = run("topo", "gen", "line", "3", "--format", "json", *args)
    assert code == 2 and out == "" and "--format json" in err
