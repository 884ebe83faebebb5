"""A run folder from a results dict: results.json first; summary.txt, junit.xml and plots
are views of the same JSON, so `meshstress report DIR` can render them again later.

Pure rendering (`summary`, `junit`) apart from the writers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

from meshstress import safefs
from meshstress.report import sweep as sweep_report

if TYPE_CHECKING:
    from meshstress.model.scenario import Scenario

# The layout of results.json. Raise it when a key changes meaning or moves (adding keys
# does not); `meshstress report` renders older files as far as their keys allow.
SCHEMA_VERSION = 2


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _rate(bps: Any) -> str:
    if not isinstance(bps, int | float):
        return "-"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.3g} {unit}"
    return f"{bps:.0f} bit/s"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]  # fmt: skip


def _get(d: Mapping[str, Any], *path: str) -> Any:
    node: Any = d
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            return None
        node = node[p]
    return node


def verdict_word(results: Mapping[str, Any]) -> str:
    """INVALID (the host was saturated: exit 4) before PASSED or FAILED."""
    if results.get("valid") is False:
        return "INVALID"
    return "PASSED" if results.get("passed") else "FAILED"


def invalid_line(results: Mapping[str, Any]) -> str | None:
    """The one line saying why a run is invalid (None when it is valid)."""
    if results.get("valid") is False:
        return f"INVALID: {results.get('validity')}"
    return None


def summary(results: Mapping[str, Any]) -> str:
    """A human summary of a results dict (what `meshstress run` prints at the end)."""
    run = results.get("run", {})
    mesh = results.get("mesh", {})
    verdict = verdict_word(results)
    lines = [
        f"scenario {run.get('scenario')} ({run.get('source')}) on {run.get('where')}, "
        f"kernel {run.get('kernel')}: {verdict}",
        f"mesh: {mesh.get('nodes')} nodes, {mesh.get('links')} links, "
        f"{mesh.get('segments')} segments, routing {mesh.get('routing')}; "
        f"built in {_fmt(mesh.get('setup_s'))} s; converged: {_fmt(mesh.get('converged'))} "
        f"in {_fmt(mesh.get('convergence_s'))} s; torn down in {_fmt(mesh.get('teardown_s'))} s",
    ]
    flows = results.get("flows") or {}
    if flows:
        lines.append("flows:")
        rows = [["name", "kind", "path", "sent", "received", "delivery", "p50 ms", "p99 ms",
                 "longest outage s", "throughput", "retrans"]]  # fmt: skip
        rr = any(f.get("kind") == "rr" for f in flows.values())
        if rr:  # request/response flows: sent = requests decided, received = answered
            rows[0].append("attempts/ok")
        for name, f in flows.items():
            if f.get("kind") == "rr":  # requests, answered, success ratio
                f = {**f, "sent": f.get("decided"), "received": f.get("ok"),
                     "delivery_ratio": f.get("success_ratio")}  # fmt: skip
            lat = next(
                (v for v in (f.get("latency_ms"), f.get("rtt_ms")) if isinstance(v, dict)), {}
            )
            rows.append(
                [
                    name,
                    str(f.get("kind")),
                    f"{f.get('from')}->{f.get('to')}",
                    _fmt(f.get("sent")),
                    _fmt(f.get("received")),
                    _fmt(f.get("delivery_ratio"), 4),
                    _fmt(lat.get("p50")),
                    _fmt(lat.get("p99")),
                    _fmt(f.get("longest_outage_s")),
                    _rate(f.get("throughput_bps") or f.get("goodput_bps")),
                    _fmt(f.get("retransmission_rate")),
                ]
                + ([_fmt(f.get("attempts_per_success"))] if rr else [])
            )
        lines += _table(rows)
    lines += _process_lines(results.get("process") or {})
    events = results.get("events") or []
    if events:
        lines.append(
            "events (t: when the action began; recovery: from then until each flow "
            "delivered again):"
        )
        rows = [["t s", "action", "target", "took s", "late s", "recovery s"]]
        for ev in events:
            rec = ev.get("recovery_s") or {}
            rows.append(
                [
                    _fmt(ev.get("t_rel")),
                    str(ev.get("action")),
                    str(ev.get("target", "")),
                    _fmt(ev.get("took_s")),
                    _fmt(ev.get("late_s")),
                    ", ".join(f"{k} {_fmt(v)}" for k, v in rec.items()) or "-",
                ]
            )
        lines += _table(rows)
    lines += sweep_report.table_lines(results)
    routing = results.get("routing") or {}
    if routing.get("snapshots"):
        lines.append(
            f"routing: {routing.get('route_changes')} route changes over "
            f"{routing.get('snapshots')} snapshots; pairs with a route: min "
            f"{_fmt(routing.get('reachable_min'))}, "
            f"at the end {_fmt(routing.get('reachable_final'))}"
        )
    totals = (results.get("probes") or {}).get("totals")
    if totals:
        top = ", ".join(f"{k} {v}" for k, v in list(totals["drop_reasons"].items())[:3])
        share = totals.get("batman_control_share")
        lines.append(
            f"probes: {totals['tx_packets']} packets sent on mesh interfaces; "
            f"{totals['drops']} drops ({top or 'none'}); "
            f"{totals['tcp_retransmits']} TCP retransmissions; batman-adv signalling "
            f"{totals['batman_control_tx_bytes']} bytes"
            + (f" ({share:.1%} of bytes sent)" if share is not None else "")
        )
    lines += capture_lines(results.get("capture") or {})
    host = run.get("host") or {}
    if host:
        lines.append(
            f"host: CPU {_fmt(host.get('cpu_mean_pct'))}% busy on average, "
            f"{_fmt(host.get('cpu_max_pct'))}% at most; "
            f"{_fmt(host.get('softnet_dropped'))} softnet backlog drops"
        )
    why = invalid_line(results)
    if why:
        lines.append(why)
    checks = results.get("checks") or []
    if checks:
        lines.append("checks:")
        for c in checks:
            if "explanation" in c or c.get("check"):  # a curve check: its own words
                lines.append(sweep_report.check_line(c))
                continue
            mark = "PASS" if c.get("passed") else "FAIL"
            extra = f" ({c['error']})" if c.get("error") else ""
            lines.append(f"  {mark} {c.get('assert')}: measured {_fmt(c.get('actual'), 4)}{extra}")
    else:
        lines.append("checks: none (add [verdict] assert = [...] to decide pass or fail)")
    return "\n".join(lines) + "\n"


def _process_lines(processes: Mapping[str, Any]) -> list[str]:
    """The [[process]] table of the summary: readiness, exits, and each metric's mean
    (k of n for 0/1 metrics)."""
    if not processes:
        return []
    rows = [["name", "nodes", "ready s", "exit code", "restarts", "ended early", "metrics"]]
    for name, p in processes.items():
        metrics = []
        for m, v in (p.get("metrics") or {}).items():
            count = f"{v.get('k')}/{v.get('n')}" if "k" in v else f"n={v.get('count')}"
            metrics.append(f"{m} {_fmt(v.get('mean'), 4)} ({count})")
        rows.append(
            [
                name,
                ",".join(p.get("nodes") or []),
                _fmt(p.get("ready_s")),
                "stopped" if p.get("exit_code") is None else str(p.get("exit_code")),
                _fmt(p.get("restarts")),
                _fmt(p.get("ended_early")),
                "; ".join(metrics) or "-",
            ]
        )
    return ["processes (metrics: mean over the run):", *_table(rows)]


INVALID_CASE = "run valid (host not saturated)"


def capture_lines(capture: Mapping[str, Any]) -> list[str]:
    """Per node: what the captures saw, and the routing protocol's share of it."""
    nodes = capture.get("nodes") or {}
    if not nodes:
        return []
    files = capture.get("files") or {}
    lines = ["capture (routing signalling per node, from capture/*.pcap):"]
    rows = [["node", "files", "packets", "bytes", "signalling pkts", "signalling bytes",
             "share", "by kind", "ring dropped"]]  # fmt: skip
    for node, n in nodes.items():
        mine = [f for f in files.values() if f.get("node") == node]
        sig = n.get("signalling") or {}
        share = sig.get("share_bytes")
        kinds = ", ".join(
            f"{k.removeprefix('batman:')} {v['packets']}"
            + (f" ({v['ogms']} ogms)" if v.get("ogms", v["packets"]) != v["packets"] else "")
            for k, v in (n.get("kinds") or {}).items()
        )
        rows.append(
            [
                node,
                ",".join(str(f.get("iface")) for f in mine),
                _fmt(n.get("packets")),
                _fmt(n.get("bytes")),
                _fmt(sig.get("packets")),
                _fmt(sig.get("bytes")),
                f"{share:.1%}" if share is not None else "-",
                kinds or "-",
                _fmt(sum(f.get("dropped_old", 0) for f in mine)),
            ]
        )
    return lines + _table(rows)


