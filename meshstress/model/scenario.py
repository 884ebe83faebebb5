"""Scenario files: a mesh, the traffic across it, the stress applied, and the verdict.

Pure: `load(path)` / `loads(text, source, base)` -> Scenario, every error an InputError
naming the file and the field. The format (docs/scenario.md):

    [scenario]
    name = "grid-cut"
    duration = "20s"              # how long traffic runs
    where = "auto"                # auto | host | lab
    probes = ["traffic", "drops"] # BCC probes (need the VM lab on our hosts)

    [mesh]
    topology = "../topologies/grid3x3.toml"   # relative to this file; or:
    generate = "grid4 3 3"                    # a generator and its arguments
    routing = "babeld"                        # overrides the topology's
    settings = { hello_interval = "1s" }      # routing settings, over the topology's
    ideal = false                             # drop the topology's impairments
    converge_timeout = "60s"

    [[traffic]]  ... (meshstress.traffic.flows.parse_flows)
    [[events]]   ... (meshstress.stress.events.parse_events)
    [[process]] ... (meshstress.procs.spec.parse_processes)

    [sweep]      ... (meshstress.model.sweep.parse_sweep; docs/degradation.md)

    [verdict]
    assert = ["flows.cbr.delivery_ratio >= 90%", "events[0].recovery_s.cbr <= 10s",
              "curve.flows.cbr.delivery_ratio monotone"]   # curve.: over a [sweep]
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshstress.errors import InputError
from meshstress.judge import verdict
from meshstress.model import generators, names, topofile, units
from meshstress.model.topology import Topology

if TYPE_CHECKING:
    from meshstress.judge.curves import CurveAssertion
    from meshstress.model.sweep import Sweep
    from meshstress.observe.capture import CaptureOptions
    from meshstress.procs.spec import ProcessSpec
    from meshstress.stress.events import Event
    from meshstress.traffic.flows import FlowSpec

WHERE = ("auto", "host", "lab")
SCENARIO_KEYS = (
    "name",
    "description",
    "duration",
    "where",
    "probes",
    "warmup",
    "route_interval",
    "capture",
    "capture_snaplen",
    "capture_limit",
    "capture_window",
)
MESH_KEYS = (
    "topology",
    "generate",
    "routing",
    "settings",
    "prefix",
    "ideal",
    "converge_timeout",
    "require_converged",
)
ROOT_KEYS = ("scenario", "mesh", "traffic", "events", "sweep", "verdict", "process")
VERDICT_KEYS = ("assert", "max_host_busy", "max_saturated_share", "max_softnet_drops")
DEFAULT_DURATION = 10.0


@dataclass
class Scenario:
    name: str
    source: str
    topology: Topology
    duration: float = DEFAULT_DURATION
    description: str = ""
    where: str = "auto"
    flows: list[FlowSpec] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    assertions: list[verdict.Assertion] = field(default_factory=list)
    host_limits: verdict.HostLimits = field(default_factory=verdict.HostLimits)
    probes: list[str] = field(default_factory=list)
    ideal: bool = False
    converge_timeout: float = 120.0
    require_converged: bool = True
    warmup: float = 1.0  # after convergence, before traffic starts
    route_interval: float = 1.0  # route snapshots during the run
    raw: dict[str, Any] = field(default_factory=dict)  # the file's data, as parsed
    processes: list[ProcessSpec] = field(default_factory=list)  # [[process]], in order
    # [sweep] (one) or [[sweep]] (several, one after another): stress axes stepped over
    # the run
    sweeps: list[Sweep] = field(default_factory=list)
    curve_assertions: list[CurveAssertion] = field(default_factory=list)  # "curve. ..."
    capture: CaptureOptions | None = None  # capture = [...]: pcaps per node interface

    @property
    def sweep(self) -> Sweep | None:
        """The first sweep (the only one of a plain [sweep]); None without a sweep."""
        return self.sweeps[0] if self.sweeps else None

    def radio_cuts(self) -> bool:
        """Whether an event or a sweep cuts radio-like (carrier "keep": the drop filter
        of meshstress.build.drop)."""
        cuts = ("link-down", "node-crash", "partition")
        if any(ev.action in cuts and ev.carrier == "keep" for ev in self.events):
            return True
        return any(sw.axis in ("failed_links", "churn") and sw.carrier == "keep"
                   for sw in self.sweeps)  # fmt: skip

    def needs(self) -> list[str]:
        """Doctor check names this scenario needs from the kernel, beyond netns and veth."""
        from meshstress.build import impair

        topo = self.topology
        out = ["batman-adv"] if topo.routing == "batman-adv" else []
        directions = [] if self.ideal else [d for link in topo.links for d in (link.ab, link.ba)]
        directions += [] if self.ideal else [seg.egress for seg in topo.segments]
        directions += [imp for ev in self.events for imp in (ev.ab, ev.ba) if imp is not None]
        if self.sweeps:
            from meshstress.model.sweep import step_impairments

            for sw in self.sweeps:
                directions += step_impairments(sw, topo, self.ideal)
        kinds: set[str] = set()
        for imp in directions:
            if not imp.is_ideal():
                kinds |= impair.needs(imp)
        out += sorted(kinds)
        if self.radio_cuts():
            out.append("tc-bpf")
        if self.probes:
            out.append("bcc+headers")
        return out


def load(path: str | Path) -> Scenario:
    source = str(path)
    p = Path(path)
    return loads(topofile.read_text(p, source), source, base=p.parent)


def loads(text: str, source: str = "<memory>", base: str | Path = ".") -> Scenario:
    return from_data(topofile.toml_data(text, source), source, Path(base))


def _fail(source: str, fld: str, msg: str) -> InputError:
    return InputError(source, fld, msg)


def _table(source: str, data: Any, fld: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _fail(source, fld, f"expected a table, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            raise _fail(source, f"{fld}.{key}", f"unknown key (allowed: {', '.join(allowed)})")
    return data


def _unit(source: str, value: Any, fld: str, parse: Any) -> Any:
    try:
        return parse(value)
    except (ValueError, OverflowError) as exc:
        raise _fail(source, fld, str(exc)) from None


def _bool(source: str, value: Any, fld: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(source, fld, f"expected true or false, got {value!r}")
    return value


def _str(source: str, value: Any, fld: str) -> str:
    if not isinstance(value, str):
        raise _fail(source, fld, f"expected a string, got {type(value).__name__}")
    return value


def generate(spec: str, source: str, fld: str) -> Topology:
    """'grid4 3 3' (or 'random 20 seed=3 degree=4') -> a generated Topology."""
    from meshstress.cli.topo import _GEN_ARGS

    try:
        words = shlex.split(spec)
    except ValueError as exc:  # an unclosed quote
        raise _fail(source, fld, f"{spec!r}: {exc}") from None
    if not words or words[0] not in _GEN_ARGS:
        raise _fail(source, fld, f"expected one of {', '.join(_GEN_ARGS)} with its arguments")
    kind, rest = words[0], words[1:]
    args = [w for w in rest if "=" not in w]
    opts = dict(w.split("=", 1) for w in rest if "=" in w)
    want = _GEN_ARGS[kind]
    if len(args) != len(want):
        raise _fail(source, fld, f"{kind} takes {len(want)} argument(s): {' '.join(want)}")
    try:
        nums = [int(a) for a in args]
        if kind == "random":
            unknown = set(opts) - {"seed", "radius", "degree"}
            if unknown:
                raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}")
            return generators.random_geometric(
                nums[0],
                radius=float(opts["radius"]) if "radius" in opts else None,
                degree=float(opts.get("degree", 4.0)),
                seed=int(opts.get("seed", 0)),
            )
        if opts:
            raise ValueError(f"{kind} takes no options")
        topo: Topology = getattr(generators, kind)(*nums)
        return topo
    except ValueError as exc:
        raise _fail(source, fld, f"{spec!r}: {exc}") from None


def _topology(source: str, mesh: dict[str, Any], base: Path) -> Topology:
    if ("topology" in mesh) == ("generate" in mesh):
        raise _fail(source, "mesh", "give exactly one of topology (a file) or generate")
    if "topology" in mesh:
        rel = _str(source, mesh["topology"], "mesh.topology")
        path = Path(rel) if Path(rel).is_absolute() else base / rel
        try:
            topo = topofile.load(path)
        except InputError as exc:
            if exc.field == "file":
                raise _fail(source, "mesh.topology", f"{path}: {exc.message}") from None
            raise
    else:
        topo = generate(_str(source, mesh["generate"], "mesh.generate"), source, "mesh.generate")
        topo.source = source
    if "routing" in mesh:
        name = _str(source, mesh["routing"], "mesh.routing")
        if name != topo.routing:
            topo.routing_settings = {}
        topo.routing = name
    if "settings" in mesh:
        settings = mesh["settings"]
        if not isinstance(settings, dict):
            raise _fail(source, "mesh.settings", "expected a table of routing settings")
        topo.routing_settings = {**topo.routing_settings, **settings}
    if "prefix" in mesh:
        topo.prefix = _str(source, mesh["prefix"], "mesh.prefix")
        # the topology file's own checks (capacity, syntax) run on a round trip
        topofile.loads_toml(topofile.dumps_toml(topo), source)
    from meshstress.routing import get_backend

    try:
        backend = get_backend(topo.routing, topo.routing_settings, source=source)
        backend.node_settings(topo)
    except InputError as exc:
        # the backend names "routing" and "routing.FIELD"; here they come from [mesh]
        if exc.source == source and exc.field == "routing":
            raise _fail(source, "mesh.routing", exc.message) from None
        if exc.source == source and exc.field.startswith("routing."):
            raise _fail(source, f"mesh.settings.{exc.field[8:]}", exc.message) from None
        raise
    return topo


def default_name(source: str) -> str:
    """The name of a scenario without scenario.name: its file's stem, made a safe file
    name (characters other than letters, digits, '.', '_', '-' become '_')."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(source).stem)[:64]
    stem = re.sub(r"^[._-]+", "", stem)
    return stem if names.scenario_problem(stem) is None else "scenario"


