"""A scenario's `[sweep]`: one stress axis stepped over a run, and what each step applies.

Pure. `parse_sweep(raw, source, topo, flows)` -> Sweep (every mistake an InputError
naming `sweep.KEY`); `expand(sweep, topo, ideal)` -> the timeline of step actions (the
events of meshstress.stress.events that set each step: `impair`, `link-down`/`link-up`,
`node-crash`/`node-restart`) and the measurement windows. The format and the rules are in
docs/degradation.md ("Sweeps").

Axes:
- `loss`, `delay`, `jitter`, `rate`: the step's value replaces that one parameter of the
  impairment of every link of `links`, both directions; the rest of each direction's
  configured impairment stays (of the ideal link with `[mesh] ideal = true`).
- `failed_links`: how many links of `links` are down during the step; one seeded order
  of the links, so each step's set holds the previous step's.
- `churn`: node crashes per minute; each lasts `churn_down`; nodes (from `nodes`) and
  times drawn from `seed`; every crash of a step ends inside it.

Stress rises along the steps: loss, delay, jitter, failed_links and churn values must
rise strictly, rate values fall strictly (less bandwidth is more stress).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from meshstress.errors import InputError
from meshstress.model import units

if TYPE_CHECKING:
    from meshstress.model.topology import Impairment, Topology
    from meshstress.stress.events import Event
    from meshstress.traffic.flows import FlowSpec

AXES = ("loss", "delay", "jitter", "rate", "failed_links", "churn")
IMPAIR_AXES = ("loss", "delay", "jitter", "rate")
KEYS = (*AXES, "links", "nodes", "step", "settle", "repeat", "fresh", "seed", "churn_down",
        "carrier")  # fmt: skip
# failed_links and churn: how a cut looks to the neighbours (stress.events.CARRIER_MODES)
CARRIERS = ("keep", "lose")
# the unit of each axis's stress, as meshstress.judge.curves names them
AXIS_UNIT = {
    "loss": "fraction",
    "delay": "seconds",
    "jitter": "seconds",
    "rate": "bit/s",
    "failed_links": "",
    "churn": "",
}
AXIS_LABEL = {
    "loss": "loss (%)",
    "delay": "delay (ms)",
    "jitter": "jitter (ms)",
    "rate": "rate (bit/s)",
    "failed_links": "failed links",
    "churn": "crashes per minute",
}
DEFAULT_STEP = 10.0
DEFAULT_SETTLE = 1.0  # at most a quarter of the step
DEFAULT_CHURN_DOWN = 5.0

Link = tuple[str, str]


@dataclass(frozen=True)
class Sweep:
    axis: str
    steps: tuple[Any, ...]  # as written: "5%", "2mbit", 3
    values: tuple[float, ...]  # in SI: 0.05, 2e6, 3.0
    links: tuple[Link, ...]  # the links the stress applies to (topology order)
    nodes: tuple[str, ...] = ()  # churn: the nodes that may crash
    step: float = DEFAULT_STEP
    settle: float = DEFAULT_SETTLE
    repeat: int = 1
    fresh: bool = False
    seed: int = 0
    churn_down: float = DEFAULT_CHURN_DOWN
    carrier: str = "keep"  # failed_links, churn: the cuts' carrier mode (docs/events.md)
    index: int = 0  # position among the scenario's sweeps ([[sweep]]), in time order
    offset: float = 0.0  # seconds after t0 at which this sweep begins (the ones before it)

    @property
    def unit(self) -> str:
        return AXIS_UNIT[self.axis]

    @property
    def windows_count(self) -> int:
        return len(self.steps) * self.repeat

    @property
    def duration(self) -> float:
        """steps x repeat x step: the scenario's duration."""
        return self.windows_count * self.step

    def texts(self) -> list[str]:
        return [str(s) for s in self.steps]


@dataclass(frozen=True)
class Window:
    """One step of one repeat: [start, end) seconds after t0, measured from start+settle."""

    index: int  # position in time: repeat * len(steps) + step
    step: int
    repeat: int
    start: float
    end: float
    settle: float

    @property
    def measured(self) -> tuple[float, float]:
        return self.start + self.settle, self.end