def junit(results: Mapping[str, Any]) -> str:
    """One JUnit testcase per check, for CI dashboards."""
    checks = results.get("checks") or []
    name = str(_get(results, "run", "scenario") or "scenario")
    failures = sum(1 for c in checks if not c.get("passed"))
    invalid = results.get("valid") is False
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        f'<testsuite name={quoteattr("meshstress." + name)} tests="{len(checks) + invalid}" '
        f'failures="{failures}" errors="{int(invalid)}" skipped="0" '
        f'time="{_get(results, "run", "wall_s") or 0}">',
    ]
    if invalid:  # an error, not a failure: the run measured the host, not the mesh
        msg = str(results.get("validity"))
        case = f"  <testcase classname={quoteattr(name)} name={quoteattr(INVALID_CASE)}>"
        out.append(case)
        out.append(f"    <error message={quoteattr(msg)}>{escape(msg)}</error>")
        out.append("  </testcase>")
    for c in checks:
        case = f"  <testcase classname={quoteattr(name)} name={quoteattr(str(c.get('assert')))}"
        if c.get("passed"):
            out.append(case + "/>")
        else:
            msg = c.get("explanation") or f"measured {c.get('actual')!r}"
            msg += f": {c['error']}" if c.get("error") else ""
            out.append(case + ">")
            out.append(f"    <failure message={quoteattr(msg)}>{escape(msg)}</failure>")
            out.append("  </testcase>")
    out.append("</testsuite>")
    return "\n".join(out) + "\n"