def from_data(data: dict[str, Any], source: str, base: Path) -> Scenario:
    for key in data:
        if key not in ROOT_KEYS:
            raise _fail(source, key, f"unknown key (allowed: {', '.join(ROOT_KEYS)})")
    head = _table(source, data.get("scenario", {}), "scenario", SCENARIO_KEYS)
    if "mesh" not in data:
        raise _fail(source, "mesh", "missing: say which mesh (topology = FILE or generate = ...)")
    mesh = _table(source, data["mesh"], "mesh", MESH_KEYS)
    topo = _topology(source, mesh, base)
    sc = Scenario(name=default_name(source), source=source, topology=topo, raw=data)
    if "name" in head:
        # the name becomes the run folder results/NAME-TIME: no "/", "..", leading "-"
        sc.name = names.check(
            _str(source, head["name"], "scenario.name"), source, "scenario.name",
            names.scenario_problem,
        )  # fmt: skip
    if "description" in head:
        sc.description = _str(source, head["description"], "scenario.description")
    if "duration" in head:
        sc.duration = _unit(source, head["duration"], "scenario.duration", units.parse_duration)
        if sc.duration <= 0:
            raise _fail(source, "scenario.duration", "must be more than 0s")
    for key, attr in (("warmup", "warmup"), ("route_interval", "route_interval")):
        if key in head:
            setattr(sc, attr, _unit(source, head[key], f"scenario.{key}", units.parse_duration))
    if sc.route_interval <= 0:
        raise _fail(source, "scenario.route_interval", "must be more than 0s")
    if "where" in head:
        sc.where = _str(source, head["where"], "scenario.where")
        if sc.where not in WHERE:
            raise _fail(source, "scenario.where", f"must be one of {', '.join(WHERE)}")
    if "probes" in head:
        sc.probes = _probes(source, head["probes"])
    if any(k.startswith("capture") for k in head):
        from meshstress.observe.capture import parse_options

        sc.capture = parse_options(head, source, topo)
    if "ideal" in mesh:
        sc.ideal = _bool(source, mesh["ideal"], "mesh.ideal")
    if "converge_timeout" in mesh:
        sc.converge_timeout = _unit(
            source, mesh["converge_timeout"], "mesh.converge_timeout", units.parse_duration
        )
    if "require_converged" in mesh:
        sc.require_converged = _bool(source, mesh["require_converged"], "mesh.require_converged")

    from meshstress.stress.events import parse_events
    from meshstress.traffic.flows import parse_flows

    sc.flows = parse_flows(data.get("traffic", []), source, topo, field="traffic")
    sc.events = parse_events(data.get("events", []), source, topo, field="events")
    _processes(sc, data, base)
    if "sweep" in data:
        _sweep(sc, data["sweep"], "duration" in head)
    check_times(sc)
    ver = _table(source, data.get("verdict", {}), "verdict", VERDICT_KEYS)
    sc.assertions = _assertions(source, ver.get("assert", []), sc)
    sc.host_limits = _host_limits(source, ver)
    return sc


