"""Capacity before the run: the CPU (cores) and memory a scenario will need, from
per-unit costs measured on this host (benchmarks/calibrate.py), and whether the host
has them. Pure: no /proc, no kernel; the caller passes the host's cores and memory.

    cal, where = load_calibration(path)            # or the packaged default
    est = estimate(topo, flows, cal, route_interval=1.0, probes=[])
    est.cores, est.memory_mb, est.parts             # what, cores, MB each
    problems = est.exceeds(cores=2, mem_available_mb=20000, busy_limit=0.95)

The model, per unit (every number is a calibration field, `costs.*`):
- namespaces: kernel memory per node (`namespace_mb`) and per mesh interface
  (`interface_mb`); routes in the kernel (`route_kb` each, every node holding a route
  to every other node once routing is on);
- routing: per node, per mesh interface, at the backend's interval (babeld
  hello_interval, batmand and batman-adv orig_interval; `interval_s` is the interval
  it was measured at, the cost scales with its inverse): `iface_cores` plus
  `iface_node_cores` for every node of the mesh (updates carry a route per node), and
  (optional, batman-adv) `iface_node_iface_cores` for every node and every mesh
  interface: batman-adv walks one global list of all its interfaces, in every
  namespace, for each OGM it receives (costfit.global_list_fit); a
  daemon's memory (`daemon_mb`, per node; batman-adv and static run none). The
  kernel's share of the routing packets (softirq) is in these numbers;
- traffic: per flow (`flow_cores`, optional: its two agents' own cost at any rate) and
  per packet, its two ends (`packet_end_core_s`: the flow agents' send and
  receive) and each hop it crosses (`packet_hop_core_s`: the kernel forwards it);
  pps per flow as the flow says (udp rate, ping and rr rates; rr counts request and
  response); a tcp flow without a rate cap takes what it can get (`tcp_bulk_cores`);
  two agents per flow (`agent_mb` each);
- probes (BCC): each adds `probe_packet_share` to every packet's cost, `probe_mb`;
- the route recorder: `snapshot_node_core_s` per node per snapshot, every
  route_interval seconds; a backend whose tables are read entry by entry (batman-adv:
  a genl dump of every node's originators, parsed each time) can give its own
  `snapshot_node_core_s` and a `snapshot_entry_core_s` per node per other node in its
  routing row (ROUTING_OPTIONAL);
- meshstress itself: `meshstress_mb` and `meshstress_node_mb` per node;
- the scenario's own processes ([[process]]) are not estimated: they are listed.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshstress.errors import InputError, MeshstressError
from meshstress.model import units

CALIBRATION_VERSION = 1
STORED = "/var/lib/meshstress/calibration.json"  # root-owned, benchmarks/calibrate.py
# the VM lab's own costs (an emulated CPU: `benchmarks/calibrate.py --lab`); a run in
# the lab (chosen for it, or inside the guest) uses these, every other run STORED
STORED_LAB = "/var/lib/meshstress/calibration-lab.json"
PACKAGED = {"host": "calibration.json", "lab": "calibration-lab.json"}
# set in the lab guest's environment by meshstress.lab (and by the runner's lab runs)
LAB_GUEST_ENV = "MESHSTRESS_LAB_GUEST"
# routing setting that sets each backend's cost-driving interval
INTERVAL_SETTING = {
    "babeld": "hello_interval",
    "batmand": "orig_interval",
    "batman-adv": "orig_interval",
}
ROUTING_FIELDS = ("interval_s", "iface_cores", "iface_node_cores", "daemon_mb")
# optional per backend: its route recorder's cost, when it is not the kernel table reader's
ROUTING_OPTIONAL = ("snapshot_node_core_s", "snapshot_entry_core_s", "iface_node_iface_cores")
# optional costs (0 when a file has none): a flow's own cost at any rate, its two agents'
# timers and loops (measured at two rates: the per-packet figure alone misses it at low
# rates); the recorder's cost per table entry (node x other node) per snapshot: the
# kernel reader dumps every route of every namespace, even when it parses none
OPTIONAL_COSTS = ("flow_cores", "snapshot_entry_core_s")
COST_FIELDS = (
    "namespace_mb",
    "interface_mb",
    "route_kb",
    "packet_end_core_s",
    "packet_hop_core_s",
    "tcp_bulk_cores",
    "agent_mb",
    "probe_packet_share",
    "probe_mb",
    "snapshot_node_core_s",
    "meshstress_mb",
    "meshstress_node_mb",
)


@dataclass
class Calibration:
    costs: dict[str, float]
    routing: dict[str, dict[str, float]]  # backend -> ROUTING_FIELDS
    measured: str = ""  # when, and on what host (free text)
    host: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"
    default: bool = False  # the packaged default, not measured on this host

    def to_json(self) -> dict[str, Any]:
        return {
            "version": CALIBRATION_VERSION,
            "measured": self.measured,
            "host": self.host,
            "costs": self.costs,
            "routing": self.routing,
        }


def parse_calibration(text: str, source: str) -> Calibration:
    """Calibration JSON -> Calibration. Raises InputError(source, field, why)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(source, "file", f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(source, "file", "not a JSON object")
    if data.get("version") != CALIBRATION_VERSION:
        raise InputError(
            source, "version", f"{data.get('version')!r}: this meshstress reads version "
            f"{CALIBRATION_VERSION} (run benchmarks/calibrate.py again)"
        )  # fmt: skip
    costs = data.get("costs")
    if not isinstance(costs, dict):
        raise InputError(source, "costs", "missing or not an object")
    out_costs = {k: _number(costs, k, source, "costs") for k in COST_FIELDS}
    for k in OPTIONAL_COSTS:
        if k in costs:
            out_costs[k] = _number(costs, k, source, "costs")
    routing = data.get("routing")
    if not isinstance(routing, dict):
        raise InputError(source, "routing", "missing or not an object")
    out_routing: dict[str, dict[str, float]] = {}
    for name, row in routing.items():
        if not isinstance(row, dict):
            raise InputError(source, f"routing.{name}", "not an object")
        out_routing[name] = {
            k: _number(row, k, source, f"routing.{name}") for k in ROUTING_FIELDS
        }
        for k in ROUTING_OPTIONAL:
            if k in row:
                out_routing[name][k] = _number(row, k, source, f"routing.{name}")
        if out_routing[name]["interval_s"] <= 0:
            raise InputError(source, f"routing.{name}.interval_s", "must be more than 0")
    host = data.get("host") or {}
    return Calibration(
        out_costs, out_routing, str(data.get("measured", "")),
        host if isinstance(host, dict) else {}, source,
    )  # fmt: skip


def _number(row: Mapping[str, Any], key: str, source: str, where: str) -> float:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(source, f"{where}.{key}", "missing or not a number")
    if not math.isfinite(value) or value < 0:
        raise InputError(source, f"{where}.{key}", f"{value!r}: must be a number >= 0")
    return float(value)


# --- the estimate ----------------------------------------------------------------


@dataclass
class Part:
    what: str
    cores: float = 0.0
    memory_mb: float = 0.0
    note: str = ""


@dataclass
class Estimate:
    parts: list[Part]
    calibration: str  # where the per-unit costs came from
    default_calibration: bool
    not_estimated: list[str] = field(default_factory=list)

    @property
    def cores(self) -> float:
        return sum(p.cores for p in self.parts)

    @property
    def memory_mb(self) -> float:
        return sum(p.memory_mb for p in self.parts)

    def exceeds(
        self,
        cores: int,
        mem_available_mb: float,
        busy_limit: float = 0.95,
        busy_now_cores: float = 0.0,
    ) -> list[str]:
        """What the host lacks for this estimate, one sentence each (empty: it fits).
        CPU: the estimate (plus what others use now, `busy_now_cores`) against the busy
        share at which the verdict calls a CPU sample saturated (HostLimits)."""
        out = []
        usable = cores * busy_limit
        if self.cores + busy_now_cores > usable:
            others = f" + {busy_now_cores:.2f} in use by others now" if busy_now_cores else ""
            out.append(
                f"CPU: needs {self.cores:.2f} cores{others}, the host has {cores} "
                f"({usable:.2f} below the {busy_limit:.0%} saturation limit)"
            )
        if self.memory_mb > mem_available_mb:
            out.append(
                f"memory: needs {self.memory_mb:.0f} MB, {mem_available_mb:.0f} MB available"
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "cores": round(self.cores, 3),
            "memory_mb": round(self.memory_mb, 1),
            "calibration": self.calibration,
            "default_calibration": self.default_calibration,
            "parts": [
                {"what": p.what, "cores": round(p.cores, 4), "memory_mb": round(p.memory_mb, 1)}
                | ({"note": p.note} if p.note else {})
                for p in self.parts
            ],
            "not_estimated": self.not_estimated,
        }

    def lines(self) -> list[str]:
        src = self.calibration + (" (packaged default)" if self.default_calibration else "")
        out = [
            f"estimate: {self.cores:.2f} cores, {self.memory_mb:.0f} MB "
            f"(per-unit costs: {src})"
        ]
        for p in self.parts:
            if p.cores >= 0.0005 or p.memory_mb >= 0.5:
                note = f" ({p.note})" if p.note else ""
                out.append(f"  {p.what:<12} {p.cores:6.2f} cores {p.memory_mb:8.0f} MB{note}")
        if self.not_estimated:
            out.append(f"  not estimated: {', '.join(self.not_estimated)}")
        return out


def _interval(value: Any, default: float) -> float:
    if value is None:
        return default
    try:
        return float(value) if isinstance(value, int | float) else units.parse_duration(value)
    except ValueError:
        return default


def adjacency(topo: Any) -> dict[str, set[str]]:
    """Neighbours of each node: links, and every member of a shared segment. Pure."""
    adj: dict[str, set[str]] = {n.name: set() for n in topo.nodes}
    for link in topo.links:
        adj[link.a].add(link.b)
        adj[link.b].add(link.a)
    for seg in topo.segments:
        for m in seg.members:
            adj[m].update(x for x in seg.members if x != m)
    return adj


def interfaces(topo: Any) -> dict[str, int]:
    """Mesh interfaces per node: one per link end, one per segment membership."""
    out = {n.name: 0 for n in topo.nodes}
    for link in topo.links:
        out[link.a] += 1
        out[link.b] += 1
    for seg in topo.segments:
        for m in seg.members:
            out[m] += 1
    return out


def hops(adj: Mapping[str, Iterable[str]], src: str, dst: str) -> int | None:
    """Shortest path length src..dst in hops (breadth first); None: unreachable."""
    if src == dst:
        return 0
    seen = {src}
    todo = deque([(src, 0)])
    while todo:
        cur, d = todo.popleft()
        for nb in adj.get(cur, ()):
            if nb == dst:
                return d + 1
            if nb not in seen:
                seen.add(nb)
                todo.append((nb, d + 1))
    return None


def flow_pps(flow: Any) -> float | None:
    """Packets per second on the path of a flow (both directions counted: an echo and
    its reply, a request and its response); None: a tcp flow without a rate cap."""
    kind = flow.kind
    if kind == "tcp":
        if flow.rate_bps is None:
            return None
        return 1.05 * flow.rate_bps / (8 * 1448)  # full segments, and their acks
    rate = flow.rate_pps
    if rate is None and kind == "udp" and flow.rate_bps is not None:
        rate = flow.rate_bps / (8 * flow.size)
    if rate is None:
        rate = {"udp": 100.0, "ping": 10.0, "rr": 10.0}.get(kind, 100.0)
    return rate * (2 if kind in ("ping", "rr") else 1)


def estimate(
    topo: Any,
    flows: Sequence[Any],
    cal: Calibration,
    *,
    route_interval: float | None = 1.0,
    probes: Sequence[str] = (),
    processes: Sequence[str] = (),
) -> Estimate:
    """The CPU and memory a mesh with its flows, probes and recorder will need. Pure."""
    c = cal.costs
    n = len(topo.nodes)
    ifaces = interfaces(topo)
    n_if = sum(ifaces.values())
    parts = [
        Part("namespaces", 0.0, n * c["namespace_mb"] + n_if * c["interface_mb"],
             f"{n} nodes, {n_if} interfaces"),
    ]  # fmt: skip
    backend = topo.routing
    routes = n * (n - 1) if backend != "none" else 0
    routing = Part("routing", 0.0, routes * c["route_kb"] / 1024, f"{backend}, {routes} routes")
    not_estimated = []
    row = cal.routing.get(backend)
    if backend not in ("none", "static") and row is None:
        not_estimated.append(f"routing {backend} (no calibration for it)")
    elif row is not None:
        key = INTERVAL_SETTING.get(backend)
        base = _interval(topo.routing_settings.get(key), 1.0) if key else 1.0
        cores = 0.0
        for node in topo.nodes:
            mine = (node.settings.get("routing") or {}).get(key) if key else None
            interval = _interval(mine, base)
            per_if = row["iface_cores"] + row["iface_node_cores"] * n
            per_if += row.get("iface_node_iface_cores", 0.0) * n * n_if
            cores += ifaces[node.name] * per_if * row["interval_s"] / max(interval, 1e-3)
        routing.cores = cores
        routing.memory_mb += n * row["daemon_mb"]
        routing.note += f", interval {base:g} s"
    parts.append(routing)
    adj = adjacency(topo)
    share = 1.0 + c["probe_packet_share"] * len(probes)
    traffic = Part("traffic", 0.0, 2 * len(flows) * c["agent_mb"], f"{len(flows)} flows")
    pps_total = 0.0
    for f in flows:
        pps = flow_pps(f)
        if pps is None:
            traffic.cores += c["tcp_bulk_cores"]
            continue
        h = hops(adj, f.src, f.dst) or 0
        pps_total += pps
        traffic.cores += c.get("flow_cores", 0.0)
        traffic.cores += pps * (c["packet_end_core_s"] + h * c["packet_hop_core_s"]) * share
    if flows:
        traffic.note += f", {pps_total:.0f} pps"
    parts.append(traffic)
    if probes:
        parts.append(Part("probes", 0.0, len(probes) * c["probe_mb"], ", ".join(probes)))
    if route_interval is not None:  # None: no run, no recorder (`meshstress up`)
        rec = row or {}
        per_snapshot = n * rec.get("snapshot_node_core_s", c["snapshot_node_core_s"])
        entry = rec.get("snapshot_entry_core_s", c.get("snapshot_entry_core_s", 0.0))
        per_snapshot += n * (n - 1) * entry
        parts.append(
            Part("recorder", per_snapshot / max(route_interval, 1e-3), 0.0,
                 f"a snapshot every {route_interval:g} s")
        )  # fmt: skip
    parts.append(Part("meshstress", 0.0, c["meshstress_mb"] + n * c["meshstress_node_mb"]))
    not_estimated += [f"process {p}" for p in processes]
    return Estimate(parts, cal.source, cal.default, not_estimated)


def estimate_scenario(sc: Any, cal: Calibration) -> Estimate:
    """estimate() for a Scenario."""
    return estimate(
        sc.topology, sc.flows, cal, route_interval=sc.route_interval, probes=sc.probes,
        processes=[p.name for p in sc.processes],
    )  # fmt: skip


# --- where the costs come from -----------------------------------------------------


def where_of(chosen: str | None, env: Mapping[str, str]) -> str:
    """Whose costs a run uses: "lab" when it runs in the VM lab (`chosen` "lab", or
    this process is inside the lab's guest: LAB_GUEST_ENV, or the runner's lab label),
    else "host". Pure."""
    if chosen == "lab" or env.get(LAB_GUEST_ENV) == "1":
        return "lab"
    return "lab" if env.get("MESHSTRESS_WHERE_LABEL") == "lab" else "host"


def stored_path(where: str = "host") -> str:
    """Where calibrate.py stores the costs of `where` ("host" or "lab")."""
    return STORED_LAB if where == "lab" else STORED


def packaged_default(where: str = "host") -> Calibration:
    """meshstress/data/calibration.json: measured on the project's own 2-core host;
    calibration-lab.json: in the VM lab on that host (software-emulated, 2 vCPUs)."""
    from importlib import resources

    name = PACKAGED["lab" if where == "lab" else "host"]
    res = resources.files("meshstress") / "data" / name
    cal = parse_calibration(res.read_text(), f"meshstress/data/{name}")
    cal.default = True
    return cal


def lab_capacity(cal: Calibration) -> tuple[int, float, float]:
    """(cores, MB available, cores busy now) of the VM lab as its calibration recorded
    them (the guest's vCPUs and MemAvailable; nobody else uses a guest). Pure."""
    cpus = cal.host.get("cpus")
    mem = cal.host.get("mem_available_mb")
    cores = cpus if isinstance(cpus, int) and cpus > 0 else 2
    avail = float(mem) if isinstance(mem, int | float) and mem > 0 else 1500.0
    return cores, avail, 0.0


def load_calibration(path: str | None = None, where: str = "host") -> Calibration:
    """The calibration at `path`; without one, the stored one of `where` (STORED, or
    STORED_LAB for "lab") when there is one, else that place's packaged default
    (Calibration.default is then True). A file that is not ours (a symlink, not owned
    by root or by us, writable by others) or that does not parse raises InputError
    naming it."""
    import os

    from meshstress import safefs

    target = path or stored_path(where)
    if path is None and not os.path.lexists(target):
        return packaged_default(where)
    try:
        st = os.lstat(target)
    except OSError as exc:
        raise InputError(target, "file", exc.strerror or "cannot read") from None
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        raise InputError(target, "file", "not owned by root or writable by others: not trusted")
    directory, name = os.path.split(os.path.abspath(target))
    try:
        data = safefs.read_bytes(directory, name, limit=1 << 20)
    except (OSError, MeshstressError) as exc:
        raise InputError(target, "file", str(exc)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(target, "file", "not UTF-8 text") from None
    return parse_calibration(text, target)


def store_calibration(cal: Calibration, path: str = STORED) -> str:
    """Write `cal` to `path` (root-owned when run as root), atomically, through safefs."""
    import os

    from meshstress import safefs

    directory, name = os.path.split(os.path.abspath(path))
    safefs.make_dir(directory)
    safefs.write_file(directory, name, json.dumps(cal.to_json(), indent=1) + "\n", mode=0o644)
    return path


def verdict(
    est: Estimate,
    cores: int,
    mem_available_mb: float,
    busy_now_cores: float = 0.0,
    busy_limit: float = 0.95,
) -> tuple[list[str], str | None]:
    """Pure: (lines to print, the one-line refusal for --strict or None). The refusal
    weighs the estimate alone against the host; the warnings also count what others
    use now (a shared host)."""
    lines = est.lines()
    lines.append(
        f"host: {cores} cores ({busy_now_cores:.2f} in use now), "
        f"{mem_available_mb:.0f} MB available"
    )
    alone = est.exceeds(cores, mem_available_mb, busy_limit)
    now = est.exceeds(cores, mem_available_mb, busy_limit, busy_now_cores)
    for problem in now:
        lines.append(f"warning: the scenario may saturate this host: {problem}")
    refuse = None
    if alone:
        refuse = "capacity: this host is too small for the scenario: " + "; ".join(alone)
    return lines, refuse
