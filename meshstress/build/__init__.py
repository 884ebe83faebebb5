"""Apply a Plan to the kernel through netlink, and tear a run down again.

Everything here has side effects; what to make is decided in meshstress.build.plan.
The state file is written before the first object exists, so an interrupted build
is undone by `down`/`clean` like a finished one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

import psutil

from meshstress.build import impair, netns, rtnl
from meshstress.build.plan import OBJECT_RE, Plan, run_prefix
from meshstress.build.state import ProcessRecord, RunState, removable
from meshstress.errors import Interrupted, MeshstressError
from meshstress.model.topology import Impairment

if TYPE_CHECKING:
    from pyroute2 import IPRoute
    from pyroute2.ethtool.ioctl import IoctlEthtool

    from meshstress.traffic import PingResult

HUB_SYSCTLS = {"net.ipv6.conf.default.disable_ipv6": "1", "net.ipv6.conf.all.disable_ipv6": "1"}

# Every veth end is created with gso_max_segs 1, so that each skb a qdisc sees is one
# wire packet, and netem's loss, delay and counters act per packet. Turning the
# segmentation offloads off is not enough: since Linux 4.13 TCP builds GSO skbs of up to
# 64 KB whatever the device's features say ("tcp: switch to GSO being always on"), and
# they are cut into packets only after the qdisc (validate_xmit_skb). A forwarding node
# passes such a super-packet on as it is, so a lossy link in the middle of a path saw it
# too. The cap is read into each TCP socket (sk_gso_max_segs) when it connects, so it
# must be in place before any traffic: it is set when the link is made. Measured on the
# host (tracepoint net:net_dev_queue, 400 kB of TCP over a veth with tso, gso and gro
# off): 37 skbs reached the qdisc, 16 of them larger than a frame (up to 65,226 bytes);
# with gso_max_segs 1: 382, none larger than 1514 bytes. More in docs/topology.md.
ONE_PACKET_PER_SKB: dict[str, int] = {"gso_max_segs": 1}

# Every veth end gets one tx and one rx queue, which is what veth keeps anyway: without
# the attributes the kernel allocates one queue per possible CPU, registers a sysfs
# object for each, then cuts the real number down to one (veth_init_queues). Creating
# and deleting those objects was 18% of the veth phase of a 4096-node build on our
# 2-CPU host (docs/performance.md), and grows with the CPUs a host may have.
VETH_QUEUES = 1


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(f"terminated by signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def apply(
    plan: Plan,
    state: RunState,
    progress: Callable[[str], None] | None = None,
    phases: dict[str, float] | None = None,
) -> None:
    """Create every namespace, bridge, veth, address and route of the plan; the wall
    seconds of each phase go into `phases` ("namespaces", "veths", "addresses"), when
    given.

    On any error or interrupt the caller tears down using `state`, which already
    lists every namespace before the first one is made.

    Netlink requests are built as bytes (meshstress.build.rtnl) and sent in batches:
    every veth pair from one socket in the host namespace, created directly inside its
    two namespaces with the ifindex the plan gives it (Plan.ifindexes); then one buffer
    per namespace with its links up, addresses and routes, which needs no dump of what
    is there. Impairments (qdiscs, offloads) still go through pyroute2, only where a
    link is impaired."""
    said = progress or (lambda msg: None)
    timing: list[tuple[str, float]] = []

    def say(msg: str, phase: str = "") -> None:
        if phase:
            timing.append((phase, time.monotonic()))
        said(msg)

    state.namespaces = [ns.name for ns in plan.namespaces]
    state.host_links = [plan.witness] if plan.witness else []
    state.node_ns = dict(plan.node_ns)
    state.node_addresses = dict(plan.node_addresses)
    state.interfaces = {
        node: [{"ifname": i.ifname, "peer": i.peer_node, "segment": i.segment} for i in ends]
        for node, ends in plan.interfaces_by_node().items()
    }
    state.save()
    netns.raise_fd_limit()
    index = plan.ifindexes()
    alias = mark(state.run_id, state.owner_pid, state.created)
    fds: dict[str, int] = {}
    with netns.NetnsFactory() as factory:
        try:
            say(f"namespaces: {len(plan.namespaces)}", "namespaces")
            specs = [
                (spec.name, plan.sysctls if spec.node is not None else HUB_SYSCTLS)
                for spec in plan.namespaces
            ]
            fds.update(factory.create_many(specs, threads=NETNS_THREADS))

            for br in plan.bridges:
                batch = rtnl.Batch()
                batch.add(rtnl.bridge_msg(br.ifname, index[(br.ns, br.ifname)], batch.seq()),
                          f"bridge {br.ifname} in {br.ns}")  # fmt: skip
                batch.add(rtnl.link_set_msg(LO_INDEX, batch.seq(), up=True, alias=alias),
                          f"lo up in {br.ns}")  # fmt: skip
                _send_inside(factory, fds[br.ns], batch)

            say(f"veth pairs: {len(plan.veths)}", "veths")
            # Each pair is requested from a socket inside the namespace of its end `a`:
            # older kernels (Debian 12's 6.1 in the lab) look the request's ifindex up in
            # the socket's own namespace (__rtnl_newlink), so from the host's, where
            # ifindex 2 is a real NIC (or an earlier run's witness), it came back EEXIST.
            by_ns: dict[str, rtnl.Batch] = {}
            for v in plan.veths:
                batch = by_ns.setdefault(v.a.ns, rtnl.Batch())
                # One packet per skb on every end (see ONE_PACKET_PER_SKB).
                a = rtnl.VethEnd(
                    v.a.ifname,
                    fds[v.a.ns],
                    index[(v.a.ns, v.a.ifname)],
                    ONE_PACKET_PER_SKB["gso_max_segs"],
                    v.mtu,
                    index[(v.a.ns, v.master_a)] if v.master_a else None,
                    VETH_QUEUES,
                )
                b = rtnl.VethEnd(
                    v.b.ifname,
                    fds[v.b.ns],
                    index[(v.b.ns, v.b.ifname)],
                    ONE_PACKET_PER_SKB["gso_max_segs"],
                    v.mtu,
                    queues=VETH_QUEUES,
                )
                batch.add(rtnl.veth_msg(a, b, batch.seq()), f"veth {v.a.ifname} in {v.a.ns}")
            for ns, batch in by_ns.items():
                _send_inside(factory, fds[ns], batch)
            if plan.witness:
                batch = rtnl.Batch()
                batch.add(
                    rtnl.veth_msg(
                        rtnl.VethEnd(plan.witness, factory.home),
                        rtnl.VethEnd(plan.witness + "p", fds[plan.witness_ns]),
                        batch.seq(),
                        up=False,
                    ),
                    f"witness veth {plan.witness}",
                )
                batch.add(
                    rtnl.link_set_msg(0, batch.seq(), alias=alias, ifname=plan.witness),
                    f"alias of {plan.witness}",
                )
                with contextlib.closing(rtnl.open_socket()) as root:
                    batch.send(root)

            say("addresses, routes and impairments", "addresses")
            per_ns: dict[str, rtnl.Batch] = {}
            for spec in plan.namespaces:
                if spec.node is not None:
                    batch = per_ns[spec.name] = rtnl.Batch()
                    batch.add(
                        rtnl.link_set_msg(LO_INDEX, batch.seq(), up=True, alias=alias),
                        f"lo up in {spec.name}",
                    )
            for v in plan.veths:
                if v.b.ns in per_ns:
                    b_batch = per_ns[v.b.ns]
                    b_batch.add(
                        rtnl.link_set_msg(index[(v.b.ns, v.b.ifname)], b_batch.seq(), up=True),
                        f"{v.b.ifname} up in {v.b.ns}",
                    )
            for ad in plan.addresses:
                batch = per_ns[ad.ns]
                ip, plen = ad.address.split("/")
                batch.add(
                    rtnl.addr_msg(index[(ad.ns, ad.ifname)], ip, int(plen), batch.seq()),
                    f"address {ad.address} on {ad.ifname} in {ad.ns}",
                )
            for r in plan.routes:
                batch = per_ns[r.ns]
                batch.add(
                    rtnl.route_msg(r.dst, index[(r.ns, r.ifname)], batch.seq(), r.gateway),
                    f"route {r.dst} via {r.ifname} in {r.ns}",
                )
            impaired: dict[str, list[tuple[str, Impairment]]] = {}
            for end in plan.impaired():
                impaired.setdefault(end.ns, []).append((end.ifname, end.egress))
            mtus = {end.ifname: v.mtu or 1500 for v in plan.veths for end in (v.a, v.b)}
            for ns, batch in per_ns.items():
                _send_inside(factory, fds[ns], batch)
                if impaired.get(ns):
                    _impair(factory, fds[ns], impaired[ns], index, ns, mtus)
        finally:
            for fd in fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
    if phases is not None:
        timing.append(("", time.monotonic()))
        for (name, t), (_, t2) in zip(timing, timing[1:], strict=False):
            phases[name] = round(t2 - t, 3)
    state.status = "up"
    state.save()


LO_INDEX = 1  # the loopback of a new namespace
# Threads that create namespaces at once. Two on this 2-core host were no faster (the
# kernel's share of the work grew; docs/performance.md), so one, until a host shows gain.
NETNS_THREADS = 1


def _send_inside(factory: netns.NetnsFactory, fd: int, batch: rtnl.Batch) -> None:
    """Send a batch from a socket opened inside namespace `fd` (it stays bound there)."""
    with factory.inside(fd):
        sock = rtnl.open_socket()
    with contextlib.closing(sock):
        batch.send(sock)


def _impair(
    factory: netns.NetnsFactory,
    fd: int,
    ends: list[tuple[str, Impairment]],
    index: dict[tuple[str, str], int],
    ns: str,
    mtus: dict[str, int],
) -> None:
    """Offloads off and the qdisc chain on each impaired interface of one namespace."""
    from pyroute2.ethtool.ioctl import IoctlEthtool

    s = factory.netlink(fd)
    try:
        with factory.inside(fd):
            ethtool = IoctlEthtool()
        try:
            for ifname, egress in ends:
                impair.disable_offloads(ethtool, ifname)
                impair.apply(s, index[(ns, ifname)], egress, mtus[ifname])
        finally:
            ethtool.close()
    finally:
        s.close()


# --- teardown ------------------------------------------------------------------


def stop_processes(
    records: Sequence[ProcessRecord], timeout: float = 3.0, kill: bool = False
) -> list[int]:
    """Stop recorded processes (and their children) by PID; never by name: SIGTERM,
    then SIGKILL for what is left after `timeout` (`kill`: SIGKILL at once, a crash).

    A PID is only ours if its create time matches the record, so a recycled PID is
    left alone. Returns the PIDs that were signalled."""
    procs: list[psutil.Process] = []
    for rec in records:
        try:
            p = psutil.Process(rec.pid)
            if abs(p.create_time() - rec.create_time) > 0.05:
                continue
            procs.extend(p.children(recursive=True))
            procs.append(p)
        except psutil.NoSuchProcess:
            continue
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill() if kill else p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=timeout)
    return [p.pid for p in procs]


def wait_host_links_gone(names: Sequence[str], timeout: float) -> list[str]:
    """Poll the host namespace until none of `names` exists; return those left."""
    from pyroute2 import IPRoute

    deadline = time.monotonic() + timeout
    with IPRoute(groups=0) as ipr:
        while True:
            present = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            left = [n for n in names if n in present]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.005)


def delete_host_links(names: Sequence[str]) -> None:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute(groups=0) as ipr:
        for name in names:
            for index in ipr.link_lookup(ifname=name):
                with contextlib.suppress(NetlinkError):
                    ipr.link("del", index=index)


def teardown(state: RunState, wait: bool = True, timeout: float = 60.0) -> list[str]:
    """Undo a run: processes, namespaces, host links, files, then the state file.

    With `wait`, returns only when the kernel has destroyed the run's namespaces and
    their links (the witness veth in the host namespace is gone). Returns problems."""
    # Only what carries the run's prefix and lies where meshstress puts it (state.removable).
    namespaces, host_links, files, problems = removable(state)
    # Open netlink sockets hold their namespace alive: close this process's own first.
    for mesh in list(_LIVE_MESHES):
        if mesh.state.run_id == state.run_id:
            mesh.close()
    state.status = "tearing-down"
    with contextlib.suppress(OSError):
        state.save()
    stop_processes(state.processes)
    for name in namespaces:
        try:
            netns.delete(name)
        except OSError as exc:
            problems.append(f"namespace {name}: {exc}")
    if wait and host_links:
        left = wait_host_links_gone(host_links, timeout)
        if left:
            problems.append(
                f"the kernel had not destroyed the run's namespaces after {timeout:.0f}s "
                f"(still present: {', '.join(left)}); a process may still hold one"
            )
    delete_host_links(host_links)
    for path in files:
        shutil.rmtree(path, ignore_errors=True)  # fd-based: follows no symlink inside
    state.remove()
    return problems


def mark(run_id: str, owner_pid: int | None = None, created: float | None = None) -> str:
    """The interface alias that says meshstress made an object of run `run_id`: set on
    the loopback of each namespace of the run and on its witness link in the host. It
    names the run's owner (PID and the run's creation time), so that `sweep` can tell a
    live run from a leftover without its state file (another MESHSTRESS_STATE_DIR)."""
    base = f"{MARK_PREFIX}{run_id}"
    if owner_pid is None:
        return base
    return f"{base}:{owner_pid}:{created or 0.0:.3f}"


def read_mark(alias: str | None, run_id: str) -> tuple[bool, int | None, float | None]:
    """(whether `alias` is run_id's mark, its owner PID, the run's creation time); marks
    without an owner (made before owners were marked) give (True, None, None)."""
    base = f"{MARK_PREFIX}{run_id}"
    if alias == base:
        return True, None, None
    if alias is None or not alias.startswith(base + ":"):
        return False, None, None
    pid, _, created = alias[len(base) + 1 :].partition(":")
    try:
        return True, int(pid), float(created)
    except ValueError:
        return False, None, None


MARK_PREFIX = "meshstress:"


def _namespace_mark(name: str) -> str | None:
    """The alias of the loopback inside namespace `name`, or None."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        fd = os.open(netns.path(name), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with netns.NetnsFactory() as factory:
            with factory.netlink(fd) as sock:
                for link in sock.get_links():
                    if link.get_attr("IFLA_IFNAME") == "lo":
                        alias = link.get_attr("IFLA_IFALIAS")
                        return str(alias) if alias is not None else None
    except (OSError, NetlinkError):
        return None
    finally:
        os.close(fd)
    return None


