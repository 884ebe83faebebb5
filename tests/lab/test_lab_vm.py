"""The VM lab, end to end: boot a stock kernel under qemu and run commands in it (root).

No test here bounds how long a boot takes (a fresh machine first downloads the kernel and
builds the initramfs): the boot time is a target of benchmarks/lab_boot.py."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from meshstress.lab import run_in_lab

REPO = Path(__file__).resolve().parents[2]
MESHSTRESS = [sys.executable, "-m", "meshstress.cli"]

pytestmark = pytest.mark.lab


@contextmanager
def watch_qemu(state_dir: Path, owner: Callable[[], int | None] = os.getpid) -> Iterator[list[int]]:
    """Collect the qemu PIDs the lab records in its state files while the block runs, of
    the runs `owner()` (a PID) started: other lab runs may share the host."""
    before = set(state_dir.glob("run-*.json"))
    pids: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for sf in set(state_dir.glob("run-*.json")) - before:
                try:
                    data = json.loads(sf.read_text())
                    pid, by = int(data["qemu_pid"]), int(data["owner_pid"])
                except (OSError, ValueError, KeyError):
                    continue
                if by == owner() and pid not in pids:
                    pids.append(pid)
                    OURS.setdefault(id(pids), []).append(sf)
            stop.wait(0.1)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        yield pids
    finally:
        stop.set()
        t.join()


OURS: dict[int, list[Path]] = {}  # the state files behind each watch's PIDs (by id(pids))


def assert_no_leftovers(pids: list[int]) -> None:
    """Our runs' qemu are gone, and so are their state files and run folders."""
    assert pids, "no qemu PID was recorded in a state file"
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", pid
    for sf in OURS.pop(id(pids), []):
        assert not sf.exists() and not sf.with_suffix("").exists(), sf


def test_output_exit_code_and_mesh_kernel_features(state_dir: Path) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    timings: dict[str, float] = {}
    script = (
        "uname -r; ip link add b0 type batadv && tc qdisc add dev lo root netem delay 1ms "
        '&& echo ok; echo "guest=$MESHSTRESS_LAB_GUEST"; echo hi; echo oops >&2; exit 7'
    )
    rc = run_in_lab(["sh", "-c", script], cwd="/", share=False, stdout=out, stderr=err,
                    timeout=120, timings=timings)  # fmt: skip
    lines = out.getvalue().decode().splitlines()
    assert rc == 7, (lines, err.getvalue())
    assert lines[0] != os.uname().release and lines[0].startswith("6.1."), lines
    assert lines[1:] == ["ok", "guest=1", "hi"]  # the lab marks its guest (capacity)
    assert err.getvalue() == b"oops\n"
    # the boot was timed (how long it took is benchmarks/lab_boot.py's business)
    assert 0 < timings["boot"] <= timings["total"], timings


def test_cli_runs_in_cwd_with_venv_env_and_results_come_back(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    (proj / ".git").mkdir(parents=True)
    weird = 'it\'s "odd" $x\nline2'
    code = (
        "import os, sys, meshstress; from meshstress.model import capacity; "
        "open('results/out.txt', 'w').write(os.environ['MESHSTRESS_TEST_WEIRD']); "
        "print(sys.executable, os.getcwd(), meshstress.__file__, "
        "capacity.where_of(None, os.environ))"
    )
    (proj / "results").mkdir()
    env = {**os.environ, "MESHSTRESS_TEST_WEIRD": weird, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [*MESHSTRESS, "lab", "run", "--timeout", "120", "--", sys.executable, "-c", code],
        cwd=proj, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    exe, cwd, mod, where = res.stdout.split()
    assert exe == sys.executable and cwd == str(proj)
    assert where == "lab"  # the estimate in the guest uses the lab's own costs
    assert mod.startswith(str(REPO))
    assert (proj / "results" / "out.txt").read_text() == weird  # written in the guest


def test_timeout_kills_a_hung_guest(state_dir: Path) -> None:
    child: list[int] = []
    with watch_qemu(state_dir, lambda: child[0] if child else None) as pids:
        proc = subprocess.Popen(
            [*MESHSTRESS, "lab", "run", "--timeout", "20", "--no-share", "--", "sleep", "600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        child.append(proc.pid)
        # the guest sleeps 600 s: returning at all (the hang guard is 300 s) means it was killed
        try:
            out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 124, out + err
    assert "timed out after 20 s" in err
    assert_no_leftovers(pids)


def test_two_runs_in_a_row_leave_nothing_behind(state_dir: Path) -> None:
    for i in range(2):
        with watch_qemu(state_dir) as pids:
            rc = run_in_lab(["sh", "-c", f"exit {i}"], cwd="/", share=False,
                            stdout=io.BytesIO(), timeout=120)  # fmt: skip
        assert rc == i
        assert_no_leftovers(pids)


def started(pids: list[int]) -> bool:
    """True once our lab run (watched: `pids`) reports that its COMMAND is running."""
    return any((sf.with_suffix("") / "x" / "started").exists() for sf in OURS.get(id(pids), []))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_guest_and_cleans_up(state_dir: Path, sig: int) -> None:
    child: list[int] = []
    with watch_qemu(state_dir, lambda: child[0] if child else None) as pids:
        # SIGINT at its default, as for a foreground process at a terminal: a CI runner
        # may start us with it ignored, and the child would inherit that
        proc = subprocess.Popen(
            [sys.executable, "-c", "import os, signal, sys; "
             "signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])",
             *MESHSTRESS, "lab", "run", "--no-share", "--", "sleep", "600"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        child.append(proc.pid)
        try:
            deadline = time.monotonic() + 300  # a hang guard, not a bound on the boot
            while not started(pids) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert started(pids), "COMMAND never started in the guest"
            proc.send_signal(sig)
            proc.wait(60)  # a hang guard
        finally:
            if proc.poll() is None:  # only when the test has failed already
                proc.terminate()
                proc.wait(60)
    assert proc.returncode == 128 + sig
    assert b"guest stopped" in proc.stderr.read() if proc.stderr else False
    assert_no_leftovers(pids)


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
