"""`meshstress up/down/status/exec/clean/doctor`: the host mesh from the command line."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import click
import psutil

from meshstress import build
from meshstress.build import netns, plan, state
from meshstress.build.bringup import bring_up
from meshstress.errors import CapabilityError, InputError, MeshstressError
from meshstress.model.topology import Topology


def require_root() -> None:
    if os.geteuid() != 0:
        raise CapabilityError("this needs root (network namespaces): run it with sudo")


def load_topology(path: str, routing: str | None, prefix: str | None) -> Topology:
    from meshstress.model import topofile

    topo = topofile.load(path)
    if routing:
        topo.routing = routing
    if prefix:
        try:
            net = ipaddress.IPv4Network(prefix, strict=False)
        except ValueError as exc:
            raise InputError("--prefix", "prefix", str(exc)) from None
        if net.num_addresses - 2 < len(topo.nodes):
            raise InputError("--prefix", "prefix", f"{prefix} has too few addresses")
        topo.prefix = str(net)
    return topo


def pick_run(run_id: str | None) -> state.RunState:
    if run_id:
        st = state.load(run_id)
        if st is None:
            raise MeshstressError(f"no run {run_id!r} (see `meshstress status`)")
        return st
    runs = state.all_runs()
    if not runs:
        raise MeshstressError("no run is up (start one with `meshstress up TOPOLOGY`)")
    if len(runs) > 1:
        ids = ", ".join(r.run_id for r in runs)
        raise MeshstressError(f"several runs are up ({ids}): pick one with --run")
    return runs[0]


def _echo_err(msg: str) -> None:
    click.echo(msg, err=True)


@click.command()
@click.argument("topology", type=click.Path(dir_okay=False))
@click.option(
    "--routing",
    type=click.Choice(["none", "static", "babeld", "batmand", "batman-adv"]),
    help="Routing backend (overrides the file's topology.routing).",
)
@click.option("--run", "run_id", help="Run id (1-6 lowercase letters/digits); random by default.")
@click.option("--prefix", help="Address prefix for the nodes, e.g. 10.201.0.0/16.")
@click.option(
    "--wait/--no-wait",
    default=None,
    help="Wait for routing to converge [default: unless routing is none].",
)
@click.option("--timeout", default=120.0, show_default=True, help="Convergence timeout (s).")
@click.option("--ideal", is_flag=True, help="Leave out the topology's loss, delay and rate.")
@click.option("--dry-run", is_flag=True,
              help="Print the plan as JSON and estimate the CPU and memory (to stderr); "
                   "create nothing.")  # fmt: skip
@click.option("--strict", is_flag=True,
              help="With --dry-run: exit 3 when the estimate exceeds this host.")
@click.option("--calibration", type=click.Path(dir_okay=False), default=None,
              help="Per-unit costs for the estimate [default: the stored, else packaged].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def up(
    topology: str,
    routing: str | None,
    run_id: str | None,
    prefix: str | None,
    wait: bool | None,
    timeout: float,
    ideal: bool,
    dry_run: bool,
    strict: bool,
    calibration: str | None,
    as_json: bool,
) -> None:
    """Build the mesh described by TOPOLOGY (.toml or meshnet-lab .json)."""
    topo = load_topology(topology, routing, prefix)
    if run_id is not None and not plan.RUN_ID_RE.match(run_id):
        raise InputError("--run", "run", "use 1-6 lowercase letters or digits")
    if dry_run:
        p = plan.make_plan(topo, run_id or "dry", impair=not ideal)
        click.echo(json.dumps(p.to_json(), indent=1))
        _capacity(topo, calibration, strict)
        return
    require_root()
    brought = bring_up(topo, run_id, wait=wait, timeout=timeout, say=_echo_err, impair=not ideal)
    st, info = brought.state, brought.info
    if as_json:
        click.echo(json.dumps(info))
        sys.exit(1 if info.get("converged") is False else 0)
    msg = (
        f"run {st.run_id}: {info['nodes']} nodes, {info['links']} links, "
        f"{info['segments']} segments up in {info['setup_s']:.2f} s"
    )
    if info["impaired_interfaces"]:
        msg += f" ({info['impaired_interfaces']} impaired interfaces)"
    if "convergence_s" in info:
        verdict = "converged" if info["converged"] else "NOT converged"
        msg += f"; {topo.routing} {verdict} in {info['convergence_s']:.2f} s"
    click.echo(msg)
    click.echo(f"  meshstress exec NODE -- CMD     (nodes: {_sample(list(st.node_ns))})")
    click.echo(f"  meshstress down --run {st.run_id}")
    if info.get("converged") is False:
        _echo_err(
            f"meshstress: {topo.routing} did not converge within {timeout:g} s "
            f"({info.get('missing_pairs', '?')} pairs unreachable); the mesh stays up"
        )
        sys.exit(1)


def _capacity(topo: Topology, calibration: str | None, strict: bool) -> None:
    """The mesh's estimated CPU and memory (no traffic, no recorder) to stderr; with
    `strict`, CapabilityError (exit 3) when it exceeds this host."""
    from meshstress.model import capacity
    from meshstress.observe.cpu import host_capacity

    cal = capacity.load_calibration(calibration, capacity.where_of(None, os.environ))
    est = capacity.estimate(topo, [], cal, route_interval=None)
    lines, refuse = capacity.verdict(est, *host_capacity())
    for line in lines:
        _echo_err(f"meshstress: {line}")
    if refuse and strict:
        raise CapabilityError(refuse)


def _sample(names: Sequence[str], n: int = 5) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


@click.command()
@click.option("--run", "run_id", help="Which run (default: the only one).")
@click.option("--all", "all_runs", is_flag=True, help="Tear down every recorded run.")
def down(run_id: str | None, all_runs: bool) -> None:
    """Tear a run down: processes, namespaces, links, files."""
    require_root()
    runs = state.all_runs() if all_runs else [pick_run(run_id)]
    for st in runs:
        t0 = time.monotonic()
        problems = build.teardown(st)
        for p in problems:
            _echo_err(f"meshstress: {p}")
        click.echo(f"run {st.run_id}: down in {time.monotonic() - t0:.2f} s")
        if problems:
            sys.exit(1)


@click.command()
@click.option("--run", "run_id", help="Only this run.")
@click.option("--json", "as_json", is_flag=True)
def status(run_id: str | None, as_json: bool) -> None:
    """Show the runs that are up."""
    runs = [pick_run(run_id)] if run_id else state.all_runs()
    present = set(netns.list_names())
    rows = []
    for st in runs:
        alive = 0
        for rec in st.processes:
            try:
                if abs(psutil.Process(rec.pid).create_time() - rec.create_time) < 0.05:
                    alive += 1
            except psutil.NoSuchProcess:
                pass
        rows.append(
            {
                "run": st.run_id,
                "topology": st.topology,
                "status": st.status,
                "routing": st.routing,
                "nodes": len(st.node_ns),
                "namespaces_present": sum(1 for n in st.namespaces if n in present),
                "namespaces": len(st.namespaces),
                "processes_alive": alive,
                "processes": len(st.processes),
                "age_s": round(time.time() - st.created, 1),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        click.echo("no runs")
        return
    for r in rows:
        click.echo(
            f"{r['run']}: {r['topology']} {r['status']}, {r['nodes']} nodes, "
            f"namespaces {r['namespaces_present']}/{r['namespaces']}, routing "
            f"{r['routing']}, processes {r['processes_alive']}/{r['processes']}, "
            f"up {r['age_s']} s"
        )


def expand_node_refs(arg: str, addresses: dict[str, str]) -> str:
    """'@n5' -> n5's address, at the start of an argument or after '=', ':' or ','
    ('--host=@n5'); '@@' there is a literal '@'; 'user@n5' is left alone. An unknown
    node is an error, not a silent string."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "@":
            return "@"
        if name not in addresses:
            raise InputError("exec", "command", f"@{name}: no such node in this run")
        return addresses[name].split("/")[0]

    return re.sub(r"(?:^|(?<=[=:,]))@(@|[A-Za-z0-9_][A-Za-z0-9_-]*)", sub, arg)


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--run", "run_id", help="Which run (default: the only one).")
@click.argument("node")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(run_id: str | None, node: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside NODE's network namespace; @NODE stands for that node's address:
    meshstress exec n0 -- ping -c3 @n2"""
    require_root()
    st = pick_run(run_id)
    ns = build.Mesh(st).ns(node)
    argv = [expand_node_refs(a, st.node_addresses) for a in command]
    netns.enter_for_exec(ns)
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        _echo_err(f"meshstress: {argv[0]}: command not found")
        sys.exit(127)


@click.command()
@click.option("--run", "run_id", help="Which run (default: the only one).")
@click.argument("nodes", nargs=-1)
@click.option(
    "--watch",
    type=float,
    default=0.0,
    help="Record route snapshots for this many seconds and count next-hop changes.",
)
@click.option(
    "--interval",
    type=float,
    default=0.5,
    show_default=True,
    help="Seconds between snapshots with --watch.",
)
@click.option("--json", "as_json", is_flag=True)
def routes(
    run_id: str | None, nodes: tuple[str, ...], watch: float, interval: float, as_json: bool
) -> None:
    """Routing tables per node: next hop, hops and metric to every other node
    (batman-adv: from the originator table). With --watch, count route flaps."""
    require_root()
    from meshstress.routing import get_backend, record_routes, route_changes

    st = pick_run(run_id)
    backend = get_backend(st.routing, {}, source=st.source or st.run_id)
    all_nodes = list(st.node_ns)
    with build.Mesh(st) as mesh:
        for n in nodes:
            mesh.ns(n)  # unknown node: one line, before anything is read
        wanted = list(nodes) or all_nodes
        snaps = record_routes(mesh, backend, watch, interval)
        metrics = {n: backend.routes(mesh, n) for n in wanted}
    last = snaps[-1]
    table = {
        n: {
            dst: {
                "next_hop": nh,
                "hops": hops,
                "metric": metrics[n][dst].metric if dst in metrics[n] else None,
            }
            for dst, (nh, hops) in sorted(last.routes.get(n, {}).items())
        }
        for n in wanted
    }
    flaps = route_changes(snaps)
    if as_json:
        out: dict[str, Any] = {"run": st.run_id, "routing": st.routing, "routes": table}
        if watch:
            out["snapshots"] = len(snaps)
            out["changes"] = [
                {"node": a, "dst": b, "changes": c}
                for (a, b), c in sorted(flaps.items())
                if a in wanted
            ]
        click.echo(json.dumps(out, indent=1))
        return
    for n in wanted:
        row = table[n]
        missing = [d for d in all_nodes if d != n and d not in row]
        click.echo(
            f"{n} ({st.routing}): {len(row)} destinations"
            + (f", no route to {_sample(missing)}" if missing else "")
        )
        for dst, r in row.items():
            metric = "" if r["metric"] is None else f"  metric {r['metric']:g}"
            click.echo(
                f"  {dst:>12} via {r['next_hop'] or '?':<12} hops {r['hops'] or '?'}{metric}"
            )
    if watch:
        changed = {k: v for k, v in flaps.items() if k[0] in wanted}
        click.echo(
            f"{len(snaps)} snapshots over {watch:g} s: "
            f"{sum(changed.values())} next-hop changes on {len(changed)} routes"
        )


@click.command()
@click.option(
    "--all",
    "sweep_all",
    is_flag=True,
    help="Also sweep every ms-* object with no state file (and the VM lab's).",
)
def clean(sweep_all: bool) -> None:
    """Remove what runs left behind: by state file, then by prefix and mark. A run whose
    owner is still alive (a `meshstress run` or a test in progress) is left alone."""
    require_root()
    runs: list[state.RunState] = []
    live: list[state.RunState] = []
    for st in state.all_runs():
        (live if state.owner_alive(st) else runs).append(st)
    for st in live:
        click.echo(f"run {st.run_id}: left, its owner (PID {st.owner_pid}) is still running")
    for st in runs:
        problems = build.teardown(st, timeout=15)
        for p in problems:
            _echo_err(f"meshstress: {p}")
        click.echo(f"run {st.run_id}: removed")
    removed, spared, alive = build.sweep(
        None if sweep_all else [r.run_id for r in runs], keep=[r.run_id for r in live]
    )
    for name in removed:
        click.echo(f"swept {name}")
    for name in spared:
        click.echo(f"left {name}: named like meshstress's, but not marked as made by it")
    for name in alive:
        click.echo(f"left {name}: the run that made it is still running (its owner is alive)")
    if sweep_all:
        from meshstress.lab import runner

        for name in runner.reap_stale():
            click.echo(f"lab: removed {name}")
    if not runs and not removed:
        click.echo("nothing to clean")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json: bool) -> None:
    """What this host can do, and how to get what it lacks."""
    from meshstress import doctor as doc

    checks = doc.run_checks()
    runs, verdict = doc.default_scenario_verdict(checks)
    if as_json:
        click.echo(json.dumps(doc.as_json(checks), indent=1))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="meshstress doctor")
        for col in ("capability", "ok", "detail", "remedy"):
            table.add_column(col)
        for c in checks:
            table.add_row(c.name, "[green]yes[/]" if c.ok else "[red]no[/]", c.detail, c.remedy)
        Console().print(table)
    # exit 3 (a missing capability) when the default scenario can run nowhere
    click.echo(f"meshstress: {verdict}", err=as_json or not runs)
    if not runs:
        sys.exit(CapabilityError.exit_code)


