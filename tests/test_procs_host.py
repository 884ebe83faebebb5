"""[[process]] on this host: the user's own programs in the nodes (tests/echo_app.py),
ready by a line and by a port, their metrics judged, their exits acted on, and none of
them alive after the run: finished, failed, interrupted or killed (then `clean`)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from meshstress import runner
from meshstress.build import bringup, netns, state
from meshstress.build.plan import run_prefix
from meshstress.errors import MeshstressError
from meshstress.model import scenario

pytestmark = pytest.mark.network

APP = str(Path(__file__).with_name("echo_app.py"))
EXE = [sys.executable, "-m", "meshstress.cli"]
# Ctrl-C reaches a foreground process whose SIGINT is at its default (tests/test_isolation_host.py)
FOREGROUND = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, "
              "signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"]  # fmt: skip
LOAD_ANY = 'max_saturated_share = "100%"\nmax_softnet_drops = 1000000000\n'
HEAD = """
[scenario]
name = "procs"
duration = "{duration}"
warmup = "0.2s"
route_interval = "0.5s"
[mesh]
generate = "line 3"
routing = "static"
"""


def text(duration: str, body: str) -> str:
    return HEAD.format(duration=duration) + body.replace("APP", APP)


def gone(pids: list[tuple[int, float]]) -> bool:
    """None of these (pid, create time) processes is alive (a recycled PID is another)."""
    for pid, created in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            p = psutil.Process(pid)
            if abs(p.create_time() - created) < 0.05 and p.status() != psutil.STATUS_ZOMBIE:
                return False
    return True


def left_of(run_id: str) -> list[str]:
    return [n for n in netns.list_names() if n.startswith(run_prefix(run_id))]


@pytest.fixture
def own_state(tmp_path, monkeypatch) -> Iterator[list[state.RunState]]:
    """A state directory of this test's own, and the RunState of every mesh built (so a
    test can look at the recorded processes of a run that has ended)."""
    monkeypatch.setattr(state, "STATE_DIR", str(tmp_path / "state"))
    seen: list[state.RunState] = []
    real = bringup.bring_up

    def spy(*a, **kw):  # type: ignore[no-untyped-def]
        up = real(*a, **kw)
        seen.append(up.state)
        return up

    monkeypatch.setattr(bringup, "bring_up", spy)
    yield seen


def recorded(st: state.RunState) -> list[tuple[int, float]]:
    return [(p.pid, p.create_time) for p in st.processes if p.role == "process"]


ECHO = """
[[process]]
name = "echo"
nodes = "n2"
command = ["python3", "APP", "server", "--port", "7107"]
ready = { line = "^listening on udp 7107$", timeout = "20s" }

[[process]]
name = "late"
nodes = ["n1"]
command = "python3 APP server --port 7108 --delay 0.5"
ready = { port = 7108, proto = "udp", timeout = "20s" }

[[process]]
name = "client"
nodes = "n0"
command = "python3 APP client --to @n2 --port 7107 --rate 20 --duration 1.5"
on_exit = "ignore"
metrics = [{ name = "rtt_out_ms", regex = 'reply seq=\\d+ rtt=([0-9.]+) ms' }]

[[traffic]]
name = "cbr"
kind = "udp"
from = "n0"
to = "n2"
rate = "50pps"

