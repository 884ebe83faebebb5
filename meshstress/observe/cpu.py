"""Who used the host's CPU while a run measured: per-process CPU time of the run's
recorded processes by role, meshstress's own threads, and the kernel's interrupt work.

    meter = CpuMeter(lambda: state.processes, recorder_tid=threading.get_native_id())
    meter.sample()     # at the start of the window, then now and then (new PIDs)
    ...
    meter.sample()     # at the end
    meter.breakdown()  # -> {"window_s", "cores", "busy_share", "by": {category: {...}}}

Categories: `routing` (daemons: babeld, batmand), `traffic` (flow agents), `process`
(the scenario's [[process]] entries and other recorded programs), `recorder` (the
route recorder's own thread), `meshstress` (the rest of this process: the event
runner, the main thread), `softirq` (the kernel's interrupt and softirq time from
/proc/stat: packet forwarding across veths and bridges mostly lands there), and `other`:
what the host was busy with beyond all that (other users, kernel threads, processes
the run did not record). Per process: utime + stime from /proc/PID/stat, plus the
CPU of children it reaped (cutime + cstime), in clock ticks (10 ms); this process and
the recorder thread from their CPU clocks (to the nanosecond). A process that started
during the window counts from zero, one that ended counts until its last sample. Parsing and the
breakdown are pure."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

CATEGORIES = ("routing", "traffic", "process", "recorder", "meshstress", "softirq", "other")
ROUTING_ROLES = frozenset({"routing", "babeld", "batmand", "olsrd", "bmx"})
TRAFFIC_ROLES = frozenset({"traffic", "fidelity"})


def role_category(role: str) -> str:
    """The category of a recorded process's role (ProcessRecord.role)."""
    if role in ROUTING_ROLES:
        return "routing"
    if role in TRAFFIC_ROLES:
        return "traffic"
    return "process"


class HostTicks(NamedTuple):
    """The `cpu` line of /proc/stat, all cores, in clock ticks."""

    total: int  # every field: user nice system idle iowait irq softirq steal
    busy: int  # total less idle and iowait
    interrupts: int  # irq + softirq


