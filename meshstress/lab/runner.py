"""Boot the lab VM, run one command inside, relay its output, return its exit code."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import BinaryIO

import psutil

from meshstress import safefs
from meshstress.errors import CapabilityError, MeshstressError, plain_error
from meshstress.lab import guest, kernel, qemu
from meshstress.lab.initramfs import build_initramfs, find_busybox

DEFAULT_MEM_MB = 2048
DEFAULT_CPUS = 2
DEFAULT_TIMEOUT = 3600.0
TIMEOUT_EXIT = 124
SHARE_TAG = "share0"
# Never shared writable: the guest is root and would write straight into the host's system.
_SYSTEM_DIRS = frozenset(
    {"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root",
     "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var"}
)  # fmt: skip


class LabTerminated(BaseException):
    """SIGTERM or SIGHUP arrived while the lab was running (the guest was stopped)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_FALLBACK: dict[int, Path] = {}  # euid -> a mkdtemp directory, when the usual one is not ours


def state_dir() -> Path:
    """The lab's directory for run dirs, state files and the KVM probe cache, checked to
    be ours alone (owner us, mode 0700, not a symlink: meshstress.safefs.private_dir).

    Root: /run/meshstress/lab. Others: $XDG_RUNTIME_DIR/meshstress-lab-UID, else
    /tmp/meshstress-lab-UID; if that one was planted by someone else (another owner, a
    symlink, group or world access we cannot take away), a fresh tempfile.mkdtemp
    directory is used instead, and said once."""
    uid = os.geteuid()
    if uid in _FALLBACK:
        return _FALLBACK[uid]
    if uid == 0:
        parent = Path("/run/meshstress")
        parent.mkdir(mode=0o700, exist_ok=True)
        safefs.private_dir(parent)
        return safefs.private_dir(parent / "lab")
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    try:
        return safefs.private_dir(Path(base) / f"meshstress-lab-{uid}")
    except (MeshstressError, OSError) as exc:
        d = Path(tempfile.mkdtemp(prefix=f"meshstress-lab-{uid}-"))
        print(f"meshstress lab: {plain_error(exc)}; using {d}", file=sys.stderr, flush=True)
        _FALLBACK[uid] = d
        return d


# What the guest gets of the caller's environment: what COMMAND needs to run as it would
# here (paths, locale, terminal, meshstress/Python/pytest settings, CI), nothing else:
# no tokens, keys, agent sockets or session variables.
ENV_NAMES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "COLORTERM", "NO_COLOR",
     "FORCE_COLOR", "COLUMNS", "LINES", "LANG", "LANGUAGE", "TZ", "CI", "VIRTUAL_ENV"}
)  # fmt: skip
ENV_PREFIXES = ("LC_", "MESHSTRESS_", "PYTHON", "PYTEST_", "COVERAGE_", "COV_CORE_")
_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "PRIVATE")


