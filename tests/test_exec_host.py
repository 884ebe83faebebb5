"""Processes started inside node namespaces while other threads run (root), and qemu
dying with its parent.

A preexec_fn runs Python code in the forked child, which Python documents can deadlock
in a threaded process (a lock another thread held at fork time stays held in the child
for ever). Node restarts start daemons while the route recorder thread runs, so
children are forked from a thread that has entered the namespace, with no Python code
between fork and exec."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from meshstress import build
from meshstress.build import netns
from meshstress.model.topology import Link, Node, Topology
from meshstress.routing.base import node_dir as node_dir_of
from meshstress.routing.testing import missing_handler, routed_meshes


def ns_inode(pid: int | str) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def gone(pid: int, created: float) -> bool:
    try:
        return psutil.Process(pid).create_time() != created
    except psutil.NoSuchProcess:
        return True


class ChildPython:
    """Counts forked children that ran Python code before exec (at-fork hooks run in
    such a child; a library's hook needing a lock another thread holds hangs it)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self.active = True
        os.register_at_fork(after_in_child=self._hook)  # cannot be unregistered: `active`

    def _hook(self) -> None:
        if self.active:
            os.write(self.w, b"x")

    def count(self) -> int:
        try:
            return len(os.read(self.r, 65536))
        except BlockingIOError:
            return 0

    def close(self) -> None:
        self.active = False
        os.close(self.r)
        os.close(self.w)


@pytest.fixture
def child_python() -> Iterator[ChildPython]:
    c = ChildPython()
    try:
        yield c
    finally:
        c.close()


class Busy(threading.Thread):
    """Logs, allocates and holds a lock in a loop, and enters a namespace of its own
    now and then: children forked meanwhile by another thread must not follow it."""

    def __init__(self, ns_name: str) -> None:
        super().__init__(name="busy", daemon=True)
        self.ns_name = ns_name
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.rounds = 0
        self.wrong_ns: list[str] = []
        self.log = logging.getLogger("meshstress.test.busy")
        self.log.addHandler(logging.NullHandler())
        self.log.propagate = False
        self.log.setLevel(logging.DEBUG)

    def run(self) -> None:
        home = ns_inode("thread-self")
        target = os.stat(netns.path(self.ns_name)).st_ino
        fd = os.open(netns.path(self.ns_name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            with netns.NetnsFactory() as factory:
                while not self.halt.is_set():
                    with self.lock:
                        junk = [bytearray(256) for _ in range(50)]
                        self.log.debug("round %d, %d buffers", self.rounds, len(junk))
                    with factory.inside(fd):
                        if ns_inode("thread-self") != target:
                            self.wrong_ns.append(f"round {self.rounds}: not in {self.ns_name}")
                    if ns_inode("thread-self") != home:
                        self.wrong_ns.append(f"round {self.rounds}: not back home")
                    self.rounds += 1
        finally:
            os.close(fd)


@pytest.mark.network
def test_200_children_start_in_their_namespace_while_another_thread_runs(
    mesh_factory, child_python: ChildPython
) -> None:
    topo = Topology("line", [Node(f"n{i}") for i in range(3)], [Link("n0", "n1"), Link("n1", "n2")])
    mesh = mesh_factory(topo)
    inode = {node: os.stat(netns.path(mesh.ns(node))).st_ino for node in ("n0", "n1")}
    home = ns_inode("thread-self")
    assert home not in inode.values()
    busy = Busy(mesh.ns("n2"))
    busy.start()
    try:
        for i in range(200):
            node = ("n0", "n1")[i % 2]
            proc = mesh.popen(node, ["sleep", "60"], stdin=subprocess.DEVNULL)
            rec = mesh.record_process(proc, node, "test-sleep", ["sleep", "60"])
            # the recorded PID is the program's own (no helper process in between)
            assert os.readlink(f"/proc/{proc.pid}/exe").endswith("/sleep")
            assert rec.create_time == psutil.Process(proc.pid).create_time()
            assert ns_inode(proc.pid) == inode[node], f"spawn {i}: child in the wrong namespace"
            assert ns_inode("thread-self") == home, f"spawn {i}: this thread stayed inside"
            # stopped by its recorded PID (SIGTERM) and reaped: no zombie left
            assert build.stop_processes([rec]) == [proc.pid]
            assert gone(proc.pid, rec.create_time), f"spawn {i}: sleep {proc.pid} still there"
            out = mesh.run(node, ["readlink", "/proc/self/ns/net"], capture_output=True, text=True)
            assert out.returncode == 0 and out.stdout.strip() == f"net:[{inode[node]}]"
    finally:
        busy.halt.set()
        busy.join(timeout=10)
    assert busy.rounds > 0 and not busy.wrong_ns, busy.wrong_ns[:3]
    # no Python code ran in any of the 400 children between fork and exec
    assert child_python.count() == 0


@pytest.mark.network
def test_batmand_starts_in_the_node_namespace_with_a_private_run(
    child_python: ChildPython,
) -> None:
    host_mnt = os.stat("/proc/self/ns/mnt").st_ino
    host_run = sorted(os.listdir("/run"))
    topo = Topology("pair", [Node("n0"), Node("n1")], [Link("n0", "n1")])
    with routed_meshes(missing_handler(pytest.skip, pytest.fail)) as make:
        mesh, _, _ = make(topo, "batmand", {"orig_interval": "200ms"}, timeout=40)
        check_batmand(mesh, host_mnt)
    # nothing leaked to this process: its /run and namespaces are unchanged
    assert sorted(os.listdir("/run")) == host_run
    assert os.stat("/proc/self/ns/mnt").st_ino == host_mnt
    assert os.stat("/proc/thread-self/ns/mnt").st_ino == host_mnt
    assert child_python.count() == 0


def check_batmand(mesh: build.Mesh, host_mnt: int) -> None:
    recs = [r for r in mesh.state.processes if r.role == "batmand"]
    assert sorted(r.node for r in recs) == ["n0", "n1"]
    for rec in recs:
        assert rec.create_time == psutil.Process(rec.pid).create_time()
        assert os.readlink(f"/proc/{rec.pid}/exe").endswith("/batmand")
        assert ns_inode(rec.pid) == os.stat(netns.path(mesh.ns(rec.node))).st_ino
        assert os.stat(f"/proc/{rec.pid}/ns/mnt").st_ino != host_mnt
        # its /run is the node's directory: the socket it made is there
        node_dir = node_dir_of(mesh, rec.node)
        assert os.path.exists(f"/proc/{rec.pid}/root/run/batmand.log")
        assert sorted(os.listdir(f"/proc/{rec.pid}/root/run")) == sorted(os.listdir(node_dir))


OWNER = """
import sys, time
from meshstress.lab.runner import spawn_dying_with_parent
with open("/dev/null", "wb") as log:
    p = spawn_dying_with_parent(["sleep", "600"], log)
print(p.pid, flush=True)
time.sleep(600)
"""


def test_lab_qemu_spawn_dies_with_its_parent_and_runs_no_python_in_the_child(
    child_python: ChildPython,
) -> None:
    from meshstress.lab.runner import spawn_dying_with_parent

    with open(os.devnull, "wb") as log:
        p = spawn_dying_with_parent(["true"], log)
    assert p.wait(timeout=30) == 0
    assert child_python.count() == 0  # setpriv sets the parent-death signal, not Python
    # the owner (meshstress) is SIGKILLed: its child gets SIGKILL too
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        child = psutil.Process(pid)
        assert child.ppid() == owner.pid
        # setpriv execs sleep: the PID meshstress records is the program's own
        for _ in range(3000):  # a hang guard, 30 s
            if os.readlink(f"/proc/{pid}/exe").endswith("/sleep"):
                break
            time.sleep(0.01)
        assert os.readlink(f"/proc/{pid}/exe").endswith("/sleep")
        owner.kill()
        owner.wait()
        child.wait(timeout=30)  # a hang guard: without the signal it sleeps 600 s
    finally:
        owner.kill()
        owner.wait()
        if child is not None:  # psutil checks it is still the process it saw
            with contextlib.suppress(psutil.Error):
                child.kill()