@dataclass(frozen=True)
class StepAction:
    """Events applied together at `at` (seconds after t0): a step's change of stress
    (`boundary` true, one batch), or one crash or restart of a churn step."""

    at: float
    window: int
    events: tuple[Event, ...]
    boundary: bool = True
    sweep: int = 0  # Sweep.index
    restore: tuple[Event, ...] = ()  # the previous sweep's axis back to configured first

    @property
    def action(self) -> str:  # what meshstress.stress.events.run_timeline's callers print
        return "sweep-step" if self.boundary else "sweep-churn"


# --- parsing -----------------------------------------------------------------------------


def _fail(source: str, fld: str, msg: str) -> InputError:
    return InputError(source, fld, msg)


def _duration(source: str, value: Any, fld: str, positive: bool = True) -> float:
    try:
        x = units.parse_duration(value)
    except (ValueError, OverflowError) as exc:
        raise _fail(source, fld, str(exc)) from None
    if positive and x <= 0:
        raise _fail(source, fld, "must be longer than 0s")
    if x < 0:
        raise _fail(source, fld, "must not be negative")
    return float(x)


def _int(source: str, value: Any, fld: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise _fail(source, fld, f"expected a whole number >= {lo}, got {value!r}")
    return value


def _step_values(source: str, axis: str, raw: Any, n_links: int, at: str = "sweep") -> list[float]:
    fld = f"{at}.{axis}"
    if not isinstance(raw, list) or not raw:
        example = {
            "loss": '["0%", "5%", "10%"]',
            "delay": '["0ms", "20ms", "50ms"]',
            "jitter": '["0ms", "5ms"]',
            "rate": '["10mbit", "2mbit", "500kbit"]',
            "failed_links": "[0, 1, 2]",
            "churn": "[0, 2, 6]",
        }[axis]
        raise _fail(source, fld, f"expected a non-empty array of steps, like {example}")
    values: list[float] = []
    for i, item in enumerate(raw):
        where = f"{fld}[{i}]"
        try:
            if axis == "loss":
                x = float(units.parse_fraction(item))
            elif axis in ("delay", "jitter"):
                x = float(units.parse_duration(item))
            elif axis == "rate":
                x = float(units.parse_rate(item))
                if x <= 0:
                    raise ValueError("a rate must be more than 0")
            elif axis == "failed_links":
                x = float(_int(source, item, where, 0))
                if x > n_links:
                    raise ValueError(f"only {n_links} link(s) in {at}.links")
            else:  # churn: crashes per minute
                if isinstance(item, bool) or not isinstance(item, int | float):
                    raise ValueError(f"expected crashes per minute (a number), got {item!r}")
                x = float(item)
                if not math.isfinite(x) or x < 0:
                    raise ValueError(f"crashes per minute must be >= 0, got {item!r}")
        except (ValueError, OverflowError) as exc:
            raise _fail(source, where, str(exc)) from None
        if values:
            falling = axis == "rate"
            if (x >= values[-1]) if falling else (x <= values[-1]):
                order = "fall" if falling else "rise"
                why = " (less bandwidth is more stress)" if falling else ""
                raise _fail(
                    source,
                    where,
                    f"steps must {order} strictly{why}: {item!r} after {raw[i - 1]!r}",
                )
        values.append(x)
    return values


def _links(source: str, raw: Any, topo: Topology, at: str = "sweep") -> tuple[Link, ...]:
    known = {frozenset((link.a, link.b)): (link.a, link.b) for link in topo.links}
    if not isinstance(raw, list) or not raw:
        raise _fail(source, f"{at}.links", 'expected an array of links, like [["n0", "n1"]]')
    out: list[Link] = []
    for i, item in enumerate(raw):
        fld = f"{at}.links[{i}]"
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(x, str) for x in item)
        ):
            raise _fail(source, fld, 'expected the link\'s two nodes, like ["n0", "n1"]')
        key = frozenset(item)
        if key not in known:
            raise _fail(source, fld, f"no link {item[0]}-{item[1]} in the topology")
        if known[key] in out:
            raise _fail(source, fld, f"link {item[0]}-{item[1]} is listed twice")
        out.append(known[key])
    return tuple(out)