def lab_env(env: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed part of `env` (ENV_NAMES, ENV_PREFIXES), never a name that looks
    like a secret. Pure."""
    return {
        k: v
        for k, v in env.items()
        if (k in ENV_NAMES or k.startswith(ENV_PREFIXES))
        and not any(w in k.upper() for w in _SECRET_WORDS)
    }


def guest_env(env: Mapping[str, str]) -> dict[str, str]:
    """What the guest's COMMAND gets: lab_env(env), and GUEST_ENV=1 (it runs in the
    lab: the capacity estimate uses the lab's costs there). Pure."""
    return lab_env(env) | {guest.GUEST_ENV: "1"}


# ---------------------------------------------------------------- pure helpers


def default_share(cwd: str) -> str | None:
    """The directory shared writable by default: the git work tree holding cwd, else cwd.

    None if that would be a system directory (the guest runs as root).
    """
    path = Path(os.path.abspath(cwd))
    for cand in (path, *path.parents):
        if (cand / ".git").exists():
            path = cand
            break
    return None if not is_safe_share(str(path)) else str(path)


_SYSTEM_TREES = ("/bin/", "/boot/", "/dev/", "/etc/", "/lib/", "/lib64/", "/proc/", "/run/",
                 "/sbin/", "/sys/", "/usr/")  # fmt: skip


def is_safe_share(path: str, home: str | None = None) -> bool:
    """False for system directories and trees, and the home directory itself."""
    p = os.path.normpath(os.path.abspath(path))
    home = home if home is not None else os.path.expanduser("~")
    if p in _SYSTEM_DIRS or p == os.path.normpath(home):
        return False
    return not (p + "/").startswith(_SYSTEM_TREES)


def timeout_message(timeout: float) -> str:
    return f"meshstress lab: timed out after {timeout:g} s; guest killed"


# ---------------------------------------------------------------- availability


def lab_available(kernel_package: str | None = None) -> tuple[bool, str]:
    """(True, description) if the lab can run here, else (False, the missing capability)."""
    exe = qemu.qemu_binary()
    if exe is None:
        return False, f"{qemu.QEMU} not installed (apt-get install qemu-system-x86)"
    try:
        find_busybox()
    except CapabilityError as exc:
        return False, str(exc)
    kernel_package = kernel_package or kernel.host_default_kernel_package()
    k = kernel.cached_kernel(kernel_package)
    if k is None:
        if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
            return False, f"no kernel cached for {kernel_package} and apt-get/dpkg-deb missing"
        if kernel._apt_candidate(kernel_package) is None:
            return False, (
                f"no kernel cached for {kernel_package} and apt knows no such package "
                "(apt-get update, or meshstress lab fetch)"
            )
        return True, f"{kernel_package} fetchable with apt"
    return True, f"{k.package} {k.version} cached"


# ---------------------------------------------------------------- process/state handling


@dataclass
class _Run:
    rundir: Path
    state_file: Path
    timeout: float | None
    proc: subprocess.Popen[bytes] | None = None
    listeners: list[socket.socket] = field(default_factory=list)
    conns: dict[int, tuple[socket.socket, BinaryIO]] = field(default_factory=dict)
    started_at: float | None = None  # host monotonic time when the guest reported COMMAND start
    say: Callable[[str], None] | None = None  # progress (the guest's boot)
    t0: float = 0.0  # host monotonic time of the run_in_lab call

    @property
    def xchg(self) -> Path:
        return self.rundir / "x"


def _write_state(run: _Run) -> None:
    assert run.proc is not None
    try:
        ctime = psutil.Process(run.proc.pid).create_time()
    except psutil.Error:
        ctime = 0.0
    data = {
        "qemu_pid": run.proc.pid,
        "qemu_create_time": ctime,
        "owner_pid": os.getpid(),
        "owner_create_time": psutil.Process().create_time(),
        "rundir": str(run.rundir),
    }
    tmp = run.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, run.state_file)


def _pid_matches(pid: int, create_time: float) -> psutil.Process | None:
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - create_time) < 0.01:
            return p
    except psutil.Error:
        pass
    return None


def _stop(p: psutil.Process) -> None:
    with contextlib.suppress(psutil.Error):
        p.terminate()
        try:
            p.wait(2)
        except psutil.TimeoutExpired:
            p.kill()
            p.wait(2)


def reap_stale() -> list[str]:
    """Kill qemus and remove run dirs left by lab runs whose owner died (by recorded PID)."""
    sdir = state_dir()
    cleaned: list[str] = []
    for sf in sorted(sdir.glob("run-*.json")):
        try:
            data = json.loads(sf.read_text())
            owner = _pid_matches(int(data["owner_pid"]), float(data["owner_create_time"]))
        except (OSError, ValueError, KeyError):
            continue
        if owner is not None:
            continue
        q = _pid_matches(int(data.get("qemu_pid", 0)), float(data.get("qemu_create_time", 0)))
        if q is not None:
            _stop(q)
        rundir = Path(data.get("rundir", ""))
        if rundir.parent == sdir and rundir.name.startswith("run-"):
            shutil.rmtree(rundir, ignore_errors=True)
        sf.unlink(missing_ok=True)
        cleaned.append(sf.name)
    return cleaned


