"""`meshstress topo ...`: generate and summarise topology files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import click

from meshstress.model import generators, units
from meshstress.model.topofile import dumps_meshnet_json, dumps_toml, load, loads_toml
from meshstress.model.topology import DEFAULT_PREFIX, LINK_MODELS, ROUTINGS, Impairment, Topology

# kind -> (argument names, builder)
_GEN_ARGS: dict[str, tuple[str, ...]] = {
    "line": ("N",),
    "ring": ("N",),
    "star": ("N",),
    "full": ("N",),
    "grid4": ("W", "H"),
    "grid8": ("W", "H"),
    "tree": ("N", "FANOUT"),
    "random": ("N",),
}


@click.group()
def topo() -> None:
    """Generate and inspect topology files."""


def _parse_opt(value: str | None, parse: Any, name: str) -> Any:
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


@topo.command("gen")
@click.argument("kind", type=click.Choice(list(_GEN_ARGS)))
@click.argument("args", nargs=-1, type=int)
@click.option("--seed", type=int, default=0, show_default=True, help="random: the seed")
@click.option("--radius", type=float, default=None, help="random: link radius (unit square)")
@click.option(
    "--degree",
    type=float,
    default=4.0,
    show_default=True,
    help="random: target mean degree (when no --radius)",
)
@click.option("--loss", default=None, help="loss on every link, both directions, e.g. 5%")
@click.option("--delay", default=None, help="delay on every link, e.g. 10ms")
@click.option("--jitter", default=None, help="jitter on every link, e.g. 2ms")
@click.option("--rate", default=None, help="rate limit on every link, e.g. 10mbit")
@click.option("--model", type=click.Choice(list(LINK_MODELS)), default="veth", show_default=True)
@click.option("--routing", type=click.Choice(list(ROUTINGS)), default="none", show_default=True)
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True)
@click.option("--name", default=None, help="topology name (default: e.g. grid4-10x10)")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["toml", "json"]),
    default="toml",
    show_default=True,
    help="toml (meshstress) or json (meshnet-lab: nodes and links, loss as tq)",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="write here instead of stdout",
)
def gen(
    kind: str,
    args: tuple[int, ...],
    seed: int,
    radius: float | None,
    degree: float,
    loss: str | None,
    delay: str | None,
    jitter: str | None,
    rate: str | None,
    model: str,
    routing: str,
    prefix: str,
    name: str | None,
    fmt: str,
    output: str | None,
) -> None:
    """Write a generated topology as TOML (or meshnet-lab JSON).

    \b
    KIND and ARGS:
      line N | ring N | star N | full N
      grid4 W H | grid8 W H          (4 or 8 neighbours)
      tree N FANOUT                  (N nodes, breadth-first)
      random N [--radius R | --degree D] [--seed S]
    """
    want = _GEN_ARGS[kind]
    if len(args) != len(want):
        raise click.UsageError(
            f"{kind} takes {len(want)} argument(s): {' '.join(want)}, got {len(args)}"
        )
    imp = Impairment(
        loss=_parse_opt(loss, units.parse_fraction, "--loss") or 0.0,
        delay=_parse_opt(delay, units.parse_duration, "--delay") or 0.0,
        jitter=_parse_opt(jitter, units.parse_duration, "--jitter") or 0.0,
        rate=_parse_opt(rate, units.parse_rate, "--rate"),
    )
    common: dict[str, Any] = {
        "impairment": imp,
        "model": model,
        "prefix": prefix,
        "routing": routing,
    }
    try:
        if kind == "random":
            t = generators.random_geometric(
                args[0], radius=radius, degree=degree, seed=seed, **common
            )
        elif kind in ("grid4", "grid8", "tree"):
            t = getattr(generators, kind)(args[0], args[1], **common)
        else:
            t = getattr(generators, kind)(args[0], **common)
    except ValueError as exc:
        raise click.UsageError(f"{kind}: {exc}") from None
    if name is not None:
        t.name = name
    # what we write must load: this also validates --prefix against the node count
    loads_toml(dumps_toml(t), output or "<generated>")
    if fmt == "json":
        try:
            text = dumps_meshnet_json(t)
        except ValueError as exc:
            raise click.UsageError(f"--format json: {exc}") from None
    else:
        text = dumps_toml(t)
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


def summary(t: Topology) -> dict[str, Any]:
    """The facts `topo show` prints, as a plain dict."""
    deg = t.degree()
    values = list(deg.values())
    impaired = sum(1 for link in t.links if not (link.ab.is_ideal() and link.ba.is_ideal()))
    impaired_segments = sum(1 for s in t.segments if not s.egress.is_ideal())
    return {
        "name": t.name,
        "source": t.source,
        "nodes": len(t.nodes),
        "links": len(t.links),
        "segments": len(t.segments),
        "segment_members": sum(len(s.members) for s in t.segments),
        "degree": {
            "min": min(values),
            "mean": round(sum(values) / len(values), 3),
            "max": max(values),
        },
        "connected": t.is_connected(),
        "diameter": _diameter(t),
        "routing": t.routing,
        "routing_settings": dict(t.routing_settings),
        "prefix": t.prefix,
        "link_models": dict(sorted(Counter(link.model for link in t.links).items())),
        "link_kinds": dict(sorted(Counter(link.kind or "-" for link in t.links).items())),
        "impaired_links": impaired,
        "impaired_segments": impaired_segments,
    }


def _diameter(t: Topology) -> int | None:
    """Topology.diameter with the adjacency built once (660 nodes in well under 1 s)."""
    if not t.is_connected():
        return None
    adj = {k: list(v) for k, v in t.adjacency().items()}
    best = 0
    for start in adj:
        dist = {start: 0}
        frontier = [start]
        d = 0
        while frontier:
            d += 1
            nxt = []
            for u in frontier:
                for v in adj[u]:
                    if v not in dist:
                        dist[v] = d
                        nxt.append(v)
            frontier = nxt
        best = max(best, d - 1)
    return best


@topo.command("show")
@click.argument("file", type=str)
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def show(file: str, as_json: bool) -> None:
    """Summarise a topology file (.toml or meshnet-lab .json)."""
    t = load(file)
    s = summary(t)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    deg = s["degree"]
    models = ", ".join(f"{k} {v}" for k, v in s["link_models"].items()) or "-"
    kinds = ", ".join(f"{k} {v}" for k, v in s["link_kinds"].items()) or "-"
    settings = ", ".join(f"{k}={v}" for k, v in s["routing_settings"].items())
    rows = [
        ("name", s["name"]),
        ("nodes", s["nodes"]),
        ("links", s["links"]),
        ("segments", f"{s['segments']} ({s['segment_members']} memberships)"),
        ("degree", f"min {deg['min']}, mean {deg['mean']:g}, max {deg['max']}"),
        ("diameter", "disconnected" if s["diameter"] is None else f"{s['diameter']} hops"),
        ("routing", s["routing"] + (f" ({settings})" if settings else "")),
        ("prefix", s["prefix"]),
        ("link models", models),
        ("link types", kinds),
        ("impaired", f"{s['impaired_links']} links, {s['impaired_segments']} segments"),
    ]
    for key, value in rows:
        click.echo(f"{key + ':':<13}{value}")
