"""Network namespaces without forking: unshare/setns on the calling thread.

`ip netns add` semantics (a bind mount under /run/netns, so `ip netns exec` works too),
done in-process through libc, which is what makes building a thousand nodes take
seconds. Netlink sockets opened while the thread is inside a namespace stay bound to
it, so one socket per namespace configures it with no helper process.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import resource
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from pyroute2 import IPRoute

T = TypeVar("T")

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def raise_fd_limit() -> None:
    """A big mesh holds one descriptor per namespace while it is built."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def ensure_netns_dir() -> None:
    """Make /run/netns a shared mount point, as iproute2 does, so mounts propagate."""
    os.makedirs(NETNS_DIR, exist_ok=True)
    target = NETNS_DIR.encode()
    if _libc.mount(b"none", target, None, MS_SHARED | MS_REC, None) == 0:
        return
    _check(_libc.mount(target, target, b"none", MS_BIND | MS_REC, None), "bind /run/netns")
    _check(_libc.mount(b"none", target, None, MS_SHARED | MS_REC, None), "share /run/netns")


def path(name: str) -> str:
    """/run/netns/NAME; a name that would leave /run/netns is refused."""
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a namespace name")
    return f"{NETNS_DIR}/{name}"


class NetnsFactory:
    """Creates namespaces from the current thread and returns to where it started."""

    def __init__(self) -> None:
        ensure_netns_dir()
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.home)

    def __enter__(self) -> NetnsFactory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self, name: str, sysctls: dict[str, str] | None = None) -> int:
        """Create namespace `name`, apply sysctls inside it, return an fd to it."""
        p = path(name)
        fd = os.open(p, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)
        os.close(fd)
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare")
            try:
                _check(
                    _libc.mount(b"/proc/thread-self/ns/net", p.encode(), b"none", MS_BIND, None),
                    f"bind {p}",
                )
                for key, value in (sysctls or {}).items():
                    write_sysctl(key, value)
            finally:
                setns(self.home)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(p)
            raise
        return os.open(p, os.O_RDONLY | os.O_CLOEXEC)

    def create_many(
        self,
        specs: Sequence[tuple[str, dict[str, str] | None]],
        threads: int = 1,
        writer: SysctlWriter | None = None,
    ) -> dict[str, int]:
        """Create namespaces (name, sysctls) on `threads` threads, the calling one
        included; {name: fd}. A namespace belongs to the thread that unshares it, so the
        threads do not disturb each other, and most of the work is the kernel's, done
        outside the GIL. The sysctls are written by a SysctlWriter (`writer`, or one of
        this call's) while the next namespaces are made, and are all in place when this
        returns. On an error or an interrupt no thread starts another namespace; once
        all have stopped the fds are closed and the first error is raised (the caller
        tears down by name what was made)."""
        fds: dict[str, int] = {}
        todo = iter(specs)
        lock = threading.Lock()
        stop = threading.Event()
        errors: list[BaseException] = []
        own = writer is None
        sysctl_writer = SysctlWriter(stop) if writer is None else writer

        def work() -> None:
            while not stop.is_set():
                with lock:
                    item = next(todo, None)
                if item is None:
                    return
                try:
                    fd = self.create(item[0])
                except BaseException as exc:  # handed to the calling thread
                    errors.append(exc)
                    stop.set()
                    return
                with lock:
                    fds[item[0]] = fd
                if item[1]:
                    sysctl_writer.submit(fd, item[1])

        helpers = [
            threading.Thread(target=work, name="meshstress-netns", daemon=True)
            for _ in range(max(1, threads) - 1)
        ]
        for t in helpers:
            t.start()
        ok = False
        try:
            work()
            ok = True
        finally:
            stop.set()
            for t in helpers:
                t.join()
            try:
                if own:
                    sysctl_writer.finish()  # every submitted fd written (or failed)
            except BaseException as exc:
                errors.append(exc)
            if not ok or errors:
                for fd in fds.values():
                    with contextlib.suppress(OSError):
                        os.close(fd)
        if errors:
            raise errors[0]
        return fds

    @contextlib.contextmanager
    def inside(self, fd: int) -> Iterator[None]:
        setns(fd)
        try:
            yield
        finally:
            setns(self.home)

    def netlink(self, fd: int) -> IPRoute:
        """An rtnetlink socket bound to the namespace `fd`, without a helper process."""
        from pyroute2 import IPRoute

        with self.inside(fd):
            return IPRoute(groups=0)