def remove_kept_rundirs(min_age: float = 60.0) -> list[str]:
    """Remove run directories without a state file (kept with --keep, or left by a crash)."""
    sdir = state_dir()
    removed = []
    for d in sorted(sdir.glob("run-*")):
        if not d.is_dir() or d.with_suffix(".json").exists():
            continue
        with contextlib.suppress(OSError):
            if time.time() - d.stat().st_mtime >= min_age:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d.name)
    return removed


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into an exception so `finally` blocks clean up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise LabTerminated(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _teardown(run: _Run, keep: bool) -> None:
    if run.proc is not None:
        if run.proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                _stop(psutil.Process(run.proc.pid))
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.proc.wait(5)
    for conn, _ in run.conns.values():
        conn.close()
    for s in run.listeners:
        s.close()
    run.state_file.unlink(missing_ok=True)
    if keep:
        print(f"meshstress lab: run directory kept at {run.rundir}", file=sys.stderr)
    else:
        shutil.rmtree(run.rundir, ignore_errors=True)


# ---------------------------------------------------------------- the run


def _listen(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)
    s.setblocking(False)
    return s


def _console_tail(run: _Run, n: int = 15) -> str:
    try:
        lines = (run.rundir / "console.log").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _write(target: BinaryIO, data: bytes) -> None:
    """Forward output; a reader that went away (`| head`) only loses the rest of it."""
    with contextlib.suppress(BrokenPipeError, ValueError):
        target.write(data)
        target.flush()


def _relay(run: _Run, out: BinaryIO, err: BinaryIO, deadline: float | None) -> bool:
    """Copy guest output until qemu exits. False if the deadline passed first."""
    assert run.proc is not None
    sel = selectors.DefaultSelector()
    targets = {run.listeners[0].fileno(): out, run.listeners[1].fileno(): err}
    for s in run.listeners:
        sel.register(s, selectors.EVENT_READ, ("listen", s))
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        exited = run.proc.poll() is not None
        if run.started_at is None and (run.xchg / "started").exists():
            run.started_at = time.monotonic()
            if run.say is not None:
                run.say(f"lab: guest up, command started after {run.started_at - run.t0:.1f} s")
        wait = 0.2 if not exited else 0.0
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        events = sel.select(wait)
        for key, _ in events:
            kind, sock = key.data
            if kind == "listen":
                conn, _ = sock.accept()
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ, ("conn", conn))
                run.conns[conn.fileno()] = (conn, targets[sock.fileno()])
                continue
            target = run.conns[sock.fileno()][1]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            if data:
                _write(target, data)
            else:
                sel.unregister(sock)
        if exited and not events:
            sel.close()
            return True


def _prepare(
    run: _Run,
    argv: Sequence[str],
    cwd: str,
    env: Mapping[str, str],
    k: kernel.Kernel,
    share: str | None,
) -> list[tuple[str, str]]:
    run.xchg.mkdir(mode=0o700)
    shares = [(SHARE_TAG, share)] if share else []
    (run.xchg / "boot.conf").write_text(guest.boot_conf(k.bind_mounts(), shares))
    (run.xchg / "stage2.sh").write_text(guest.stage2_script(argv, cwd))
    (run.xchg / "env").write_bytes(guest.env_file(guest_env(env)))
    return shares


class _BootFailed(MeshstressError):
    """The guest stopped before COMMAND started (nothing ran, so a retry is safe)."""