[verdict]
assert = [
  "process.client.ok >= 90%",
  "process.client.exit_code == 0",
  "process.client.ok < 50%",
]
"""


def test_a_service_and_its_client_are_measured_and_judged(run_scenario, own_state) -> None:
    r = run_scenario(text("3s", ECHO + LOAD_ANY))
    (st,) = own_state
    procs = r["process"]
    checks = {c["assert"]: c for c in r["checks"]}
    # the client's own numbers, as it wrote them: every request one JSON line, every
    # reply one "reply ... rtt=" line in its output
    client = procs["client"]
    assert client["exit_code"] == 0 and client["exit_codes"] == [0] and client["stopped"] == 0
    ok = client["metrics"]["ok"]
    assert ok["n"] == ok["count"] >= 1 and 0 <= ok["k"] <= ok["n"]
    assert ok["k"] >= 0.9 * ok["n"]  # a static line of three: the echo comes back
    assert client["metrics"]["rtt_ms"]["count"] == ok["k"]
    assert client["metrics"]["rtt_out_ms"]["count"] == ok["k"]  # the regex over its output
    assert client["metrics"]["rtt_out_ms"]["mean"] == pytest.approx(
        client["metrics"]["rtt_ms"]["mean"], abs=0.01
    )
    assert checks["process.client.ok >= 90%"]["passed"] is True
    assert checks["process.client.exit_code == 0"]["passed"] is True
    assert checks["process.client.ok < 50%"]["passed"] is False
    assert r["passed"] is False
    # ready by its line, and by its port: not before it bound it (0.5 s after its start)
    assert procs["echo"]["ready"] and procs["echo"]["ready_s"] is not None
    assert procs["late"]["ready"] and procs["late"]["ready_s"] >= 0.5
    # the services ran until the run stopped them; their on_exit ("fail") was not needed
    assert procs["echo"]["stopped"] == 1 and procs["echo"]["exit_code"] is None
    assert checks["process echo ran until the run stopped it (on_exit = fail)"]["passed"]
    # every process started before the traffic did (t_rel < 0), in the order given
    starts = [procs[n]["instances"][f"{n}@{node}"]["started_t_rel"]
              for n, node in (("echo", "n2"), ("late", "n1"), ("client", "n0"))]  # fmt: skip
    assert all(s < 0 for s in starts) and starts == sorted(starts), starts
    # and the traffic crossed the mesh meanwhile
    assert r["flows"]["cbr"]["received"] > 0
    # recorded by PID in the run's state, none alive afterwards
    pids = recorded(st)
    assert len(pids) == 3 and {p for p, _ in pids} == {
        pid for n in procs.values() for i in n["instances"].values() for pid in i["pids"]
    }
    assert gone(pids)
    assert left_of(st.run_id) == []


def test_the_client_log_and_metrics_file_are_in_the_run_folder(tmp_path, own_state) -> None:
    sc = scenario.loads(text("2s", ECHO + LOAD_ANY), "echo.toml", base=tmp_path)
    out = tmp_path / "run"
    r = runner.run(sc, out)
    inst = r["process"]["client"]["instances"]["client@n0"]
    log = (out / inst["log"]).read_text()
    lines = (out / inst["metrics_file"]).read_text().splitlines()
    replies = re.findall(r"^reply seq=\d+ rtt=", log, re.M)
    assert len(lines) == r["process"]["client"]["metrics"]["ok"]["n"]
    assert len(replies) == r["process"]["client"]["metrics"]["ok"]["k"]
    assert sum(json.loads(x)["ok"] for x in lines) == len(replies)
    assert "listening on udp 7107" in (out / "process" / "echo@n2.log").read_text()
    summary = (out / "summary.txt").read_text()
    assert re.search(r"^  client\s+n0\s", summary, re.M), summary


EXITS = """
[[process]]
name = "crasher"
nodes = "n0"
command = "python3 APP crash --after 0.3 --code 3"

[[process]]
name = "flaky"
nodes = ["n1"]
command = "python3 APP crash --after 0.05 --code 5"
on_exit = "restart"
max_restarts = 2

[[process]]
name = "quitter"
nodes = "n2"
command = "python3 APP crash --after 0.2 --code 4"
on_exit = "ignore"