def parse_sweep(
    raw: Any, source: str, topo: Topology, flows: Sequence[FlowSpec] = (), at: str = "sweep"
) -> Sweep:
    """The `[sweep]` table -> Sweep; InputError(source, f"{at}.KEY", ...) on any mistake."""
    if not isinstance(raw, dict):
        raise _fail(source, at, f"expected a table, got {type(raw).__name__}")
    for key in raw:
        if key not in KEYS:
            raise _fail(source, f"{at}.{key}", f"unknown key (allowed: {', '.join(KEYS)})")
    given = [a for a in AXES if a in raw]
    if len(given) != 1:
        what = f"got {', '.join(given)}" if given else "got none"
        raise _fail(source, at, f"give exactly one axis of {', '.join(AXES)} ({what})")
    axis = given[0]
    links = (
        _links(source, raw["links"], topo, at)
        if "links" in raw
        else tuple((link.a, link.b) for link in topo.links)
    )
    if axis in ("failed_links", *IMPAIR_AXES) and not links:
        raise _fail(source, at, f"a {axis} sweep needs links; the topology has none")
    if axis != "churn":
        for key in ("nodes", "churn_down"):
            if key in raw:
                raise _fail(source, f"{at}.{key}", "only a churn sweep takes it")
    carrier = raw.get("carrier", "keep")
    if "carrier" in raw and axis not in ("failed_links", "churn"):
        raise _fail(source, f"{at}.carrier", "only a failed_links or churn sweep takes it")
    if not isinstance(carrier, str) or carrier not in CARRIERS:
        raise _fail(source, f"{at}.carrier",
                    f"must be one of {', '.join(CARRIERS)}, got {carrier!r}")  # fmt: skip
    if axis == "churn" and "links" in raw:
        raise _fail(source, f"{at}.links", "a churn sweep crashes nodes: give nodes")
    values = _step_values(source, axis, raw[axis], len(links), at)
    step = _duration(source, raw["step"], f"{at}.step") if "step" in raw else DEFAULT_STEP
    if "settle" in raw:
        settle = _duration(source, raw["settle"], f"{at}.settle", positive=False)
    else:
        settle = min(DEFAULT_SETTLE, step / 4)
    if settle >= step:
        raise _fail(source, f"{at}.settle", f"must be shorter than the step ({step:g} s)")
    repeat = _int(source, raw["repeat"], f"{at}.repeat", 1) if "repeat" in raw else 1
    fresh = raw.get("fresh", False)
    if not isinstance(fresh, bool):
        raise _fail(source, f"{at}.fresh", f"expected true or false, got {fresh!r}")
    seed = _int(source, raw["seed"], f"{at}.seed", 0) if "seed" in raw else 0
    nodes: tuple[str, ...] = ()
    down = DEFAULT_CHURN_DOWN
    if axis == "churn":
        ends = {n for f in flows for n in (f.src, f.dst)}
        if "nodes" in raw:
            names = set(topo.node_names())
            if not isinstance(raw["nodes"], list) or not raw["nodes"]:
                raise _fail(source, f"{at}.nodes", 'expected an array of node names, like ["n4"]')
            picked: list[str] = []
            for i, n in enumerate(raw["nodes"]):
                if not isinstance(n, str) or n not in names:
                    raise _fail(source, f"{at}.nodes[{i}]", f"unknown node {n!r}")
                if n not in picked:
                    picked.append(n)
            nodes = tuple(picked)
        else:
            nodes = tuple(n for n in topo.node_names() if n not in ends)
            if not nodes:
                raise _fail(
                    source, f"{at}.nodes", "every node is a flow's end: say which may crash"
                )
        if "churn_down" in raw:
            down = _duration(source, raw["churn_down"], f"{at}.churn_down")
        if down >= step:
            raise _fail(
                source,
                f"{at}.churn_down",
                f"a crash must end inside its step "
                f"({step:g} s): make churn_down shorter or step longer",
            )
    return Sweep(
        axis=axis,
        steps=tuple(raw[axis]),
        values=tuple(values),
        links=links,
        nodes=nodes,
        step=step,
        settle=settle,
        repeat=repeat,
        fresh=fresh,
        seed=seed,
        churn_down=down,
        carrier=carrier,
    )