def _sweep(sc: Scenario, raw: Any, duration_given: bool) -> None:
    """[sweep] (a table: one axis) or [[sweep]] (an array of tables: several axes, one
    after another on the same mesh): the run lasts the sum of steps x repeat x step; a
    [scenario] duration must agree."""
    from dataclasses import replace

    from meshstress.model.sweep import parse_sweep

    if isinstance(raw, list):
        if not raw:
            raise _fail(sc.source, "sweep", "expected at least one [[sweep]] table")
        tables = [(item, f"sweep[{i}]") for i, item in enumerate(raw)]
    else:
        tables = [(raw, "sweep")]
    offset = 0.0
    for i, (item, at) in enumerate(tables):
        sw = parse_sweep(item, sc.source, sc.topology, sc.flows, at=at)
        if len(tables) > 1 and sw.fresh:
            raise _fail(sc.source, f"{at}.fresh", "a fresh mesh per step works with one sweep only")
        earlier = [s.axis for s in sc.sweeps]
        if sw.axis in earlier:
            raise _fail(
                sc.source, f"{at}.{sw.axis}",
                f"sweep[{earlier.index(sw.axis)}] sweeps {sw.axis} already: one sweep per axis",
            )  # fmt: skip
        sc.sweeps.append(replace(sw, index=i, offset=offset))
        offset += sw.duration
    if duration_given and abs(sc.duration - offset) > 1e-9:
        sw = sc.sweeps[0]
        how = (
            f"a sweep lasts steps x repeat x step = {len(sw.steps)} x {sw.repeat} x "
            f"{units.format_duration(sw.step)} = {units.format_duration(sw.duration)}"
            if len(sc.sweeps) == 1
            else "the sweeps last "
            + " + ".join(units.format_duration(s.duration) for s in sc.sweeps)
            + f" = {units.format_duration(offset)}"
        )
        raise _fail(
            sc.source,
            "scenario.duration",
            f"{how}; leave duration out or make it {units.format_duration(offset)}",
        )
    sc.duration = offset
    if sc.sweeps[0].fresh and sc.events:
        raise _fail(sc.source, "events", "a fresh sweep (a new mesh per step) takes no events")


