"""The VM lab, end to end: boot a stock kernel under qemu and run commands in it (root, ~10 s/boot)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from meshstress.lab import run_in_lab

REPO = Path(__file__).resolve().parents[2]
MESHSTRESS = [sys.executable, "-m", "meshstress.cli"]

pytestmark = pytest.mark.lab


@contextmanager
def watch_qemu(state_dir: Path) -> Iterator[list[int]]:
    """Collect the qemu PIDs the lab records in its state files while the block runs."""
    before = set(state_dir.glob("run-*.json"))
    pids: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for sf in set(state_dir.glob("run-*.json")) - before:
                try:
                    pid = int(json.loads(sf.read_text())["qemu_pid"])
                except (OSError, ValueError, KeyError):
                    continue
                if pid not in pids:
                    pids.append(pid)
            stop.wait(0.1)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        yield pids
    finally:
        stop.set()
        t.join()


def assert_no_leftovers(state_dir: Path, pids: list[int], before: set[Path]) -> None:
    assert pids, "no qemu PID was recorded in a state file"
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", pid
    assert set(state_dir.iterdir()) - before <= {state_dir / "kvm-probe.json"}


def test_output_exit_code_and_mesh_kernel_features(state_dir: Path) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    timings: dict[str, float] = {}
    script = (
        "uname -r; ip link add b0 type batadv && tc qdisc add dev lo root netem delay 1ms "
        "&& echo ok; echo hi; echo oops >&2; exit 7"
    )
    rc = run_in_lab(["sh", "-c", script], cwd="/", share=False, stdout=out, stderr=err,
                    timeout=120, timings=timings)  # fmt: skip
    lines = out.getvalue().decode().splitlines()
    assert rc == 7, (lines, err.getvalue())
    assert lines[0] != os.uname().release and lines[0].startswith("6.1."), lines
    assert lines[1:] == ["ok", "hi"]
    assert err.getvalue() == b"oops\n"
    assert 0 < timings["boot"] <= 15.0, timings


def test_cli_runs_in_cwd_with_venv_env_and_results_come_back(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    (proj / ".git").mkdir(parents=True)
    weird = 'it\'s "odd" $x\nline2'
    code = (
        "import os, sys, meshstress; "
        "open('results/out.txt', 'w').write(os.environ['MESHSTRESS_TEST_WEIRD']); "
        "print(sys.executable, os.getcwd(), meshstress.__file__)"
    )
    (proj / "results").mkdir()
    env = {**os.environ, "MESHSTRESS_TEST_WEIRD": weird, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [*MESHSTRESS, "lab", "run", "--timeout", "120", "--", sys.executable, "-c", code],
        cwd=proj, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    exe, cwd, mod = res.stdout.split()
    assert exe == sys.executable and cwd == str(proj)
    assert mod.startswith(str(REPO))
    assert (proj / "results" / "out.txt").read_text() == weird  # written in the guest


def test_timeout_kills_a_hung_guest(state_dir: Path) -> None:
    before = set(state_dir.iterdir())
    t0 = time.monotonic()
    with watch_qemu(state_dir) as pids:
        res = subprocess.run(
            [*MESHSTRESS, "lab", "run", "--timeout", "20", "--no-share", "--", "sleep", "600"],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    assert res.returncode == 124, res.stdout + res.stderr
    assert "timed out after 20 s" in res.stderr
    assert time.monotonic() - t0 < 40
    assert_no_leftovers(state_dir, pids, before)


def test_two_runs_in_a_row_leave_nothing_behind(state_dir: Path) -> None:
    before = set(state_dir.iterdir())
    for i in range(2):
        with watch_qemu(state_dir) as pids:
            rc = run_in_lab(["sh", "-c", f"exit {i}"], cwd="/", share=False,
                            stdout=io.BytesIO(), timeout=120)  # fmt: skip
        assert rc == i
        assert_no_leftovers(state_dir, pids, before)


def started(state_dir: Path, before: set[Path]) -> bool:
    """True once a new lab run reports that its COMMAND is running."""
    return any((d / "x" / "started").exists() for d in set(state_dir.glob("run-*")) - before)


def test_sigterm_stops_the_guest_and_cleans_up(state_dir: Path) -> None:
    before = set(state_dir.iterdir())
    with watch_qemu(state_dir) as pids:
        proc = subprocess.Popen(
            [*MESHSTRESS, "lab", "run", "--no-share", "--", "sleep", "600"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not started(state_dir, before) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started(state_dir, before), "COMMAND never started in the guest"
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert b"guest stopped" in proc.stderr.read() if proc.stderr else False
    assert_no_leftovers(state_dir, pids, before)


def test_doctor_json_reports_the_mesh_features() -> None:
    res = subprocess.run([*MESHSTRESS, "lab", "doctor", "--json"], capture_output=True,
                         text=True, timeout=180)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    checks = report["checks"]
    for name in ("batman-adv", "netem", "veth", "tbf", "htb", "btf", "tracefs", "headers"):
        assert checks[name]["ok"], (name, checks[name])
    assert checks["kernel"]["detail"].startswith("6.1.")
    assert report["lab"]["accel"] in ("tcg", "kvm")
