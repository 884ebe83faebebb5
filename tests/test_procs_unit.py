"""[[process]] without root: parsing and its errors, metrics over windows, 0/1 counts,
assertions on process metrics, the summary, the readiness of a port. Pure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshstress import report
from meshstress.errors import InputError
from meshstress.judge import verdict
from meshstress.model import scenario
from meshstress.procs import metrics as pm
from meshstress.procs import spec as ps
from meshstress.procs.run import listening

HEAD = """
[scenario]
name = "p"
duration = "5s"
[mesh]
generate = "line 3"
routing = "static"
"""

GOOD = """
[[process]]
name = "echo"
nodes = "n2"
command = ["python3", "echo.py", "server", "--peer", "@n0", "--x=@n1", "mail@@n0"]
ready = { line = "listening", timeout = "5s" }
env = { PEER = "@n1", MODE = "fast" }
start = "1s"
metrics = [{ name = "rtt_ms", regex = 'rtt=(?P<value>[0-9.]+)' }]

[[process]]
name = "client"
nodes = ["n0", "n1"]
command = "python3 'my client.py' --to @n2"
ready = { port = 7, proto = "udp" }
on_exit = "restart"
cwd = "sub"
"""


def load(extra: str, tmp_path: Path | None = None) -> scenario.Scenario:
    base = tmp_path if tmp_path is not None else Path("/nonexistent/base")
    text = extra + HEAD if extra.startswith("process =") else HEAD + extra  # a root key
    return scenario.loads(text, "s.toml", base=base)


def test_a_good_process_table_parses() -> None:
    sc = load(GOOD)
    echo, client = sc.processes
    assert echo.nodes == ("n2",) and echo.instance("n2") == "echo@n2"
    assert echo.command[-3:] == ("@n0", "--x=@n1", "mail@@n0")
    assert echo.ready == ps.Ready(line="listening", timeout=5.0)
    assert dict(echo.env) == {"PEER": "@n1", "MODE": "fast"}
    assert echo.on_exit == "fail" and echo.max_restarts == 0 and echo.start == 1.0
    assert echo.cwd == "/nonexistent/base"
    assert echo.metrics[0].value("got rtt=12.5 ms") == 12.5
    assert client.nodes == ("n0", "n1")
    assert client.command == ("python3", "my client.py", "--to", "@n2")
    assert client.ready == ps.Ready(port=7, proto="udp", timeout=ps.DEFAULT_READY_TIMEOUT)
    assert client.on_exit == "restart" and client.max_restarts == ps.DEFAULT_MAX_RESTARTS
    assert client.cwd == "/nonexistent/base/sub"


def test_no_process_is_no_process() -> None:
    assert load("").processes == []


BAD = [
    ('process = 3\n', "process", "array of tables"),
    ('process = [3]\n', "process[0]", "expected a table"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nbogus = 1\n', "process[0].bogus", "unknown key"),
    ('[[process]]\nnodes = "n0"\ncommand = "x"\n', "process[0].name", "missing"),
    ('[[process]]\nname = "../a"\nnodes = "n0"\ncommand = "x"\n', "process[0].name", "letters"),
    ('[[process]]\nname = "a.b"\nnodes = "n0"\ncommand = "x"\n', "process[0].name", "no '.'"),
    ('[[process]]\nname = 5\nnodes = "n0"\ncommand = "x"\n', "process[0].name", "string"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\n[[process]]\nname = "a"\nnodes = "n1"\n'
     'command = "x"\n', "process[1].name", "duplicate"),
    ('[[process]]\nname = "a"\ncommand = "x"\n', "process[0].nodes", "missing"),
    ('[[process]]\nname = "a"\nnodes = []\ncommand = "x"\n', "process[0].nodes", "non-empty"),
    ('[[process]]\nname = "a"\nnodes = ["n0", "zz"]\ncommand = "x"\n', "process[0].nodes[1]", "unknown node"),
    ('[[process]]\nname = "a"\nnodes = ["n0", "n0"]\ncommand = "x"\n', "process[0].nodes", "twice"),
    ('[[process]]\nname = "a"\nnodes = "n0"\n', "process[0].command", "missing"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = []\n', "process[0].command", "empty"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = ""\n', "process[0].command", "empty"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = [1]\n', "process[0].command", "list of strings"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x \'y"\n', "process[0].command", "quotation"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = ["x", "@zz"]\n', "process[0].command[1]", "@zz"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nready = 3\n', "process[0].ready", "line"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nready = {}\n', "process[0].ready", "exactly one"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nready = { line = "a", port = 1 }\n',
     "process[0].ready", "exactly one"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nready = { line = "(" }\n',
     "process[0].ready.line", "regular expression"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nready = { line = "" }\n',
     "process[0].ready.line", "non-empty"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nready = { port = 0 }\n',
     "process[0].ready.port", "1..65535"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nready = { port = 70000 }\n',
     "process[0].ready.port", "1..65535"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nready = { port = true }\n',
     "process[0].ready.port", "1..65535"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nready = { port = 1, proto = "sctp" }\n',
     "process[0].ready.proto", "tcp or udp"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nready = { line = "a", proto = "udp" }\n',
     "process[0].ready.proto", "goes with port"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nready = { port = 1, timeout = "0s" }\n',
     "process[0].ready.timeout", "more than 0s"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nready = { port = 1, timeout = 5 }\n',
     "process[0].ready.timeout", "unit"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nready = { port = 1, wait = 5 }\n',
     "process[0].ready.wait", "unknown key"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nenv = 3\n', "process[0].env", "table"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nenv = { "1X" = "a" }\n',
     "process[0].env.1X", "variable name"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nenv = { MESHSTRESS_METRICS = "/x" }\n',
     "process[0].env.MESHSTRESS_METRICS", "set by meshstress"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nenv = { A = 1 }\n', "process[0].env.A", "string"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nenv = { A = "@zz" }\n', "process[0].env.A", "@zz"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\non_exit = "panic"\n', "process[0].on_exit", "fail"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nmax_restarts = 2\n',
     "process[0].max_restarts", "on_exit"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\non_exit = "restart"\nmax_restarts = -1\n',
     "process[0].max_restarts", "0..1000"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nstart = "-1s"\n', "process[0].start", "duration"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nstart = "soon"\n', "process[0].start", "duration"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\ncwd = ""\n', "process[0].cwd", "directory"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nmetrics = 3\n', "process[0].metrics", "list"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nmetrics = [3]\n', "process[0].metrics[0]", "name"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nmetrics = [{ name = "m" }]\n',
     "process[0].metrics[0].regex", "missing"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nmetrics = [{ name = "m", regex = "x", y = 1 }]\n',
     "process[0].metrics[0].y", "unknown key"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nmetrics = [{ name = "a b", regex = "x" }]\n',
     "process[0].metrics[0].name", "letters"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nmetrics = [{ name = "exit_code", regex = "x" }]\n',
     "process[0].metrics[0].name", "reserved"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nmetrics = [{ name = "m", regex = "[" }]\n',
     "process[0].metrics[0].regex", "regular expression"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\nmetrics = [{ name = "m", regex = "x" }, '
     '{ name = "m", regex = "y" }]\n', "process[0].metrics[1].name", "duplicate"),
    ('[verdict]\nassert = ["process.nope.ok >= 90%"]\n', "verdict.assert[0]", "no process 'nope'"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\n[verdict]\nassert = ["process.b.ok >= 1"]\n',
     "verdict.assert[0]", "processes: a"),
    ('[[process]]\nname = "a"\nnodes = "n0"\ncommand = "x"\n[verdict]\nassert = ["process.a >= 1"]\n',
     "verdict.assert[0]", "process.NAME.METRIC"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "field", "words"), BAD, ids=[f for _, f, _ in BAD])
def test_bad_process_input_names_file_and_field(
    extra: str, field: str, words: str, tmp_path
) -> None:
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(InputError) as info:
        load(extra, tmp_path)
    assert (info.value.source, info.value.field) == ("s.toml", field), str(info.value)
    assert words in info.value.message, str(info.value)
    assert str(info.value).startswith(f"s.toml: {field}: ")
    assert sorted(os.listdir(tmp_path)) == before  # nothing created


def test_process_assertions_parse_with_their_units() -> None:
    sc = load(GOOD + '[verdict]\nassert = ["process.client.ok >= 90%", '
              '"process.echo.rtt_ms.p99 <= 20ms", "process.client.exit_code == 0"]\n')  # fmt: skip
    ok, rtt, code = sc.assertions
    assert ok.path == ("process", "client", "ok") and ok.value == pytest.approx(0.9)
    assert rtt.value == 20.0  # milliseconds: the metric's name says so
    assert code.path[-1] == "exit_code" and code.value == 0


# --- metrics ---------------------------------------------------------------------------


def test_process_metrics_counts_and_windows() -> None:
    samples = [(10.0, "ok", 1.0), (11.0, "ok", 0.0), (12.0, "ok", 1.0), (13.0, "ok", 1.0),
               (10.5, "lat", 5.0), (12.5, "lat", 15.0), (11.5, "lat", 7.0)]  # fmt: skip
    m = pm.process_metrics(samples)
    assert m["ok"]["count"] == 4 and m["ok"]["k"] == 3 and m["ok"]["n"] == 4
    assert m["ok"]["mean"] == 0.75 and m["ok"]["min"] == 0 and m["ok"]["max"] == 1
    lo, hi = m["ok"]["ci95"]
    assert 0 < lo < 0.75 < hi <= 1
    assert m["lat"] == {"count": 3, "mean": 9, "min": 5, "max": 15, "last": 15}  # no k: not 0/1
    # a window keeps start <= t <= end, in the samples' clock
    w = pm.process_metrics(samples, window=(11.0, 12.0))
    assert w["ok"]["k"] == 1 and w["ok"]["n"] == 2 and w["ok"]["last"] == 1
    assert w["lat"]["count"] == 1 and w["lat"]["last"] == 7
    assert pm.process_metrics(samples, window=(20.0, 30.0)) == {}
    # per-step windows of a sweep add up to the whole run's counts
    steps = [pm.process_metrics(samples, (a, a + 1.999))["ok"] for a in (10.0, 12.0)]
    assert sum(s["k"] for s in steps) == 3 and sum(s["n"] for s in steps) == 4


def test_last_is_the_latest_by_time_and_read_order_breaks_ties() -> None:
    m = pm.process_metrics([(5.0, "x", 1.0), (3.0, "x", 2.0), (5.0, "x", 4.0)])
    assert m["x"]["last"] == 4


def test_parse_line() -> None:
    s, problem = pm.parse_line('{"ok": true, "latency_ms": 12.5, "note": "x"}', now=100.0)
    assert s == [(100.0, "ok", 1.0), (100.0, "latency_ms", 12.5)]
    assert problem is not None and "'note'" in problem
    s, problem = pm.parse_line('{"t": 50.5, "ok": 0}', now=100.0)
    assert s == [(50.5, "ok", 0.0)] and problem is None
    assert pm.parse_line("not json", 1.0)[1] is not None
    assert pm.parse_line("[1, 2]", 1.0)[1] is not None
    assert pm.parse_line('{"t": "soon", "ok": 1}', 1.0) == ([], "\"t\" is not a unix time: 'soon'")
    assert pm.parse_line("   ", 1.0) == ([], None)
    s, problem = pm.parse_line('{"exit_code": 3, "ok": 1}', 1.0)  # a reserved name is skipped
    assert s == [(1.0, "ok", 1.0)] and "'exit_code'" in (problem or "")


def test_metric_regex_value() -> None:
    assert ps.MetricRegex("a", r"rtt=([0-9.]+)").value("x rtt=1.5 y") == 1.5
    assert ps.MetricRegex("a", r"(\w+) rtt=(?P<value>[0-9.]+)").value("x rtt=2") == 2.0
    assert ps.MetricRegex("a", r"[0-9]+").value("seq 42 ok") == 42.0
    assert ps.MetricRegex("a", r"rtt=(\S+)").value("rtt=abc") is None
    assert ps.MetricRegex("a", r"rtt=(\S+)").value("rtt=nan") is None
    assert ps.MetricRegex("a", r"rtt").value("nothing") is None


RESULTS = {
    "process": {
        "client": {
            "exit_code": 0,
            "restarts": 0,
            "on_exit": "ignore",
            "ended_early": 0,
            "metrics": {
                "ok": {"count": 10, "mean": 0.8, "k": 8, "n": 10, "max": 1},
                "rtt_ms": {"count": 8, "mean": 3.0, "max": 9.0},
            },  # fmt: skip
        },
        "echo": {"exit_code": None, "on_exit": "fail", "ended_early": 1, "metrics": {}},
    }
}


@pytest.mark.parametrize(
    ("text", "passed", "actual"),
    [
        ("process.client.ok >= 75%", True, 0.8),
        ("process.client.ok >= 90%", False, 0.8),
        ("process.client.ok.k >= 8", True, 8),
        ("process.client.rtt_ms.max <= 10ms", True, 9.0),
        ("process.client.rtt_ms <= 2ms", False, 3.0),
        ("process.client.exit_code == 0", True, 0),
        ("process.client.restarts == 1", False, 0),
        ("process.echo.exit_code == 0", False, None),  # still running at the end: null
    ],
)
def test_verdict_on_process_metrics(text: str, passed: bool, actual: object) -> None:
    (c,) = verdict.judge([verdict.parse_assertion(text)], RESULTS)
    assert (c["passed"], c["actual"]) == (passed, actual), c
    assert c["metric"] == text.split()[0]


def test_a_metric_the_process_never_reported_says_which_exist() -> None:
    (c,) = verdict.judge([verdict.parse_assertion("process.client.lost >= 1")], RESULTS)
    assert not c["passed"] and "process.client.metrics" in c["error"] and "rtt_ms" in c["error"]


def test_exit_checks() -> None:
    checks = pm.exit_checks(RESULTS["process"])
    assert [(c["metric"], c["passed"]) for c in checks] == [("process.echo.ended_early", False)]


def test_summary_lists_processes() -> None:
    text = report.summary({**RESULTS, "run": {}, "mesh": {}})
    assert "processes" in text
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("client"))
    assert "ok 0.8 (8/10)" in line and "rtt_ms 3 (n=8)" in line
    echo = next(ln for ln in text.splitlines() if ln.strip().startswith("echo"))
    assert "stopped" in echo


def test_base_env_is_minimal() -> None:
    env = ps.base_env({"PATH": "/bin", "HOME": "/root", "LC_ALL": "C", "AWS_SECRET_KEY": "x",
                       "SSH_AUTH_SOCK": "/s", "SUDO_USER": "u", "LC_TOKEN": "t", "PYTHONPATH": "/p"})  # fmt: skip
    assert env == {"PATH": "/bin", "HOME": "/root", "LC_ALL": "C", "PYTHONUNBUFFERED": "1"}
    assert ps.base_env({})["PATH"] == ps.DEFAULT_PATH


def test_node_refs() -> None:
    assert ps.node_refs("@n1") == ["n1"]
    assert ps.node_refs("--to=@n2,@n3") == ["n2", "n3"]
    assert ps.node_refs("user@n1") == [] and ps.node_refs("@@n1") == []


TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:D431 0100007F:1FBB 01 00000000:00000000 00:00000000 00000000     0        0 2 1
"""
TCP6 = """  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A
"""


def test_listening() -> None:
    assert listening(TCP, 8080, "tcp")
    assert not listening(TCP, 0xD431, "tcp")  # a connected socket's port: not listening
    assert listening(TCP, 0xD431, "udp")  # udp: bound is enough
    assert not listening(TCP, 8123, "tcp")
    assert listening(TCP6, 80, "tcp")
    assert not listening("header only\n", 80, "tcp")


def test_lab_copy_keeps_processes_and_makes_cwd_absolute(tmp_path) -> None:
    sc = load(GOOD + '[verdict]\nassert = ["process.client.ok >= 90%"]\n', tmp_path)
    path = report.write_resolved(sc, tmp_path)
    again = scenario.load(path)
    assert [p.cwd for p in again.processes] == [p.cwd for p in sc.processes]
    assert again.processes[0].metrics == sc.processes[0].metrics
    assert again.processes[0].env == sc.processes[0].env
    assert again.processes[1].ready == sc.processes[1].ready