def sweep(
    run_ids: Sequence[str] | None, keep: Sequence[str] = ()
) -> tuple[list[str], list[str], list[str]]:
    """Remove what meshstress made and no state file lists: namespaces and host links
    whose names start with ms-RUN- (any run if `run_ids` is None) *and* that carry the
    run's mark (`mark`). A look-alike that someone else made keeps its life, and so do
    the runs in `keep` and every run whose mark names an owner that is still running
    (a run of another state directory, of a test or a benchmark in progress). Returns
    (removed, spared look-alikes, left because their owner is alive)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    from meshstress.build.state import process_alive_since

    removed: list[str] = []
    spared: list[str] = []
    live: list[str] = []

    def run_of(name: str) -> str | None:
        m = OBJECT_RE.match(name)
        if not m or (run_ids is not None and m.group(1) not in run_ids) or m.group(1) in keep:
            return None
        return m.group(1)

    def judge(name: str, run: str, alias: str | None) -> bool:
        ours, pid, created = read_mark(alias, run)
        if not ours:
            spared.append(name)
            return False
        if pid is not None and process_alive_since(pid, created or 0.0):
            live.append(name)
            return False
        return True

    for name in netns.list_names():
        run = run_of(name)
        if run is not None and judge(name, run, _namespace_mark(name)):
            netns.delete(name)
            removed.append(name)
    with IPRoute(groups=0) as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            run = run_of(name)
            if run is not None and judge(name, run, link.get_attr("IFLA_IFALIAS")):
                with contextlib.suppress(NetlinkError):
                    ipr.link("del", index=link["index"])
                removed.append(name)
    return removed, spared, live


# --- a live mesh ---------------------------------------------------------------

# Meshes of this process with sockets possibly open; teardown closes them first.
_LIVE_MESHES: weakref.WeakSet[Mesh] = weakref.WeakSet()


class Mesh:
    """A live run: namespaces by node name, netlink sockets and processes inside them."""

    def __init__(self, state: RunState) -> None:
        self.state = state
        self._factory: netns.NetnsFactory | None = None
        self._socks: dict[str, IPRoute] = {}
        self._ethtools: dict[str, IoctlEthtool] = {}
        self._rtnls: dict[str, socket.socket] = {}
        _LIVE_MESHES.add(self)

    @property
    def nodes(self) -> list[str]:
        return list(self.state.node_ns)

    @property
    def prefix(self) -> str:
        return run_prefix(self.state.run_id)

    def ns(self, node: str) -> str:
        try:
            return self.state.node_ns[node]
        except KeyError:
            raise MeshstressError(f"no node {node!r} in run {self.state.run_id}") from None

    def address(self, node: str) -> str:
        return self.state.node_addresses[node].split("/")[0]

    def netlink(self, node: str) -> IPRoute:
        """A cached rtnetlink socket inside the node's namespace."""
        if node not in self._socks:
            if self._factory is None:
                self._factory = netns.NetnsFactory()
            fd = os.open(netns.path(self.ns(node)), os.O_RDONLY)
            try:
                self._socks[node] = self._factory.netlink(fd)
            finally:
                os.close(fd)
        return self._socks[node]

    def rtnl(self, node: str) -> socket.socket:
        """A cached plain rtnetlink socket inside the node's namespace, for requests
        built as bytes (meshstress.build.rtnl)."""
        if node not in self._rtnls:
            with netns.entered(self.ns(node)):
                self._rtnls[node] = rtnl.open_socket()
        return self._rtnls[node]

    def ethtool(self, node: str) -> IoctlEthtool:
        """A cached ethtool ioctl socket inside the node's namespace."""
        if node not in self._ethtools:
            from pyroute2.ethtool.ioctl import IoctlEthtool

            if self._factory is None:
                self._factory = netns.NetnsFactory()
            fd = os.open(netns.path(self.ns(node)), os.O_RDONLY)
            try:
                with self._factory.inside(fd):
                    self._ethtools[node] = IoctlEthtool()
            finally:
                os.close(fd)
        return self._ethtools[node]

    def popen(self, node: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start argv inside the node's namespace: forked from this thread while it is
        inside (netns.entered), no preexec_fn, so safe while other threads run; the
        PID is the program's own."""
        with netns.entered(self.ns(node)):
            return subprocess.Popen(list(argv), **kwargs)

    def run(
        self, node: str, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """subprocess.run inside the node's namespace (this thread waits in there)."""
        with netns.entered(self.ns(node)):
            return subprocess.run(list(argv), **kwargs)

    def ping(
        self, src: str, dst: str, count: int = 3, interval: float = 0.2, wait: float = 1.0
    ) -> PingResult:
        """Ping node dst from node src: a traffic.PingResult (sent, received, loss, rtt, ttl)."""
        from meshstress.traffic import ping

        return ping(self, src, dst, count=count, interval=interval, wait=wait)

    def record_process(
        self,
        proc: subprocess.Popen[Any] | int,
        node: str | None,
        role: str,
        argv: Sequence[str] = (),
    ) -> ProcessRecord:
        pid = proc if isinstance(proc, int) else proc.pid
        rec = ProcessRecord(
            pid=pid,
            create_time=psutil.Process(pid).create_time(),
            node=node,
            role=role,
            argv=list(argv),
        )
        self.state.processes.append(rec)
        self.state.save()
        return rec

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()
        for e in self._ethtools.values():
            e.close()
        self._ethtools.clear()
        for r in self._rtnls.values():
            r.close()
        self._rtnls.clear()
        if self._factory is not None:
            self._factory.close()
            self._factory = None

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