def check_times(sc: Scenario) -> None:
    """Every event and flow start lies inside the scenario's duration."""
    for i, ev in enumerate(sc.events):
        if ev.at > sc.duration:
            raise _fail(
                sc.source,
                "events",
                f"event {i} ({ev.action}) at {units.format_duration(ev.at)} is after the "
                f"scenario ends (duration {units.format_duration(sc.duration)})",
            )
    for i, spec in enumerate(sc.flows):
        if spec.start >= sc.duration:
            raise _fail(sc.source, f"traffic[{i}].start", "starts after the scenario ends")


def _probes(source: str, value: Any) -> list[str]:
    from meshstress.observe.probes import PROBES

    if value is True:
        return list(PROBES)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(source, "scenario.probes", f"expected a list of names from {PROBES} or true")
    for i, name in enumerate(value):
        if name not in PROBES:
            raise _fail(source, f"scenario.probes[{i}]", f"unknown probe {name!r} ({PROBES})")
    return list(dict.fromkeys(value))


def _assertions(source: str, value: Any, sc: Scenario) -> list[verdict.Assertion]:
    if not isinstance(value, list):
        raise _fail(source, "verdict.assert", "expected a list of strings")
    flows = {f.name for f in sc.flows}
    out = []
    for i, text in enumerate(value):
        fld = f"verdict.assert[{i}]"
        if _curve_assertion(sc, text, fld, flows):
            continue
        try:
            a = verdict.parse_assertion(text)
        except ValueError as exc:
            raise _fail(source, fld, str(exc)) from None
        p = a.path
        if p[0] == "flows" and len(p) > 1 and p[1] not in flows:
            raise _fail(source, fld, f"no flow {p[1]!r} (flows: {', '.join(sorted(flows))})")
        if p[0] == "events" and len(p) > 1:
            if not isinstance(p[1], int) or p[1] >= len(sc.events):
                raise _fail(source, fld, f"there are {len(sc.events)} events (events[0]...)")
            if len(p) > 3 and p[2] == "recovery_s" and p[3] not in flows:
                raise _fail(source, fld, f"no flow {p[3]!r} (flows: {', '.join(sorted(flows))})")
        if p[0] == "process":
            why = _process_assertion(p, sc)
            if why is not None:
                raise _fail(source, fld, why)
        if p[0] not in RESULT_KEYS:
            raise _fail(source, fld, f"unknown metric root {p[0]!r} ({', '.join(RESULT_KEYS)})")
        out.append(a)
    return out