def parse_host_stat(text: str) -> HostTicks:
    """/proc/stat -> HostTicks. Pure. Raises ValueError without a `cpu ` line."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            v = [int(x) for x in line.split()[1:9]]
            v += [0] * (8 - len(v))
            user, nice, system, idle, iowait, irq, softirq, steal = v
            total = sum(v)
            return HostTicks(total, total - idle - iowait, irq + softirq)
    raise ValueError("no cpu line in /proc/stat")


class ProcTicks(NamedTuple):
    own: int  # utime + stime
    children: int  # cutime + cstime: children it waited for
    start: int  # starttime, ticks after boot


def parse_pid_stat(text: str) -> ProcTicks:
    """/proc/PID/stat (or /proc/PID/task/TID/stat) -> ProcTicks. Pure. The command name
    in parentheses may hold spaces and parentheses: fields are counted after the last ')'."""
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17,
    # starttime 22
    utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
    return ProcTicks(utime + stime, cutime + cstime, int(rest[19]))


def breakdown(
    before: HostTicks,
    after: HostTicks,
    by_category: Mapping[str, float],
    cores: int,
    clk_tck: int,
) -> dict[str, Any]:
    """Pure: the window's CPU by category. `by_category`: ticks per process category
    (routing, traffic, process, recorder, meshstress). Shares are of the host's whole
    capacity over the window (all cores): a saturated host's shares add up to about 1.
    `other` is the busy time nothing else explains (never below 0)."""
    total = max(1, after.total - before.total)
    busy = max(0, after.busy - before.busy)
    ticks = {c: float(by_category.get(c, 0.0)) for c in CATEGORIES[:5]}
    ticks["softirq"] = float(max(0, after.interrupts - before.interrupts))
    ticks["other"] = max(0.0, busy - sum(ticks.values()))
    return {
        "window_s": round(total / clk_tck / max(1, cores), 2),
        "cores": cores,
        "busy_share": round(busy / total, 4),
        "by": {
            c: {"cpu_s": round(t / clk_tck, 3), "share": round(t / total, 5)}
            for c, t in ticks.items()
        },
    }


def summary_line(cpu: Mapping[str, Any]) -> str:
    """Pure: 'CPU 62% busy: routing 12%, traffic 5%, ...' of a breakdown()."""
    parts = [f"{c} {v['share']:.0%}" for c, v in cpu["by"].items() if v["share"] >= 0.005]
    return f"CPU {cpu['busy_share']:.0%} busy of {cpu['cores']} cores: " + (
        ", ".join(parts) or "nothing measurable"
    )


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


@dataclass
class CpuMeter:
    """Samples /proc for a run's recorded processes and this process's threads.

    `records`: called at each sample, returns the run's ProcessRecords now (objects
    with pid, create_time, role); `recorder_tid`: the native id of the thread whose
    CPU counts as `recorder` (the rest of this process is `meshstress`)."""

    records: Callable[[], Iterable[Any]]
    recorder_tid: int | None = None
    clk_tck: int = field(default_factory=lambda: os.sysconf("SC_CLK_TCK"))
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    _host0: HostTicks | None = None
    _host1: HostTicks | None = None
    _first: dict[tuple[int, float], tuple[str, int]] = field(default_factory=dict)
    _last: dict[tuple[int, float], int] = field(default_factory=dict)
    _self0: tuple[float, float] | None = None  # (process, recorder thread), first sample
    _self1: tuple[float, float] | None = None
    _boot_ticks: int = 0

    def sample(self) -> None:
        host = _read("/proc/stat")
        if host is None:
            return
        ticks = parse_host_stat(host)
        first = self._host0 is None
        if first:
            self._host0 = ticks
            # ticks since boot when the window opened: a process started later counts from 0
            up = _read("/proc/uptime")
            self._boot_ticks = int(float(up.split()[0]) * self.clk_tck) if up else 0
        self._host1 = ticks
        for rec in list(self.records()):
            text = _read(f"/proc/{rec.pid}/stat")
            if text is None:
                continue
            try:
                p = parse_pid_stat(text)
            except (ValueError, IndexError):
                continue
            key = (rec.pid, round(rec.create_time, 1))
            used = p.own + p.children
            if key not in self._first:
                born_inside = not first and p.start >= self._boot_ticks
                self._first[key] = (role_category(rec.role), 0 if born_inside else used)
            self._last[key] = used
        mine = self._own_ticks()
        if self._self0 is None:
            self._self0 = mine
        self._self1 = mine

    def _own_ticks(self) -> tuple[float, float]:
        """(this process, the recorder thread) CPU in ticks: from the clocks, to the
        nanosecond, when the recorder thread samples itself; else from /proc (ticks)."""
        import threading

        if self.recorder_tid == threading.get_native_id():
            return time.process_time() * self.clk_tck, time.thread_time() * self.clk_tck
        me = _read("/proc/self/stat")
        rec_t = _read(f"/proc/self/task/{self.recorder_tid}/stat") if self.recorder_tid else None
        return (
            float(parse_pid_stat(me).own) if me else 0.0,
            float(parse_pid_stat(rec_t).own) if rec_t else 0.0,
        )

    def by_category(self) -> dict[str, float]:
        """Ticks per process category over the window so far."""
        out = {c: 0.0 for c in CATEGORIES[:5]}
        for key, (cat, base) in self._first.items():
            out[cat] += max(0, self._last[key] - base)
        if self._self0 is not None and self._self1 is not None:
            recorder = max(0, self._self1[1] - self._self0[1])
            out["recorder"] += recorder
            out["meshstress"] += max(0, self._self1[0] - self._self0[0] - recorder)
        return out

    def breakdown(self) -> dict[str, Any] | None:
        if self._host0 is None or self._host1 is None:
            return None
        return breakdown(self._host0, self._host1, self.by_category(), self.cores, self.clk_tck)


def measure(records: Callable[[], Iterable[Any]], seconds: float, every: float = 0.5) -> Any:
    """A CpuMeter sampled for `seconds` from this thread (as the recorder would)."""
    import threading

    meter = CpuMeter(records, recorder_tid=threading.get_native_id())
    end = time.monotonic() + seconds
    meter.sample()
    while time.monotonic() < end:
        time.sleep(min(every, max(0.0, end - time.monotonic())))
        meter.sample()
    return meter


def host_capacity(sample_s: float = 0.5) -> tuple[int, float, float]:
    """(cores, MemAvailable in MB, cores busy now: a sample over `sample_s`)."""
    cores = os.cpu_count() or 1
    mem = 0.0
    text = _read("/proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            mem = int(line.split()[1]) / 1024
    a = _read("/proc/stat")
    time.sleep(sample_s)
    b = _read("/proc/stat")
    busy = 0.0
    if a and b:
        t0, t1 = parse_host_stat(a), parse_host_stat(b)
        if t1.total > t0.total:
            busy = cores * (t1.busy - t0.busy) / (t1.total - t0.total)
    return cores, mem, busy