# per flow: the first two of these its series has, in this order (latency on the right)
TIMELINE_SERIES = (
    ("delivery_ratio", "delivered (fraction)"),
    ("success_ratio", "answered (fraction)"),
    ("goodput_bps", "goodput (bit/s)"),
    ("latency_ms", "latency (ms)"),
    ("rtt_ms", "rtt (ms)"),
)


def plot(results: Mapping[str, Any], out_dir: Path) -> list[str]:
    """PNG plots of the flows' time series and the routing reachability, if matplotlib is
    importable; returns the files written (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = sweep_report.plot(results, out_dir, plt)
    flows = results.get("flows") or {}
    events = results.get("events") or []
    series = {n: f.get("series") for n, f in flows.items() if f.get("series")}
    reach = (results.get("routing") or {}).get("reachable_series")
    if not series and not reach:
        return written
    rows = len(series) + (1 if reach else 0)
    fig, axes = plt.subplots(rows, 1, figsize=(9, 2.6 * rows), sharex=True, squeeze=False)
    i = 0
    for name, s in series.items():
        ax = axes[i][0]
        i += 1
        t = s.get("t") or []
        # the flow's delivery (or goodput) on the left axis, its latency over time on
        # the right one (in grey), each labelled with its unit
        shown = [(key, label) for key, label in TIMELINE_SERIES
                 if s.get(key) and len(s[key]) == len(t)]  # fmt: skip
        handles = []
        for axis, (key, label) in zip((ax, ax.twinx() if len(shown) > 1 else None), shown[:2],
                                      strict=False):  # fmt: skip
            if axis is None:
                break
            latency = key in ("latency_ms", "rtt_ms")
            line = axis.plot(t, s[key], label=label, drawstyle="steps-post",
                             color="0.45" if latency and axis is not ax else None)  # fmt: skip
            axis.set_ylabel(label, fontsize=8)
            handles += line
        ax.set_title(f"{name} ({flows[name].get('kind')} {flows[name].get('from')}->"
                     f"{flows[name].get('to')})", fontsize=9)  # fmt: skip
        if handles:
            ax.legend(handles=handles, loc="lower left", fontsize=8)
    if reach:
        ax = axes[i][0]
        ax.plot([r[0] for r in reach], [r[1] for r in reach], drawstyle="steps-post")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title("pairs with a route (fraction)", fontsize=9)
    for row in axes:
        for ev in events:
            if ev.get("t_rel") is not None:
                row[0].axvline(ev["t_rel"], color="red", alpha=0.4, linestyle="--")
    axes[-1][0].set_xlabel("seconds since traffic start (red: events)")
    fig.tight_layout()
    path = out_dir / "timeline.png"
    with safefs.open_write(out_dir, path.name) as f:
        fig.savefig(f, dpi=90, format="png")
    plt.close(fig)
    written.append(str(path))
    return written


def write_all(results: dict[str, Any], out_dir: Path) -> None:
    """results.json first (the source of everything else), then its views. Every file is
    written through meshstress.safefs: a symlink planted in the folder is never followed."""
    safefs.make_dir(out_dir)
    run = results.setdefault("run", {})
    _write_json(results, out_dir)
    views = (
        ("summary.txt", lambda: safefs.write_file(out_dir, "summary.txt", summary(results))),
        ("junit.xml", lambda: safefs.write_file(out_dir, "junit.xml", junit(results))),
        (
            "plots",
            lambda: run.__setitem__("plots", [os.path.basename(p) for p in plot(results, out_dir)]),
        ),
    )
    errors = {}
    for name, render in views:
        try:
            render()
        except Exception as exc:  # a view must never lose the results
            errors[name] = f"{type(exc).__name__}: {exc}"
    if errors:
        run["render_errors"] = errors
    _write_json(results, out_dir)


def _write_json(results: dict[str, Any], out_dir: Path) -> None:
    safefs.write_file(out_dir, "results.json", json.dumps(results, indent=1) + "\n")


def rerender(out_dir: Path) -> dict[str, Any]:
    """Read out_dir/results.json and write the rest again. ValueError when the file is
    not JSON or not the shape `meshstress run` writes (checked by rendering the summary
    before anything is written)."""
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    if not isinstance(results, dict):
        raise ValueError(f"expected an object, got {type(results).__name__}")
    try:
        summary(results)
        write_all(results, out_dir)
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a meshstress results file ({type(exc).__name__}: {exc})") from None
    return results


# --- a self-contained copy of a scenario for the VM lab --------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dumps_scenario_data(data: Mapping[str, Any]) -> str:
    """Scenario data (tables of scalars, arrays of tables) as TOML text."""
    out: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            out.append(f"[{key}]")
            out += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()]
            out.append("")
        elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
            for item in value:
                out.append(f"[[{key}]]")
                out += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in item.items()]
                out.append("")
        else:
            raise TypeError(f"{key}: only tables and arrays of tables at the top")
    return "\n".join(out)


def write_resolved(sc: Scenario, out_dir: Path) -> Path:
    """scenario.toml + topology.toml in out_dir, needing no other file: the topology with
    routing, settings and prefix applied, the rest of the scenario as it was given."""
    from meshstress.model.topofile import dumps_toml

    safefs.write_file(out_dir, "topology.toml", dumps_toml(sc.topology))
    data = {k: v for k, v in sc.raw.items() if k != "mesh"}
    if sc.processes:  # cwd relative to the scenario file: absolute in the copy
        pairs = zip(data["process"], sc.processes, strict=True)
        data["process"] = [dict(raw, cwd=p.cwd) for raw, p in pairs]
    mesh = {k: v for k, v in sc.raw.get("mesh", {}).items()
            if k in ("ideal", "converge_timeout", "require_converged")}  # fmt: skip
    mesh["topology"] = "topology.toml"
    head = {"name": sc.name, **data.pop("scenario", {})}
    ordered = {"scenario": head, "mesh": mesh, **data}
    return safefs.write_file(out_dir, "scenario.toml", dumps_scenario_data(ordered))