[verdict]
assert = ["process.quitter.exit_code == 4"]
"""


def test_exits_fail_the_run_restart_or_are_ignored(run_scenario, own_state) -> None:
    r = run_scenario(text("4s", EXITS + LOAD_ANY))
    procs = r["process"]
    checks = {c["metric"]: c for c in r["checks"]}
    assert procs["crasher"]["exit_code"] == 3 and procs["crasher"]["ended_early"] == 1
    assert checks["process.crasher.ended_early"]["passed"] is False
    assert procs["flaky"]["restarts"] == 2 and procs["flaky"]["exit_codes"] == [5, 5, 5]
    assert len(procs["flaky"]["instances"]["flaky@n1"]["pids"]) == 3
    assert checks["process.flaky.ended_early"]["passed"] is False  # out of restarts
    assert procs["quitter"]["exit_code"] == 4 and "process.quitter.ended_early" not in checks
    assert checks["process.quitter.exit_code"]["passed"] is True
    assert r["passed"] is False
    (st,) = own_state
    assert len(recorded(st)) == 5 and gone(recorded(st))


NEVER = {
    "silent": 'command = "python3 APP server --port 7109"\n'
    'ready = { line = "never printed", timeout = "1s" }\n',
    "ends": 'command = "python3 APP crash --after 0.1 --code 3"\n'
    'ready = { port = 7109, timeout = "20s" }\n',
}


@pytest.mark.parametrize("case", list(NEVER))
def test_a_process_that_is_never_ready_fails_the_run_and_leaves_nothing(
    tmp_path, own_state, case
) -> None:
    body = f'[[process]]\nname = "svc"\nnodes = "n2"\n{NEVER[case]}' + (
        '[[process]]\nname = "after"\nnodes = "n0"\ncommand = "python3 APP server"\n'
    )
    sc = scenario.loads(text("2s", body), "never.toml", base=tmp_path)
    said: list[str] = []
    with pytest.raises(MeshstressError) as info:
        runner.run(sc, tmp_path / "run", say=said.append)
    msg = str(info.value)
    if case == "silent":
        assert "svc@n2 was not ready after 1 s" in msg and "never printed" in msg, msg
        assert "listening on udp 7109" in msg  # its last line says what it did
    else:
        assert "svc@n2 ended (exit code 3) before it was ready" in msg, msg
    (st,) = own_state
    assert len(recorded(st)) == 1  # the next one was never started
    assert not any("after@n0" in s for s in said)
    assert gone(recorded(st))
    assert left_of(st.run_id) == []
    assert os.listdir(tmp_path / "state") == []  # the state file went with the run
    assert (tmp_path / "run" / "process" / "svc@n2.log").exists()


# --- interrupted, killed -------------------------------------------------------------

LONG = """
[[process]]
name = "echo"
nodes = "n2"
command = ["python3", "APP", "server", "--port", "7110"]
ready = { line = "listening", timeout = "20s" }

[[process]]
name = "client"
nodes = "n0"
command = "python3 APP client --to @n2 --port 7110 --duration 120"
"""


def runs_in(state_dir: Path) -> list[state.RunState]:
    out = []
    for name in sorted(os.listdir(state_dir)) if state_dir.is_dir() else []:
        if name.endswith(".json"):
            with contextlib.suppress(OSError, ValueError):
                out.append(state.RunState.from_dict(json.loads((state_dir / name).read_text())))
    return out


def wait_for_processes(state_dir: Path, n: int, proc: subprocess.Popen[str]) -> state.RunState:
    deadline = time.monotonic() + 120  # only keeps a broken run from hanging the test
    while time.monotonic() < deadline:
        runs = runs_in(state_dir)
        if runs and len(recorded(runs[0])) >= n:
            return runs[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"never saw {n} processes recorded")


@contextlib.contextmanager
def started(tmp_path: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    scen = tmp_path / "long.toml"
    scen.write_text(text("60s", LONG))
    argv = [*FOREGROUND, *EXE, "run", str(scen), "--where", "host", "--out", str(tmp_path / "o")]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run([*EXE, "clean"], env=env, capture_output=True, timeout=120)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupted_run_stops_its_processes(tmp_path, sig) -> None:
    env = {**os.environ, "MESHSTRESS_STATE_DIR": str(tmp_path / "state")}
    with started(tmp_path, env) as proc:
        st = wait_for_processes(tmp_path / "state", 2, proc)
        pids = recorded(st)
        assert not gone(pids)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (130, 143), err[-2000:]
        assert gone(pids), err[-2000:]
        assert left_of(st.run_id) == [] and runs_in(tmp_path / "state") == []


def test_clean_stops_the_processes_of_a_killed_run(tmp_path) -> None:
    env = {**os.environ, "MESHSTRESS_STATE_DIR": str(tmp_path / "state")}
    with started(tmp_path, env) as proc:
        st = wait_for_processes(tmp_path / "state", 2, proc)
        pids = recorded(st)
        proc.kill()  # no finally runs: the state file is all that is left
        proc.wait()
        echo = [(p.pid, p.create_time) for p in st.processes if p.argv[-1] == "7110" and
                p.role == "process" and "server" in p.argv]  # fmt: skip
        assert echo and not gone(echo)  # in a session of its own: it outlived meshstress
        done = subprocess.run([*EXE, "clean"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert f"run {st.run_id}: removed" in done.stdout
        assert gone(pids)
        assert left_of(st.run_id) == [] and runs_in(tmp_path / "state") == []