def write_sysctl(key: str, value: str) -> None:
    """Write net.* sysctls of the namespace the calling thread is in (os.open and
    os.write: a Python file object costs several more system calls per write)."""
    fd = os.open("/proc/sys/" + key.replace(".", "/"), os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


# A fresh procfs instance of the writer's every this many namespaces: its dentry chains
# (see SysctlWriter) grow with the namespaces written through it, a mount and unmount
# costs about 0.15 ms.
PROC_REMOUNT_EVERY = 64
MS_REC = 16384
MS_PRIVATE = 1 << 18


class SysctlWriter:
    """Writes the net.* sysctls of namespaces from a thread of its own, through a procfs
    instance that thread mounts on /proc in a mount namespace of its own.

    Why: a path under /proc/sys/net is looked up in the dcache of the proc mount, where
    every namespace that ever looked up the same name has its own dentry under the same
    parent, and the lookup compares them one by one (proc_sys_compare). So through the
    host's /proc a write costs in proportion to the namespaces alive on the host
    (measured: 0.07 ms for seven writes with none, 2.3 ms with 3000; a 4096-node build
    spent half its time there). A procfs instance has dentries of its own; remounted
    every PROC_REMOUNT_EVERY namespaces, its chains stay short: 0.08 ms for the seven
    writes with 3000 namespaces alive.

    The thread's mount namespace is its own (unshare, then / made private, so nothing it
    mounts reaches the host's) and ends with the thread. Where procfs cannot be mounted
    (a container that refuses it), the writes go through the shared /proc instead
    (`private` is False). submit() hands over a namespace fd, which the caller keeps
    open until finish() has returned; finish() waits for every write and raises the
    first error. A write that fails sets `stop` (shared with create_many's threads)."""

    def __init__(self, stop: threading.Event | None = None, remount_every: int = 0) -> None:
        self.stop = stop if stop is not None else threading.Event()
        self.remount_every = remount_every or PROC_REMOUNT_EVERY
        self.private: bool | None = None  # known once the thread has started
        self.written = 0  # namespaces whose sysctls are all written
        self.mounts = 0  # procfs instances mounted
        self._queue: queue.SimpleQueue[tuple[int, dict[str, str]] | None] = queue.SimpleQueue()
        self._errors: list[BaseException] = []
        self._thread: threading.Thread | None = None

    def submit(self, fd: int, sysctls: dict[str, str]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="meshstress-sysctl", daemon=True)
            self._thread.start()
        self._queue.put((fd, dict(sysctls)))

    def finish(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._errors:
            raise self._errors[0]

    def _mount(self) -> None:
        _check(_libc.mount(b"proc", b"/proc", b"proc", 0, None), "mount a procfs")
        self.mounts += 1

    def _setup(self) -> bool:
        """This thread's own mount namespace and procfs; False where that is refused."""
        if _libc.unshare(CLONE_NEWNS) != 0:
            return False
        if _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            return False  # unshared but not private: mount nothing here
        try:
            self._mount()
        except OSError:
            return False
        return True

    def _remount(self) -> bool:
        """A fresh procfs on /proc; False (the host's procfs shows again) on failure."""
        if _libc.umount2(b"/proc", MNT_DETACH) != 0:
            return False
        try:
            self._mount()
        except OSError:
            return False
        return True

    def _run(self) -> None:
        try:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException as exc:  # handed to finish()
            self._errors.append(exc)
            self.stop.set()
            home = -1
        try:
            if home >= 0:
                self.private = self._setup()
            since_mount = 0
            while (item := self._queue.get()) is not None:
                if self._errors:
                    continue  # drain the queue: finish() waits for its end
                fd, sysctls = item
                try:
                    if self.private and since_mount >= self.remount_every:
                        self.private = self._remount()
                        since_mount = 0
                    setns(fd)
                    try:
                        for key, value in sysctls.items():
                            write_sysctl(key, value)
                    finally:
                        setns(home)
                    since_mount += 1
                    self.written += 1
                except BaseException as exc:  # handed to finish()
                    self._errors.append(exc)
                    self.stop.set()
        finally:
            if home >= 0:
                os.close(home)


def delete(name: str) -> bool:
    """Unmount and remove /run/netns/NAME; the kernel frees it once nothing holds it."""
    p = path(name)
    if _libc.umount2(p.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount {p}: {os.strerror(err)}")
    try:
        os.unlink(p)
    except FileNotFoundError:
        return False
    return True


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def list_names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def enter_for_exec(name: str) -> None:
    """Join the namespace for good, just before this process execs (`meshstress exec`).
    Not for a preexec_fn: Python code in a forked child can deadlock in a threaded
    process; spawn children under `entered` instead."""
    fd = os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """The calling thread inside namespace `name` for the block, then back where it was.

    A network namespace belongs to a thread, and a child inherits the one of the thread
    that forks it: a subprocess started in the block (without preexec_fn) runs inside,
    with no Python code between fork and exec (safe while other threads run, and no
    helper process: its PID is the daemon's). Other threads are not affected."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd = os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd)
        finally:
            os.close(fd)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


def in_new_thread(fn: Callable[[], T]) -> T:
    """fn() in a throwaway thread, its result or its exception here: for namespace
    changes a thread cannot undo (unshare of the mount namespace), which end with it."""
    out: list[T] = []
    err: list[BaseException] = []

    def body() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # handed to the caller
            err.append(exc)

    t = threading.Thread(target=body, name="meshstress-spawn", daemon=True)
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]