def _curve_assertion(sc: Scenario, text: Any, fld: str, flows: set[str]) -> bool:
    """A "curve. ..." assertion goes to sc.curve_assertions (True); others are plain."""
    from meshstress.judge import curves, degradation

    if not curves.is_curve_assertion(text):
        return False
    try:
        a = curves.parse_curve_assertion(text)
    except ValueError as exc:
        raise _fail(sc.source, fld, str(exc)) from None
    if not sc.sweeps:
        raise _fail(sc.source, fld, "a curve assertion needs a [sweep] in the scenario")
    axes = [s.axis for s in sc.sweeps]
    if a.axis is None and len(sc.sweeps) > 1:
        raise _fail(
            sc.source, fld,
            f"the scenario has {len(axes)} sweeps ({', '.join(axes)}): name the axis, like "
            f"curve[{axes[0]}].{a.metric}",
        )  # fmt: skip
    if a.axis is not None and a.axis not in axes:
        raise _fail(sc.source, fld, f"no sweep of {a.axis!r} (sweeps: {', '.join(axes)})")
    sw = sc.sweeps[axes.index(a.axis)] if a.axis is not None else sc.sweeps[0]
    p = verdict.parse_path(a.metric)
    if p[0] == "process" and len(p) >= 3:
        names = {ps.name for ps in sc.processes}
        if p[1] not in names:
            raise _fail(
                sc.source, fld, f"no process {p[1]!r} (processes: {', '.join(sorted(names))})"
            )
    elif p[0] != "flows" or len(p) < 3:
        raise _fail(
            sc.source, fld,
            f"curves are per flow or process: curve.flows.NAME.METRIC or "
            f"curve.process.NAME.METRIC, got {a.metric}",
        )  # fmt: skip
    elif p[1] not in flows:
        raise _fail(sc.source, fld, f"no flow {p[1]!r} (flows: {', '.join(sorted(flows))})")
    else:
        kind = next(f.kind for f in sc.flows if f.name == p[1])
        have = degradation.CURVE_METRICS.get(kind)
        tail = verdict.format_path(p[2:])
        if have is not None and tail not in have:
            raise _fail(
                sc.source, fld, f"a {kind} flow has curves of {', '.join(have)}, not {tail}"
            )
    if a.at is not None:
        axis, value = a.at.split("=", 1)
        if axis != sw.axis:
            raise _fail(sc.source, fld, f"{a.at!r}: the sweep's axis is {sw.axis}")
        unit = curves.parse_stress(value)[1]
        if unit is not None and unit != sw.unit:
            want = sw.unit or "plain numbers"
            raise _fail(sc.source, fld, f"{a.at!r} is in {unit}, the {axis} axis in {want}")
    sc.curve_assertions.append(a)
    return True


def _host_limits(source: str, ver: dict[str, Any]) -> verdict.HostLimits:
    """[verdict] max_host_busy, max_saturated_share (fractions or "95%"), max_softnet_drops."""
    kw: dict[str, Any] = {}
    for key in ("max_host_busy", "max_saturated_share"):
        if key in ver:
            kw[key] = _unit(source, ver[key], f"verdict.{key}", units.parse_fraction)
            if kw[key] < 0:
                raise _fail(source, f"verdict.{key}", f"must be 0% or more, got {ver[key]!r}")
    if "max_softnet_drops" in ver:
        n = ver["max_softnet_drops"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise _fail(source, "verdict.max_softnet_drops", f"expected a count >= 0, got {n!r}")
        kw["max_softnet_drops"] = n
    return verdict.HostLimits(**kw)


# The top-level keys of results.json that assertions may start from.
RESULT_KEYS = ("mesh", "flows", "events", "routing", "probes", "run", "process", "capture",
               "inject")


def _processes(sc: Scenario, data: dict[str, Any], base: Path) -> None:
    """[[process]]: the user's own programs (meshstress.procs.spec)."""
    from meshstress.procs.spec import parse_processes

    sc.processes = parse_processes(data.get("process", []), sc.source, sc.topology, base)


def _process_assertion(path: tuple[Any, ...], sc: Scenario) -> str | None:
    from meshstress.procs.spec import assertion_problem

    return assertion_problem(path, sc.processes)
