"""`meshstress run` on this host: real traffic, real events, real numbers, nothing left."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from meshstress import build
from meshstress.build import netns, state

pytestmark = pytest.mark.network

LINE = """
[scenario]
name = "line-cut"
duration = "7s"
warmup = "0.5s"
route_interval = "0.5s"

[mesh]
generate = "line 3"
routing = "static"

[[traffic]]
name = "cbr"
kind = "udp"
from = "n0"
to = "n2"
rate = "100pps"

[[traffic]]
name = "echo"
kind = "ping"
from = "n2"
to = "n0"
rate = "10pps"

[[events]]
at = "2s"
action = "link-down"
link = ["n1", "n2"]
for = "2s"

[verdict]
assert = [
  "flows.cbr.delivery_ratio >= 40%",
  "flows.cbr.delivery_ratio < 95%",
  "events[0].recovery_s.cbr >= 1.5s",
  "flows.echo.delivery_ratio >= 40%",
]
"""


# appended to a scenario's [verdict]: valid whatever the shared host's load (otherwise a
# saturated host makes the run INVALID, exit 4; tests/test_validity.py)
LOAD_ANY = 'max_saturated_share = "100%"\nmax_softnet_drops = 1000000000\n'


def _ours(run_id: str) -> list[str]:
    return [n for n in netns.list_names() if n.startswith(f"ms-{run_id}-")]


def test_run_measures_an_outage_and_judges_it(run_scenario) -> None:
    r = run_scenario(LINE)
    cbr = r["flows"]["cbr"]
    # 7 s at 100 pps (at most: a loaded host may send fewer); the n1-n2 link is down from
    # 2 s to 4 s: about two sevenths lost
    assert 0 < cbr["sent"] <= 701 and cbr["received"] + cbr["lost"] == cbr["sent"], cbr
    # some lost, not all (how many depends on when the events really ran on a loaded
    # host: the outage assertions below tie the loss to the events' recorded times)
    assert cbr["lost"] > 0 and 0.0 < cbr["delivery_ratio"] < 1.0, cbr
    down, up = r["events"]
    assert (down["action"], up["action"]) == ("link-down", "link-up")
    # not early (how late depends on the host's load)
    assert down["t_rel"] >= 1.95 and up["t_rel"] >= 3.95, (down, up)
    down_for = up["t_rel"] - down["t_rel"]
    # the outage starts at the cut and lasts until the link is back (static routes stay):
    # nothing sent while the link was down arrives, and delivery does resume after the up
    assert down["recovery_s"]["cbr"] >= down_for - 0.1, (down, up)
    assert up["recovery_s"]["cbr"] is not None, up
    assert len(cbr["outages"]) == 1 and cbr["longest_outage_s"] >= down_for - 0.1, cbr["outages"]
    assert r["passed"], r["checks"]
    assert [c["passed"] for c in r["checks"]] == [True] * 5  # converged + 4 asserts
    # route snapshots every 0.5 s through the run (how many fit depends on the host's load)
    assert r["routing"]["snapshots"] >= 2
    assert not _ours(r["run"]["id"]) and state.load(r["run"]["id"]) is None


def test_failed_checks_fail_the_run_and_say_why(run_scenario) -> None:
    text = LINE.replace('"flows.cbr.delivery_ratio >= 40%"', '"flows.cbr.delivery_ratio >= 99%"')
    r = run_scenario(text, duration=6.0)
    assert not r["passed"]
    failed = [c for c in r["checks"] if not c["passed"]]
    assert [c["metric"] for c in failed] == ["flows.cbr.delivery_ratio"]
    assert failed[0]["actual"] < 0.99


def test_cli_run_writes_the_run_folder(tmp_path: Path) -> None:
    scen = tmp_path / "line.toml"
    scen.write_text(LINE + LOAD_ANY)  # the exit code then says how the checks went
    out = tmp_path / "out"
    p = subprocess.run(
        [sys.executable, "-m", "meshstress", "run", "--where", "host", "--out", str(out), str(scen)],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASSED" in p.stdout and "PASS flows.cbr.delivery_ratio" in p.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["passed"] and results["run"]["where"] == "host"
    assert (out / "junit.xml").exists() and (out / "summary.txt").exists()
    # the plot was made (matplotlib is part of scripts/setup.sh): a PNG, and listed
    assert "render_errors" not in results["run"], results["run"]
    assert results["run"]["plots"] == ["timeline.png"]
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((out / "raw").iterdir())
    assert not _ours(results["run"]["id"])


def test_sigterm_mid_run_removes_everything(tmp_path: Path) -> None:
    scen = tmp_path / "long.toml"
    scen.write_text(LINE.replace('duration = "7s"', 'duration = "60s"'))
    p = subprocess.Popen(
        [sys.executable, "-m", "meshstress", "run", "--where", "host",
         "--out", str(tmp_path / "o"), str(scen)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60  # a hang guard: the flows start within a second
        children: list[psutil.Process] = []
        while time.monotonic() < deadline:
            children = psutil.Process(p.pid).children(recursive=True)
            if len(children) >= 3:  # udp receiver and sender, and ping, are running
                break
            time.sleep(0.2)
        assert len(children) >= 3, "flows never started"
        # this run's namespaces, by its run id (other runs may share the host)
        (run_id,) = [st.run_id for st in state.all_runs() if st.source == str(scen)]
        made = set(_ours(run_id))
        assert len(made) == 3, made
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=60)
        # everything below is the run's own doing: asserted before any cleanup of ours
        assert p.returncode == 143, out
        assert not _ours(run_id)
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert not [st.run_id for st in state.all_runs() if st.source == str(scen)]
        assert os.path.exists(tmp_path / "o")
    finally:  # only if the run failed to clean up (and the test has failed): do it here
        if p.poll() is None:
            p.kill()
            p.wait()
        for st in state.all_runs():
            if st.source == str(scen):
                build.teardown(st)
        for c in children:  # psutil checks each is still the process it saw
            with contextlib.suppress(psutil.Error):
                c.kill()
