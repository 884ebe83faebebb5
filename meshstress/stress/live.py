"""Stress a live mesh from a test: context managers that change it and put it back.

    with mesh.link_down("n0", "n1") as cut:          # both ends drop every frame
        took = recovery_time(lambda: ask(client), since=cut["t"], timeout=30)
    with mesh.impair("n0", "n1", rate="1mbit"):      # tbf on both ends (loss/delay: netem)
        ...
    with mesh.crash("n2"):                           # daemons frozen+killed, frames dropped
        ...
    with mesh.partition([["n0", "n1"]]):             # the rest is the other group
        ...
    curve = mesh.sweep("rate", ["8mbit", "1mbit", "200kbit"], measure)  # a judge Curve

Every change goes through the mesh's events.EventRunner (the same code, and the same one
netlink buffer per namespace per moment, as a scenario's `[[events]]`); each context
manager undoes its own change on exit, also when the block raised (the block's exception
then propagates; a failure of the undo itself is added to it as a note). Nested blocks
undo in reverse order, and an inner block puts back what the outer one set: a link
taken down inside a partition that cuts it stays cut by the partition afterwards, an
impairment inside another returns to the outer one, a partition inside another returns
to the outer partition.

A cut is radio-like by default: the interfaces keep carrier and every frame through them
is dropped (`carrier="keep"`); `carrier="lose"` sets them down instead, as an unplugged
cable (docs/events.md).

`LiveMesh` is a build.Mesh (popen, run, ping, netlink...) that also knows its topology
and routing backend; the pytest plugin's `mesh_factory` returns one. It adds `process`
(a program of the user's inside a node, recorded by PID, stopped on exit), `socket` (a
socket inside a node's namespace, for a client in the test process), `path` (the route
src..dst now) and `wait_until`. `recovery_time(probe, ...)` measures how long until a
probe succeeds again. See docs/pytest.md.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket as socket_mod
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from meshstress import build
from meshstress.build import netns
from meshstress.errors import CapabilityError, InputError, MeshstressError
from meshstress.judge.curves import Curve
from meshstress.model import units
from meshstress.model.topology import Impairment
from meshstress.stress.events import CARRIER_KEEP, CARRIER_MODES, Event, EventRunner, link_key

if TYPE_CHECKING:
    from meshstress.build.state import RunState
    from meshstress.model.topology import Topology
    from meshstress.routing.base import Backend

Link = tuple[str, str]
DIRECTIONS = ("both", "a_to_b", "b_to_a")
# a sweep's axes: an impairment field on every chosen link, or how many of them are down
IMPAIR_AXES = ("loss", "delay", "jitter", "rate")
AXES = (*IMPAIR_AXES, "failed_links")
AXIS_UNITS = {"loss": "fraction", "delay": "seconds", "jitter": "seconds", "rate": "bit/s"}
USER_ROLE = "user"  # the role of processes started with LiveMesh.process


# --- pure helpers -----------------------------------------------------------------


def parse_value(axis: str, value: object, source: str = "mesh.impair") -> float:
    """An impairment value as SI: "5%" or 0.05 -> 0.05 (loss), "20ms" or 0.02 -> 0.02 s
    (delay, jitter), "1mbit" or 1e6 -> 1000000 bit/s (rate). InputError naming the field."""
    if axis not in IMPAIR_AXES:
        raise InputError(source, axis, f"unknown setting (one of {', '.join(IMPAIR_AXES)})")
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            x = float(value)
            if not math.isfinite(x) or x < 0:
                raise ValueError(f"{value!r} must be a finite number >= 0")
            if axis == "loss" and x > 1:
                raise ValueError(f"{value!r} is above 1 (a fraction: 0.05 is 5%)")
            if axis == "rate":
                if round(x) < 1:
                    raise ValueError(f"rate {value!r} must be at least 1 bit/s")
                return float(round(x))
            return x
        if axis == "loss":
            return units.parse_fraction(value)
        if axis == "rate":
            return float(units.parse_rate(value))
        return units.parse_duration(value)
    except ValueError as exc:
        raise InputError(source, axis, str(exc)) from None


def with_values(imp: Impairment, values: Mapping[str, float]) -> Impairment:
    """`imp` with the given SI fields replaced (loss also drops a burst model)."""
    changes: dict[str, Any] = {}
    for key, x in values.items():
        if key == "rate":
            changes["rate"] = int(x)
        else:
            changes[key] = float(x)
        if key == "loss":
            changes.update(loss_burst=None, gemodel=None)
    return replace(imp, **changes)


def measured(value: object, step: object) -> tuple[float, tuple[int, int] | None]:
    """A measure function's answer: a number, or (k, n) for a ratio k/n."""
    if isinstance(value, tuple | list) and len(value) == 2:
        k, n = value
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (k, n)):
            raise ValueError(f"measure({step!r}) returned {value!r}: a pair must be (k, n) ints")
        if n < 1 or not 0 <= k <= n:
            raise ValueError(f"measure({step!r}) returned {value!r}: want 0 <= k <= n, n >= 1")
        return k / n, (k, n)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(float(value)):
            raise ValueError(f"measure({step!r}) returned {value!r}, not a finite number")
        return float(value), None
    raise ValueError(f"measure({step!r}) returned {value!r}: want a number or a (k, n) pair")