def run_in_lab(
    argv: Sequence[str],
    *,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    mem: int = DEFAULT_MEM_MB,
    cpus: int = DEFAULT_CPUS,
    kernel_package: str | None = None,
    share: str | None | bool = True,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
    keep: bool = False,
    timings: dict[str, float] | None = None,
    say: Callable[[str], None] | None = None,
) -> int:
    """Run argv inside the lab VM and return its exit code (124 on timeout).

    cwd/env default to the caller's. share=True shares the git work tree holding cwd (else cwd)
    writable at the same path; a path shares that directory; False/None shares nothing.
    stdout/stderr are binary streams (default: this process's). timings, if given, receives
    'boot' (seconds from the call until COMMAND started, seen from the host) and 'total'.
    A guest that dies before COMMAND starts is booted once more. `say`: progress (kernel,
    initramfs, boot, when COMMAND started).
    """
    t0 = time.monotonic()
    if not argv:
        raise MeshstressError("lab run: no command given")
    exe = qemu.qemu_binary()
    if exe is None:
        raise CapabilityError(f"{qemu.QEMU} not installed (apt-get install qemu-system-x86)")
    cwd = os.path.abspath(cwd or os.getcwd())
    env = dict(os.environ if env is None else env)
    share_path = default_share(cwd) if share is True else (share or None)
    if share_path is not None and not is_safe_share(share_path):
        raise MeshstressError(f"lab run: refusing to share system directory {share_path} writable")
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr.buffer
    k = kernel.fetch_kernel(kernel_package)
    initrd = build_initramfs(k)
    if say is not None:
        say(f"lab: kernel {k.release} and initramfs ready after {time.monotonic() - t0:.1f} s")
    sdir = state_dir()
    reap_stale()
    base = qemu.VmSpec(
        vmlinuz=str(kernel.boot_image(k)),
        initrd=str(initrd),
        xchg_dir="",
        out_sock="",
        err_sock="",
        console_log="",
        mem_mb=mem,
        cpus=cpus,
        kvm=qemu.kvm_usable(exe),
        qemu=exe,
    )
    # The timeout covers boot and COMMAND, not a first kernel download.
    deadline = None if not timeout else time.monotonic() + timeout
    since = time.time() - 1.0
    with _signals(), _giving_back(share_path, since):
        for attempt in (1, 2):
            rundir = Path(tempfile.mkdtemp(prefix="run-", dir=sdir))
            run = _Run(rundir, rundir.with_suffix(".json"), timeout, say=say, t0=t0)
            try:
                shares = _prepare(run, argv, cwd, env, k, share_path)
                spec = replace(
                    base,
                    xchg_dir=str(run.xchg),
                    out_sock=str(rundir / "out.sock"),
                    err_sock=str(rundir / "err.sock"),
                    console_log=str(rundir / "console.log"),
                    shares=shares,
                )
                if say is not None:
                    how = "KVM" if spec.kvm else "software emulation"
                    say(f"lab: booting {spec.cpus} CPU(s), {spec.mem_mb} MB ({how})")
                if not _boot(run, spec, out, err, deadline):
                    err.flush()
                    print(timeout_message(timeout or 0), file=sys.stderr, flush=True)
                    return TIMEOUT_EXIT
                return _result(run, t0, timings)
            except _BootFailed as exc:
                if attempt == 2:
                    raise
                how = " without KVM" if base.kvm else ""
                base = replace(base, kvm=False)  # a KVM that passed the probe may still fail
                print(f"meshstress lab: {exc}; booting again{how}", file=sys.stderr, flush=True)
            finally:
                _teardown(run, keep)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _giving_back(share: str | None, since: float) -> Iterator[None]:
    """Under sudo: what the root guest wrote into the share goes back to the user."""
    try:
        yield
    finally:
        if share is not None:
            with contextlib.suppress(OSError):
                safefs.give_back_new(share, since)


def _boot(
    run: _Run, spec: qemu.VmSpec, out: BinaryIO, err: BinaryIO, deadline: float | None
) -> bool:
    """Start qemu and relay its output until it exits. False if the deadline passed first."""
    run.listeners = [_listen(Path(spec.out_sock)), _listen(Path(spec.err_sock))]
    with open(run.rundir / "qemu.log", "wb") as qlog:
        run.proc = spawn_dying_with_parent(qemu.qemu_argv(spec), qlog)
    _write_state(run)
    return _relay(run, out, err, deadline)


def spawn_dying_with_parent(argv: Sequence[str], log: BinaryIO) -> subprocess.Popen[bytes]:
    """Start argv in its own session, to get SIGKILL if meshstress itself dies (even by
    SIGKILL): util-linux `setpriv --pdeathsig KILL` sets that and execs argv (same PID).
    Not a preexec_fn: Python code in the forked child can deadlock in a threaded process
    (the pytest plugin boots the lab from a test session). Without setpriv the stale-run
    reaper (reap_stale) still stops a qemu whose owner died."""
    setpriv = shutil.which("setpriv")
    prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
    return subprocess.Popen(
        [*prefix, *argv],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )


def _failure_reason(run: _Run) -> str:
    for p in (run.xchg / "init-error", run.rundir / "qemu.log"):
        with contextlib.suppress(OSError, IndexError):
            return p.read_text(errors="replace").strip().splitlines()[-1]
    return f"qemu exit status {run.proc.returncode if run.proc else '?'}"


def _result(run: _Run, t0: float, timings: dict[str, float] | None) -> int:
    if timings is not None:
        timings["total"] = time.monotonic() - t0
        if run.started_at is not None:
            timings["boot"] = run.started_at - t0
        with contextlib.suppress(OSError, ValueError, IndexError):
            timings["guest_uptime_at_start"] = float((run.xchg / "started").read_text().split()[0])
    rc_file = run.xchg / "rc"
    if rc_file.is_file():
        return int(rc_file.read_text().strip() or "1")
    why = _failure_reason(run)
    tail = _console_tail(run)
    if tail:
        print(tail, file=sys.stderr)
    if not (run.xchg / "started").exists():
        raise _BootFailed(f"lab: the guest stopped before COMMAND started: {why}")
    raise MeshstressError(f"lab: the guest stopped before COMMAND finished: {why}")
