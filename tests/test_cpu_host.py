"""CPU attribution on this host: a busy loop recorded as a user process shows up as
`process`, not as routing; the sums are consistent with /proc/stat; and a run's
results.json carries the breakdown and the recorder's share."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import psutil
import pytest

from meshstress.observe.cpu import CATEGORIES, CpuMeter, measure

BUSY = "import time\nwhile True: pass\n"


def _rec(proc: subprocess.Popen[bytes], role: str) -> SimpleNamespace:
    return SimpleNamespace(pid=proc.pid, create_time=psutil.Process(proc.pid).create_time(),
                           role=role)  # fmt: skip


def test_a_busy_loop_counts_as_process_and_a_sleeper_as_routing() -> None:
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    idle = subprocess.Popen(["sleep", "30"])
    try:
        records = [_rec(busy, "process"), _rec(idle, "babeld")]
        p = psutil.Process(busy.pid)
        meter = CpuMeter(lambda: records, recorder_tid=threading.get_native_id())
        meter.sample()
        used0 = sum(p.cpu_times()[:2])  # the same /proc counter, inside the meter's window
        for _ in range(8):
            time.sleep(0.25)
            meter.sample()
        used1 = sum(p.cpu_times()[:2])
        meter.sample()
    finally:
        for proc in (busy, idle):
            proc.kill()
            proc.wait()
    out = meter.breakdown()
    assert out is not None
    by = {c: out["by"][c]["cpu_s"] for c in CATEGORIES}
    # the busy loop's CPU lands in `process`: at least what psutil saw inside the window
    assert by["process"] > 0
    assert by["process"] >= round(used1 - used0, 3) - 0.001
    assert by["routing"] <= 0.02  # the sleeper: nothing
    assert by["traffic"] == 0
    # what is attributed to processes and threads fits in what /proc/stat calls busy
    busy_s = out["busy_share"] * out["window_s"] * out["cores"]
    attributed = sum(by[c] for c in CATEGORIES if c != "other")
    assert attributed <= busy_s * 1.02 + 0.05
    assert sum(out["by"][c]["share"] for c in CATEGORIES) == pytest.approx(
        out["busy_share"], abs=0.01
    )


def test_the_recorder_thread_is_told_from_the_rest_of_this_process() -> None:
    stop = threading.Event()

    def spin() -> None:  # another thread of this process: `meshstress`, not `recorder`
        while not stop.is_set():
            pass

    t = threading.Thread(target=spin)
    t.start()
    try:
        meter = measure(list, seconds=1.5, every=0.25)
    finally:
        stop.set()
        t.join()
    out = meter.breakdown()
    assert out is not None
    assert out["by"]["meshstress"]["cpu_s"] > out["by"]["recorder"]["cpu_s"]


SCENARIO = """
[scenario]
name = "cpu-attribution"
duration = "3s"
warmup = "0.2s"
route_interval = "0.25s"

[mesh]
generate = "line 2"
routing = "static"

[[process]]
name = "spin"
nodes = "n1"
command = ["python3", "-c", "while True: pass"]

[verdict]
max_saturated_share = "100%"
max_softnet_drops = 1000000000
"""


@pytest.mark.network
def test_a_run_attributes_its_cpu(run_scenario) -> None:  # type: ignore[no-untyped-def]
    from meshstress import report

    r = run_scenario(SCENARIO)
    host = r["run"]["host"]
    by = host["cpu_by"]["by"]
    assert set(by) == set(CATEGORIES)
    assert by["process"]["cpu_s"] > 0
    assert by["process"]["cpu_s"] > by["routing"]["cpu_s"] == 0  # static: no daemons
    assert host["recorder_cpu_share"] == by["recorder"]["share"]
    assert by["recorder"]["cpu_s"] > 0  # it took 12 snapshots at least
    assert "host CPU " in report.summary(r)