def recovery_time(
    probe: Callable[[], object],
    timeout: float = 30.0,
    since: float | None = None,
    interval: float = 0.05,
) -> float:
    """Seconds from `since` (a time.monotonic(); default: now) until probe() first
    returns something true; math.inf if it has not by `timeout` seconds after the call.
    A probe that raises OSError (a socket timeout, an unreachable network) has failed."""
    start = time.monotonic() if since is None else since
    deadline = time.monotonic() + timeout
    while True:
        try:
            ok = bool(probe())
        except OSError:
            ok = False
        if ok:
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            return math.inf
        time.sleep(interval)


@contextlib.contextmanager
def _undoing(undo: Callable[[], object]) -> Iterator[None]:
    """Run undo() when the block ends, however it ends; the block's exception wins."""
    try:
        yield
    except BaseException as exc:
        try:
            undo()
        except Exception as failed:
            exc.add_note(f"meshstress: putting the mesh back failed too: {failed}")
        raise
    undo()


# --- the live mesh ------------------------------------------------------------------


class LiveMesh(build.Mesh):
    """A built mesh with its topology and routing backend: the stress context managers,
    `sweep`, and helpers for the user's own programs (see the module docstring)."""

    def __init__(self, state: RunState, topo: Topology, backend: Backend) -> None:
        super().__init__(state)
        self.topo = topo
        self.backend = backend
        self.events = EventRunner(self, backend, topo)
        self.records: list[dict[str, Any]] = []  # every event applied, in order
        self._t0 = time.monotonic()
        self._prepared = False
        # the impairment in force per direction (src, dst): the topology's to begin with
        self._imp: dict[Link, Impairment] = {}
        for link in topo.links:
            self._imp[(link.a, link.b)] = link.ab
            self._imp[(link.a, link.b)[::-1]] = link.ba
        self._links = {link_key(link.a, link.b) for link in topo.links}

    # --- events -------------------------------------------------------------------

    def _apply(self, action: str, **kw: Any) -> dict[str, Any]:
        if not self._prepared:
            # learn every node's interfaces and neighbour routes while all is up (a link
            # coming back gets its neighbour routes back from what was learnt here)
            # (as "lose" cuts: learning attaches no drop filter; each event's own
            # prepare below attaches the filters it needs)
            every = [Event(0.0, "link-down", link=(lk.a, lk.b), carrier="lose")
                     for lk in self.topo.links]  # fmt: skip
            self.events.prepare(every)
            self._prepared = True
        ev = Event(round(time.monotonic() - self._t0, 6), action, **kw)
        if action in ("node-crash", "link-down", "partition"):
            # its drop filters, or (carrier "lose") its interfaces in one device group
            self.events.prepare([ev])
        record = self.events.apply(ev)
        self.records.append(record)
        return record

    def _node(self, node: object, source: str, field: str) -> str:
        if not isinstance(node, str) or node not in self.state.node_ns:
            raise InputError(source, field, f"unknown node {node!r}")
        return node

    def close(self) -> None:
        self.events.close()
        super().close()

    @staticmethod
    def _carrier(carrier: object, source: str) -> str:
        if not isinstance(carrier, str) or carrier not in CARRIER_MODES:
            choices = ", ".join(CARRIER_MODES)
            raise InputError(source, "carrier", f"must be one of {choices}, got {carrier!r}")
        return carrier

    def _link(self, a: object, b: object, source: str, field: str = "link") -> Link:
        na = self._node(a, source, f"{field}[0]")
        nb = self._node(b, source, f"{field}[1]")
        if link_key(na, nb) not in self._links:
            raise InputError(source, field, f"no link {na}-{nb} in the topology")
        return na, nb

    @contextlib.contextmanager
    def link_down(
        self, a: str, b: str, carrier: str = CARRIER_KEEP
    ) -> Iterator[dict[str, Any]]:
        """Link a-b down (both ends) for the block; yields the event record ("t": the
        time.monotonic() when the cut began). A link already down stays as it is.
        `carrier`: "keep" (radio-like: frames dropped, carrier kept) or "lose" (the
        interfaces set down)."""
        a, b = self._link(a, b, "mesh.link_down")
        carrier = self._carrier(carrier, "mesh.link_down")
        key = link_key(a, b)
        if key in self.events.downed:
            yield {"action": "link-down", "target": f"{a}-{b}", "t": time.monotonic()}
            return
        groups = self.events.groups if key in self.events.cut else None
        record = self._apply("link-down", link=(a, b), carrier=carrier)

        def undo() -> None:
            if groups is not None and self.events.groups == groups:
                # the partition that cut it is still in force: it stays down, cut again
                self.events.recut(a, b)
            else:
                self._apply("link-up", link=(a, b))

        with _undoing(undo):
            yield record

    @contextlib.contextmanager
    def crash(self, node: str, carrier: str = CARRIER_KEEP) -> Iterator[dict[str, Any]]:
        """Crash `node` for the block as the node-crash event does (routing daemons
        frozen then killed, every frame of its mesh interfaces dropped, or with
        carrier="lose" every mesh interface down); restart it on exit (frames pass or
        interfaces up, daemons started again). A node already crashed stays as it is."""
        node = self._node(node, "mesh.crash", "node")
        carrier = self._carrier(carrier, "mesh.crash")
        if node in self.events.crashed:
            yield {"action": "node-crash", "target": node, "t": time.monotonic()}
            return
        record = self._apply("node-crash", node=node, carrier=carrier)
        with _undoing(lambda: self._apply("node-restart", node=node)):
            yield record

    @contextlib.contextmanager
    def partition(
        self, groups: Sequence[Sequence[str]], carrier: str = CARRIER_KEEP
    ) -> Iterator[dict[str, Any]]:
        """Cut every link between the groups for the block (nodes in no group form one
        more group); on exit heal, or put back the partition that was in force.
        `carrier` as for link_down."""
        full = self._groups(groups)
        carrier = self._carrier(carrier, "mesh.partition")
        before = self.events.groups
        before_carrier = self.events.cut_carrier
        record = self._apply("partition", groups=full, carrier=carrier)

        def undo() -> None:
            if before is None:
                self._apply("heal")
            else:
                self._apply("partition", groups=before, carrier=before_carrier)

        with _undoing(undo):
            yield record

    def _groups(self, groups: object) -> tuple[tuple[str, ...], ...]:
        source = "mesh.partition"
        if isinstance(groups, str) or not isinstance(groups, Sequence) or not groups:
            raise InputError(source, "groups", 'expected groups of nodes, like [["n0", "n1"]]')
        seen: set[str] = set()
        out: list[tuple[str, ...]] = []
        for j, group in enumerate(groups):
            if isinstance(group, str) or not isinstance(group, Sequence) or not group:
                raise InputError(source, f"groups[{j}]", "expected a non-empty list of nodes")
            for k, node in enumerate(group):
                self._node(node, source, f"groups[{j}][{k}]")
                if node in seen:
                    raise InputError(source, f"groups[{j}][{k}]", f"{node} is in two groups")
                seen.add(node)
            out.append(tuple(group))
        rest = tuple(n for n in self.topo.node_names() if n not in seen)
        if rest:
            out.append(rest)
        if len(out) < 2:
            raise InputError(source, "groups", "a partition needs two groups at least")
        group_of = {n: j for j, g in enumerate(out) for n in g}
        for seg in self.topo.segments:
            if len({group_of[m] for m in seg.members}) > 1:
                raise InputError(source, "groups", f"shared segment {seg.name} spans groups")
        return tuple(out)

    @contextlib.contextmanager
    def impair(
        self,
        a: str,
        b: str,
        *,
        loss: object = None,
        delay: object = None,
        jitter: object = None,
        rate: object = None,
        direction: str = "both",
    ) -> Iterator[dict[str, Any]]:
        """Change link a-b's impairment for the block: the given settings replace those
        in force (the others stay), in direction "both", "a_to_b" or "b_to_a". Values are
        "5%", "20ms", "1mbit" or SI numbers (0.05, 0.02 s, 1e6 bit/s). Rate is a tbf;
        loss, delay and jitter need netem (CapabilityError naming it where the kernel has
        none: run the test in the VM lab, `@pytest.mark.kernel("netem")`). On exit the
        link's previous impairment is back."""
        a, b = self._link(a, b, "mesh.impair")
        given = {k: v for k, v in (("loss", loss), ("delay", delay), ("jitter", jitter),
                                   ("rate", rate)) if v is not None}  # fmt: skip
        values = {k: parse_value(k, v) for k, v in given.items()}
        if direction not in DIRECTIONS:
            raise InputError("mesh.impair", "direction", f"one of {', '.join(DIRECTIONS)}")
        if not values:
            raise InputError("mesh.impair", "loss", "give loss, delay, jitter or rate")
        ways = {"both": [(a, b), (b, a)], "a_to_b": [(a, b)], "b_to_a": [(b, a)]}[direction]
        old = {w: self._imp[w] for w in ways}
        new = {w: with_values(old[w], values) for w in ways}
        self._check_qdiscs(new.values())
        record = self._set_impairments(a, b, new)

        def undo() -> None:
            self._set_impairments(a, b, old)

        with _undoing(undo):
            yield record

    def _set_impairments(self, a: str, b: str, imps: Mapping[Link, Impairment]) -> dict[str, Any]:
        record = self._apply("impair", link=(a, b), ab=imps.get((a, b)), ba=imps.get((b, a)))
        self._imp.update(imps)
        return record

    def _check_qdiscs(self, imps: Any) -> None:
        from meshstress.build import impair
        from meshstress.doctor import missing_qdiscs

        needed: set[str] = set().union(*(impair.needs(i) for i in imps))
        lacking = missing_qdiscs(needed)
        if lacking:
            raise CapabilityError(
                f"mesh.impair: this kernel has no {', '.join('sch_' + k for k in lacking)} "
                f"({', '.join(lacking)} is needed for loss, delay and jitter; rate alone "
                'uses tbf): mark the test @pytest.mark.kernel("netem") to run it in the VM lab'
            )

    def impairment(self, a: str, b: str) -> Impairment:
        """The impairment in force on direction a->b."""
        a, b = self._link(a, b, "mesh.impairment")
        return self._imp[(a, b)]

    # --- sweeps -------------------------------------------------------------------

    def sweep(
        self,
        axis: str,
        steps: Sequence[object],
        measure: Callable[[Any], object],
        links: Sequence[Link] | None = None,
        *,
        metric: str = "measure",
        better: str = "higher",
        settle: float = 0.0,
    ) -> Curve:
        """For each step: set that stress on `links` (all the topology's links by
        default), wait `settle` seconds, call measure(step), put the links back. Returns
        a judge.curves.Curve of the measured values over the steps, with counts when
        measure returns (k, n) pairs (then the checks use Clopper-Pearson intervals).

        axis: loss, delay, jitter or rate (steps as "5%", "20ms", "1mbit" or SI numbers;
        set on both directions, other settings of each link kept), or failed_links (steps
        are counts k: the first k of `links` down). A rate sweep's steps fall (less is
        harsher); all others rise."""
        if axis not in AXES:
            raise InputError("mesh.sweep", "axis", f"one of {', '.join(AXES)}, got {axis!r}")
        if isinstance(steps, str) or not steps:
            raise InputError("mesh.sweep", "steps", "expected a non-empty list of steps")
        chosen = self._sweep_links(links)
        stress = [self._step_value(axis, s, i, len(chosen)) for i, s in enumerate(steps)]
        values: list[float] = []
        counts: list[tuple[int, int] | None] = []
        for step, x in zip(steps, stress, strict=True):
            with contextlib.ExitStack() as stack:
                if axis == "failed_links":
                    for a, b in chosen[: int(x)]:
                        stack.enter_context(self.link_down(a, b))
                else:
                    setting: dict[str, Any] = {axis: x}
                    for a, b in chosen:
                        stack.enter_context(self.impair(a, b, **setting))
                if settle > 0:
                    time.sleep(settle)
                value, count = measured(measure(step), step)
            values.append(value)
            counts.append(count)
        if any(c is not None for c in counts) and not all(c is not None for c in counts):
            raise ValueError("measure returned (k, n) at some steps and a number at others")
        have_counts = [c for c in counts if c is not None]
        return Curve(
            axis=axis,
            stress=stress,
            values=values,
            unit=AXIS_UNITS.get(axis, ""),
            metric=metric,
            counts=have_counts if len(have_counts) == len(values) else None,
            better=better,  # type: ignore[arg-type]
        )

    def _sweep_links(self, links: Sequence[Link] | None) -> list[Link]:
        if links is None:
            return [(lk.a, lk.b) for lk in self.topo.links]
        out = []
        for i, pair in enumerate(links):
            if isinstance(pair, str) or len(pair) != 2:
                raise InputError("mesh.sweep", f"links[{i}]", 'expected ("n0", "n1")')
            out.append(self._link(pair[0], pair[1], "mesh.sweep", f"links[{i}]"))
        if not out:
            raise InputError("mesh.sweep", "links", "no links to stress")
        return out

    def _step_value(self, axis: str, step: object, i: int, nlinks: int) -> float:
        if axis != "failed_links":
            return parse_value(axis, step, "mesh.sweep")
        if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= nlinks:
            raise InputError(
                "mesh.sweep", f"steps[{i}]", f"failed_links steps are counts 0..{nlinks}"
            )
        return float(step)

    # --- the user's programs ----------------------------------------------------------

    @contextlib.contextmanager
    def process(
        self,
        node: str,
        argv: Sequence[str],
        *,
        name: str | None = None,
        ready: str | Callable[[], bool] | None = None,
        timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> Iterator[subprocess.Popen[bytes]]:
        """Run argv inside `node` for the block: recorded by PID in the run's state (so
        `meshstress down`/teardown stop it too), output (stdout and stderr) to the run's
        `<node>/<name>.log` (.log_path on the yielded Popen), stopped with its children
        by PID on exit. `ready`: a text the program prints when it is ready, or a
        callable true once it is; waited for up to `timeout` seconds (MeshstressError
        with the log's end if it exits or does not get ready)."""
        from meshstress.routing.base import node_dir

        node = self._node(node, "mesh.process", "node")
        if isinstance(argv, str) or not argv:
            raise InputError("mesh.process", "argv", "expected a non-empty list of arguments")
        label = name or os.path.basename(str(argv[0]))
        if not label or "/" in label or label.startswith("."):
            raise InputError("mesh.process", "name", f"{label!r} is not a plain file name")
        log_path = os.path.join(node_dir(self, node), f"{label}.log")
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(log_path, flags, 0o644)
        try:
            full_env = dict(os.environ, **(env or {}))
            proc = self.popen(node, argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                              env=full_env)  # fmt: skip
        finally:
            os.close(fd)
        proc.log_path = log_path  # type: ignore[attr-defined]
        rec = self.record_process(proc, node, USER_ROLE, argv)
        try:
            if ready is not None:
                self._wait_ready(proc, ready, log_path, timeout, label)
            yield proc
        finally:
            build.stop_processes([rec])
            proc.poll()
            if rec in self.state.processes:
                self.state.processes.remove(rec)
                with contextlib.suppress(OSError):
                    self.state.save()

    def _wait_ready(
        self,
        proc: subprocess.Popen[bytes],
        ready: str | Callable[[], bool],
        log_path: str,
        timeout: float,
        label: str,
    ) -> None:
        def log_tail() -> str:
            try:
                with open(log_path, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            except OSError:
                return ""
            return " | ".join(text.strip().splitlines()[-3:])

        deadline = time.monotonic() + timeout
        while True:
            if isinstance(ready, str):
                with open(log_path, "rb") as f:
                    ok = ready.encode() in f.read()
            else:
                ok = bool(ready())
            if ok:
                return
            if proc.poll() is not None:
                raise MeshstressError(
                    f"{label} exited with {proc.returncode} before it was ready: {log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise MeshstressError(f"{label} not ready after {timeout:g} s: {log_tail()}")
            time.sleep(0.02)

    def socket(
        self,
        node: str,
        kind: int = socket_mod.SOCK_DGRAM,
        family: int = socket_mod.AF_INET,
    ) -> socket_mod.socket:
        """A socket inside `node`'s namespace (it stays there wherever it is used): a
        client in the test process that sends from that node."""
        node = self._node(node, "mesh.socket", "node")
        with netns.entered(self.ns(node)):
            return socket_mod.socket(family, kind)

    # --- looking ----------------------------------------------------------------------

    def path(self, src: str, dst: str) -> list[str] | None:
        """The nodes a packet from src to dst crosses now, by the routing tables (next
        hop after next hop); None on a gap or a loop."""
        src = self._node(src, "mesh.path", "src")
        dst = self._node(dst, "mesh.path", "dst")
        hops = [src]
        while hops[-1] != dst:
            route = self.backend.routes(self, hops[-1]).get(dst)
            if route is None or route.next_hop is None or route.next_hop in hops:
                return None
            hops.append(route.next_hop)
        return hops

    def wait_until(
        self, predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05
    ) -> bool:
        """Poll predicate() until it is true (True) or `timeout` seconds pass (False)."""
        return math.isfinite(recovery_time(predicate, timeout=timeout, interval=interval))