# --- expansion -----------------------------------------------------------------------------


def windows(sw: Sweep) -> list[Window]:
    """Every step of every repeat in time order: steps 0..n-1, then again (repeat times);
    seconds after t0 (a later sweep of several starts at its offset)."""
    n = len(sw.steps)
    o = sw.offset
    return [
        Window(
            r * n + k, k, r, o + (r * n + k) * sw.step, o + (r * n + k + 1) * sw.step, sw.settle
        )
        for r in range(sw.repeat)
        for k in range(n)
    ]


def stressed(imp: Impairment, axis: str, value: float) -> Impairment:
    """`imp` with one parameter replaced by a step's value (the rest kept). A loss step
    replaces bursty loss too (independent loss of that fraction)."""
    if axis == "loss":
        return replace(imp, loss=value, gemodel=None, loss_burst=None)
    if axis == "delay":
        return replace(imp, delay=value)
    if axis == "jitter":
        return replace(imp, jitter=value)
    if axis == "rate":
        return replace(imp, rate=int(value))
    raise ValueError(f"{axis} is not an impairment axis")


def link_order(sw: Sweep) -> list[Link]:
    """failed_links: the seeded order in which links fail (step k: the first k)."""
    order = list(sw.links)
    random.Random(sw.seed).shuffle(order)
    return order


def churn_crashes(sw: Sweep, w: Window, rate: float) -> list[tuple[float, str]]:
    """(time after t0, node) of a churn window's crashes: round(rate * step / 60) of them,
    one in each equal slice of [start, end - churn_down], at a seeded time within it; the
    node drawn from those not down then. Every crash ends (restarts) inside the window."""
    n = round(rate * sw.step / 60.0)
    if n <= 0 or not sw.nodes:
        return []
    rng = random.Random(f"{sw.seed}:{w.index}")
    room = sw.step - sw.churn_down
    out: list[tuple[float, str]] = []
    for j in range(n):
        t = w.start + (j + rng.random()) * room / n
        busy = {node for at, node in out if at + sw.churn_down > t}
        free = [node for node in sw.nodes if node not in busy]
        if free:
            out.append((round(t, 6), rng.choice(free)))
    return out


def expand(sw: Sweep, topo: Topology, ideal: bool = False) -> list[StepAction]:
    """The sweep's timeline: at each window's start a batch that sets its stress (only
    what changes), plus for churn the crashes and restarts inside the window."""
    from meshstress.model.topology import Impairment
    from meshstress.stress.events import Event

    by_key = {frozenset((link.a, link.b)): link for link in topo.links}
    out: list[StepAction] = []
    failed: list[Link] = []
    order = link_order(sw) if sw.axis == "failed_links" else []
    for w in windows(sw):
        value = sw.values[w.step]
        events: list[Event] = []
        if sw.axis in IMPAIR_AXES:
            for a, b in sw.links:
                link = by_key[frozenset((a, b))]
                ab, ba = (Impairment(), Impairment()) if ideal else (link.ab, link.ba)
                if (link.a, link.b) != (a, b):
                    ab, ba = ba, ab
                events.append(
                    Event(
                        at=w.start,
                        action="impair",
                        link=(a, b),
                        ab=stressed(ab, sw.axis, value),
                        ba=stressed(ba, sw.axis, value),
                    )
                )
        elif sw.axis == "failed_links":
            want = order[: int(value)]
            events += [
                Event(at=w.start, action="link-up", link=lk) for lk in failed if lk not in want
            ]
            events += [
                Event(at=w.start, action="link-down", link=lk, carrier=sw.carrier)
                for lk in want
                if lk not in failed
            ]
            failed = want
        out.append(StepAction(at=w.start, window=w.index, events=tuple(events), sweep=sw.index))
        if sw.axis == "churn":
            for t, node in churn_crashes(sw, w, value):
                crash = Event(at=t, action="node-crash", node=node, carrier=sw.carrier)
                back = Event(at=t + sw.churn_down, action="node-restart", node=node,
                             carrier=sw.carrier)  # fmt: skip
                out.append(StepAction(t, w.index, (crash,), boundary=False, sweep=sw.index))
                out.append(
                    StepAction(t + sw.churn_down, w.index, (back,), False, sweep=sw.index)
                )
    return sorted(out, key=lambda a: (a.at, not a.boundary))


