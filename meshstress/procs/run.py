"""The user's processes on a live mesh: start in order, wait until ready, watch, stop.

    procs = Processes(mesh, sc.processes, out_dir, say)
    try:
        procs.start_all(converged_at)     # each in its node's namespace, ready before the next
        ...                               # traffic, events
        procs.stop()                      # SIGTERM, SIGKILL after GRACE s, by recorded PID
        results["process"] = procs.results(t0_unix)
    finally:
        procs.stop()                      # idempotent; also on Ctrl-C, SIGTERM, a crash

Each process runs as NAME@NODE: forked from a thread inside the node's namespace
(build.Mesh.popen: netns.entered, no preexec_fn), in a session of its own, with a minimal
environment (spec.base_env, the scenario's env, and MESHSTRESS_METRICS and friends), its
stdout and stderr one pipe that a reader thread copies line by line into
`process/NAME@NODE.log` in the run folder (matching the ready and metrics regexes on the
way). Its PID and start time go into the run's state file (role "process") before
anything else happens, so `meshstress clean`, `down` and teardown stop it by PID even
when this process was killed. A watcher thread tails `process/NAME@NODE.metrics.jsonl`
(the file $MESHSTRESS_METRICS names) and notices exits: on_exit "restart" starts the
process again (up to max_restarts times), "fail" and "ignore" only record it.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import psutil

from meshstress import safefs
from meshstress.build import netns
from meshstress.errors import MeshstressError, plain_error
from meshstress.procs.metrics import Sample, parse_line, process_metrics
from meshstress.procs.spec import ProcessSpec, base_env

if TYPE_CHECKING:
    from meshstress.build import Mesh
    from meshstress.build.state import ProcessRecord

ROLE = "process"  # the role of their records in the run's state file
GRACE = 3.0  # seconds between SIGTERM and SIGKILL at the end
POLL = 0.05  # readiness polls
WATCH = 0.1  # the watcher's round: metrics file, exits, restarts
RESTART_DELAY = 0.2  # a pause before a restart (no busy loop on a program that dies at once)
SUBDIR = "process"
TCP_LISTEN = "0A"


def listening(text: str, port: int, proto: str) -> bool:
    """Pure: whether a /proc/net/{tcp,tcp6,udp,udp6} table has a socket on local `port`
    that is listening (tcp: state LISTEN) or bound (udp: any state)."""
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 4 or ":" not in cols[1]:
            continue
        try:
            local = int(cols[1].rsplit(":", 1)[1], 16)
        except ValueError:
            continue
        if local == port and (proto == "udp" or cols[3] == TCP_LISTEN):
            return True
    return False


def port_open(ns: str, port: int, proto: str) -> bool:
    """Whether a socket listens on `port` inside namespace `ns`: the namespace's own
    /proc/net tables, read from this thread while it is inside (no helper process)."""
    with netns.entered(ns):
        for table in (proto, proto + "6"):
            try:
                with open(f"/proc/thread-self/net/{table}") as f:
                    if listening(f.read(), port, proto):
                        return True
            except FileNotFoundError:  # no IPv6 in this kernel
                continue
    return False


class Instance:
    """One process of a spec on one node (NAME@NODE), across its restarts."""

    def __init__(self, spec: ProcessSpec, node: str, folder: Path) -> None:
        self.spec, self.node = spec, node
        self.name = spec.instance(node)
        self.folder = folder
        self.log_name = f"{self.name}.log"
        self.metrics_name = f"{self.name}.metrics.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None
        self.records: list[ProcessRecord] = []
        self.pids: list[int] = []
        self.started: float | None = None  # monotonic, first start
        self.started_unix: float | None = None
        self.ready_after: float | None = None  # seconds from the first start
        self.ready_event = threading.Event()
        self.exits: list[dict[str, Any]] = []  # {"code", "t"} of every exit on its own
        self.restarts = 0
        self.ended_early = False  # ended on its own and was not restarted (on_exit)
        self.stopped = False  # still running at the end: meshstress stopped it
        self.samples: list[Sample] = []
        self.problems: dict[str, Any] = {}  # first problem and count, per kind
        self.lock = threading.Lock()
        self.log: IO[bytes] | None = None
        self.readers: list[threading.Thread] = []
        self._mfile: IO[bytes] | None = None
        self._mpos = 0
        self._mrest = b""
        self._ready_re = re.compile(spec.ready.line) if spec.ready and spec.ready.line else None

    def note(self, kind: str, text: str) -> None:
        with self.lock:
            entry = self.problems.setdefault(kind, {"count": 0, "first": text})
            entry["count"] += 1

    # --- output -----------------------------------------------------------------

    def read_output(self, pipe: IO[bytes]) -> None:
        """Copy the pipe into the log line by line; ready and metrics regexes on the way."""
        for raw in iter(pipe.readline, b""):
            now = time.time()
            log = self.log
            if log is not None:
                with contextlib.suppress(OSError, ValueError):
                    log.write(raw)
                    log.flush()
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if self._ready_re is not None and not self.ready_event.is_set():
                if self._ready_re.search(line):
                    self.mark_ready()
            for m in self.spec.metrics:
                value = m.value(line)
                if value is not None:
                    with self.lock:
                        self.samples.append((now, m.name, value))
        pipe.close()

    def mark_ready(self) -> None:
        if not self.ready_event.is_set() and self.started is not None:
            self.ready_after = time.monotonic() - self.started
            self.ready_event.set()

    def tail_metrics(self) -> None:
        """Read the complete lines the process added to its metrics file since last time
        (a file truncated by the process is read again from its start)."""
        if self._mfile is None:
            try:
                fd = os.open(self.folder / self.metrics_name, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                return
            self._mfile = os.fdopen(fd, "rb")
        try:
            size = os.fstat(self._mfile.fileno()).st_size
            if size < self._mpos:
                self._mpos, self._mrest = 0, b""
            self._mfile.seek(self._mpos)
            data = self._mfile.read()
        except OSError:
            return
        self._mpos += len(data)
        lines = (self._mrest + data).split(b"\n")
        self._mrest = lines.pop()
        now = time.time()
        for raw in lines:
            samples, problem = parse_line(raw.decode("utf-8", "replace"), now)
            if problem is not None:
                self.note("metrics file", problem)
            if samples:
                with self.lock:
                    self.samples.extend(samples)

    def close(self) -> None:
        self.tail_metrics()
        for f in (self._mfile, self.log):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        self._mfile = self.log = None

    # --- results ------------------------------------------------------------------

    def result(self, t0_unix: float | None) -> dict[str, Any]:
        with self.lock:
            samples = list(self.samples)
        last = self.exits[-1]["code"] if self.exits and not self.stopped else None

        def rel(t: float | None) -> float | None:
            return None if t is None or t0_unix is None else round(t - t0_unix, 3)

        exits = [{"code": e["code"], "t_rel": rel(e["t"])} for e in self.exits]
        return {
            "node": self.node,
            "pids": self.pids,
            "started_t_rel": rel(self.started_unix),
            "ready": self.ready_event.is_set(),
            "ready_s": None if self.ready_after is None else round(self.ready_after, 3),
            "exit_code": last,
            "exit_codes": [e["code"] for e in self.exits],
            "exits": exits,
            "restarts": self.restarts,
            "ended_early": self.ended_early,
            "stopped": self.stopped,
            "log": f"{SUBDIR}/{self.log_name}",
            "metrics_file": f"{SUBDIR}/{self.metrics_name}",
            "metrics": process_metrics(samples),
            "problems": dict(self.problems),
        }


class Processes:
    """The scenario's processes on one live mesh (see the module's docstring)."""

    def __init__(
        self,
        mesh: Mesh,
        specs: list[ProcessSpec],
        out_dir: Path,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.mesh, self.specs = mesh, specs
        self.folder = Path(out_dir) / SUBDIR
        self.say = say or (lambda msg: None)
        self.instances: list[Instance] = []
        self.halt = threading.Event()
        self.watcher: threading.Thread | None = None
        self._stopped = False

    # --- starting -------------------------------------------------------------------

    def _env(self, inst: Instance) -> dict[str, str]:
        from meshstress.cli.host import expand_node_refs

        addresses = self.mesh.state.node_addresses
        env = base_env(os.environ)
        env.update({k: expand_node_refs(v, addresses) for k, v in inst.spec.env})
        env.update(
            MESHSTRESS_METRICS=str(self.folder / inst.metrics_name),
            MESHSTRESS_NODE=inst.node,
            MESHSTRESS_PROCESS=inst.name,
            MESHSTRESS_ADDRESS=self.mesh.address(inst.node),
            MESHSTRESS_RUN=self.mesh.state.run_id,
        )
        return env

    def _launch(self, inst: Instance) -> None:
        """Start (or restart) the instance's process and record its PID at once."""
        from meshstress.cli.host import expand_node_refs

        addresses = self.mesh.state.node_addresses
        argv = [expand_node_refs(a, addresses) for a in inst.spec.command]
        try:
            proc: subprocess.Popen[bytes] = self.mesh.popen(
                inst.node, argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, env=self._env(inst), cwd=inst.spec.cwd,
                start_new_session=True, close_fds=True,
            )  # fmt: skip
        except OSError as exc:
            raise MeshstressError(
                f"process {inst.name}: cannot start {argv[0]!r} (in {inst.spec.cwd}): "
                f"{plain_error(exc)}"
            ) from None
        with contextlib.suppress(psutil.NoSuchProcess):  # gone already: its exit code tells
            inst.records.append(self.mesh.record_process(proc, inst.node, ROLE, argv))
        inst.proc = proc
        inst.pids.append(proc.pid)
        if inst.started is None:
            inst.started, inst.started_unix = time.monotonic(), time.time()
        assert proc.stdout is not None
        reader = threading.Thread(
            target=inst.read_output, args=(proc.stdout,), name=f"ms-out-{inst.name}", daemon=True
        )
        inst.readers.append(reader)
        reader.start()

    def start_all(self, converged_at: float | None = None) -> None:
        """Start every process in the order given, each at `converged_at` + its start
        delay (monotonic; default now) and ready before the next starts. A process that
        is not ready within its timeout (or ends before) raises MeshstressError; the
        caller's `finally` calls stop()."""
        if not self.specs:
            return
        safefs.make_dir(self.folder)
        base = time.monotonic() if converged_at is None else converged_at
        for spec in self.specs:
            delay = base + spec.start - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for node in spec.nodes:
                inst = Instance(spec, node, self.folder)
                inst.log = safefs.create(self.folder, inst.log_name)
                safefs.create(self.folder, inst.metrics_name).close()
                self.instances.append(inst)
                self._launch(inst)
                self.say(f"process {inst.name}: started (pid {inst.pids[-1]})")
            for inst in self.instances:
                if inst.spec is spec:
                    self._wait_ready(inst)
        self.watcher = threading.Thread(target=self._watch, name="ms-processes", daemon=True)
        self.watcher.start()

    def _wait_ready(self, inst: Instance) -> None:
        ready = inst.spec.ready
        if ready is None:
            inst.mark_ready()
            return
        assert inst.proc is not None and inst.started is not None
        deadline = inst.started + ready.timeout
        ns = self.mesh.ns(inst.node)
        while not inst.ready_event.is_set():
            if ready.port is not None and port_open(ns, ready.port, ready.proto):
                inst.mark_ready()
                break
            code = inst.proc.poll()
            if code is not None:
                for r in inst.readers:  # the last lines may hold the match, or the reason
                    r.join(timeout=2)
                if inst.ready_event.is_set():
                    break
                raise MeshstressError(
                    f"process {inst.name} ended (exit code {code}) before it was ready "
                    f"({self._what(inst)}); its output: {self._last_line(inst)}"
                )
            if time.monotonic() > deadline:
                raise MeshstressError(
                    f"process {inst.name} was not ready after {ready.timeout:g} s "
                    f"({self._what(inst)}); its output: {self._last_line(inst)}"
                )
            inst.ready_event.wait(POLL)
        self.say(f"process {inst.name}: ready after {inst.ready_after or 0:.2f} s")

    @staticmethod
    def _what(inst: Instance) -> str:
        r = inst.spec.ready
        assert r is not None
        return (
            f"no line matching {r.line!r}"
            if r.line
            else f"nothing listening on {r.proto} port {r.port}"
        )

    def _last_line(self, inst: Instance) -> str:
        try:
            with open(self.folder / inst.log_name, "rb") as f:
                lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines()]
        except OSError:
            return "(none)"
        lines = [ln for ln in lines if ln]
        return f"process/{inst.log_name}: {lines[-1][:200]!r}" if lines else "(none)"

    # --- watching ---------------------------------------------------------------------

    def _watch(self) -> None:
        while not self.halt.wait(WATCH):
            for inst in list(self.instances):
                inst.tail_metrics()
                self._check_exit(inst)

    def _check_exit(self, inst: Instance, restart: bool = True) -> None:
        """Record an exit of the instance's current process once; restart it if its
        on_exit says so and restarts are left (and `restart`, and not halting)."""
        proc = inst.proc
        if proc is None or proc.poll() is None or any(e["pid"] == proc.pid for e in inst.exits):
            return
        inst.exits.append({"code": proc.returncode, "t": time.time(), "pid": proc.pid})
        spec = inst.spec
        if spec.on_exit == "restart" and inst.restarts < spec.max_restarts:
            if not restart or self.halt.wait(RESTART_DELAY):
                return  # the run is ending: not an early end
            inst.restarts += 1
            try:
                self._launch(inst)
            except MeshstressError as exc:
                inst.note("restart", str(exc))
                inst.ended_early = True
                return
            self.say(f"process {inst.name}: exited with {proc.returncode}, restarted")
            return
        inst.ended_early = spec.on_exit != "ignore"
        self.say(f"process {inst.name}: exited with {proc.returncode} (on_exit {spec.on_exit})")

    # --- stopping ---------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every process by its recorded PID and start time (its whole tree: SIGTERM,
        SIGKILL after GRACE s), then drain its output and metrics. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        from meshstress.build import stop_processes

        self.halt.set()
        if self.watcher is not None and self.watcher.is_alive():
            self.watcher.join(timeout=10)
        for inst in self.instances:
            self._check_exit(inst, restart=False)  # ended since the watcher's last round
            if inst.proc is not None and inst.proc.poll() is None:
                inst.stopped = True
        stop_processes([r for inst in self.instances for r in inst.records], timeout=GRACE)
        for inst in self.instances:
            if inst.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    inst.proc.wait(timeout=GRACE)
            for r in inst.readers:
                r.join(timeout=5)
            inst.close()

    # --- results ----------------------------------------------------------------------

    def samples(self, name: str) -> list[Sample]:
        """Every sample of process `name` (all its nodes), for per-window metrics
        (meshstress.procs.metrics.process_metrics)."""
        out: list[Sample] = []
        for inst in self.instances:
            if inst.spec.name == name:
                with inst.lock:
                    out.extend(inst.samples)
        return sorted(out, key=lambda s: s[0])

    def results(self, t0_unix: float | None = None) -> dict[str, Any]:
        """results["process"]: per process name (see docs/scenario.md)."""
        out: dict[str, Any] = {}
        for spec in self.specs:
            insts = {i.name: i.result(t0_unix) for i in self.instances if i.spec is spec}
            if not insts:
                continue
            rows = list(insts.values())
            codes = [r["exit_code"] for r in rows]
            nonzero = [c for c in codes if c not in (0, None)]
            if nonzero:
                code: int | None = nonzero[0]
            elif any(r["stopped"] or c is None for r, c in zip(rows, codes, strict=True)):
                code = None
            else:
                code = 0
            ready_s = [r["ready_s"] for r in rows if r["ready_s"] is not None]
            out[spec.name] = {
                "nodes": list(spec.nodes),
                "command": list(spec.command),
                "on_exit": spec.on_exit,
                "ready": all(r["ready"] for r in rows),
                "ready_s": max(ready_s) if len(ready_s) == len(rows) else None,
                "exit_code": code,
                "exit_codes": [c for r in rows for c in r["exit_codes"]],
                "restarts": sum(r["restarts"] for r in rows),
                "ended_early": sum(1 for r in rows if r["ended_early"]),
                "stopped": sum(1 for r in rows if r["stopped"]),
                "metrics": process_metrics(self.samples(spec.name)),
                "instances": insts,
            }
        return out