def restore_events(sw: Sweep, topo: Topology, ideal: bool, at: float) -> list[Event]:
    """What puts a sweep's axis back to the links' configured value at `at` (the end of
    the sweep, when another follows): each link of an impairment axis gets its configured
    impairment (ideal with `ideal`), the failed links of its last step come up; churn
    leaves nothing to undo (every crash ends inside its step)."""
    from meshstress.model.topology import Impairment
    from meshstress.stress.events import Event

    by_key = {frozenset((link.a, link.b)): link for link in topo.links}
    if sw.axis in IMPAIR_AXES:
        out = []
        for a, b in sw.links:
            link = by_key[frozenset((a, b))]
            ab, ba = (Impairment(), Impairment()) if ideal else (link.ab, link.ba)
            if (link.a, link.b) != (a, b):
                ab, ba = ba, ab
            out.append(Event(at=at, action="impair", link=(a, b), ab=ab, ba=ba))
        return out
    if sw.axis == "failed_links":
        last = int(sw.values[-1])
        return [Event(at=at, action="link-up", link=lk) for lk in link_order(sw)[:last]]
    return []


def expand_all(sweeps: Sequence[Sweep], topo: Topology, ideal: bool = False) -> list[StepAction]:
    """Several sweeps one after another on one mesh: each one's actions (expand), and at
    the start of every sweep after the first the previous sweep's axis restored
    (`restore`, applied before the step's own changes, in the same step)."""
    out: list[StepAction] = []
    for i, sw in enumerate(sweeps):
        mine = expand(sw, topo, ideal)
        if i > 0:
            first = next(k for k, a in enumerate(mine) if a.boundary)
            # a link this step impairs gets configured-plus-this-axis anyway: that step
            # puts the previous axis back on it already
            reset = {frozenset(ev.link) for ev in mine[first].events if ev.action == "impair"
                     and ev.link is not None}  # fmt: skip
            back = tuple(
                ev
                for ev in restore_events(sweeps[i - 1], topo, ideal, sw.offset)
                if not (ev.action == "impair" and ev.link and frozenset(ev.link) in reset)
            )
            mine[first] = replace(mine[first], restore=back)
        out += mine
    return sorted(out, key=lambda a: (a.at, a.sweep, not a.boundary))


def all_events(actions: Sequence[StepAction]) -> list[Event]:
    return [ev for a in actions for ev in (*a.restore, *a.events)]


def step_impairments(sw: Sweep, topo: Topology, ideal: bool = False) -> list[Impairment]:
    """Every impairment a sweep of an impairment axis sets (for Scenario.needs)."""
    if sw.axis not in IMPAIR_AXES:
        return []
    return [
        imp
        for a in expand(sw, topo, ideal)
        for ev in a.events
        for imp in (ev.ab, ev.ba)
        if imp is not None
    ]


def fresh_topology(sw: Sweep, topo: Topology, step: int, ideal: bool = False) -> Topology:
    """fresh = true with an impairment axis: a copy of the topology with step's stress
    built in (the mesh comes up with it; no event sets it)."""
    from meshstress.model.topology import Impairment

    value = sw.values[step]
    chosen = {frozenset(lk) for lk in sw.links}
    links = []
    for link in topo.links:
        ab, ba = (Impairment(), Impairment()) if ideal else (link.ab, link.ba)
        if frozenset((link.a, link.b)) in chosen:
            ab, ba = stressed(ab, sw.axis, value), stressed(ba, sw.axis, value)
        links.append(replace(link, ab=ab, ba=ba))
    return replace(topo, links=links)
