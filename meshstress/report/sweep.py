"""The views of a sweep in a run folder, rendered from results.json's `sweep` (pure apart
from the PNG writer): the degradation table of summary.txt and degradation.png.
(To move into meshstress/report/ with the package layout.)"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshstress import safefs
from meshstress.judge.curves import format_stress, format_value

# per flow kind: the metrics the table shows, in order, and their column titles
TABLE = {
    "udp": (
        ("delivery_ratio", "delivery"),
        ("latency_ms.p50", "p50 ms"),
        ("latency_ms.p99", "p99 ms"),
        ("throughput_bps", "throughput"),
    ),
    "ping": (
        ("delivery_ratio", "delivery"),
        ("rtt_ms.p50", "rtt p50 ms"),
        ("rtt_ms.p99", "rtt p99 ms"),
    ),
    "tcp": (("goodput_bps", "goodput"),),
}
# what degradation.png draws: one panel per metric family, one line per flow
PANELS = (
    ("delivery ratio (%)", ("delivery_ratio",), 100.0),
    ("latency p99 (ms)", ("latency_ms.p99", "rtt_ms.p99"), 1.0),
    ("throughput (Mbit/s)", ("throughput_bps", "goodput_bps"), 1e-6),
)
AXIS_TITLE = {
    "loss": "loss per link direction",
    "delay": "added delay per link direction",
    "jitter": "jitter per link direction",
    "rate": "rate limit per link direction",
    "failed_links": "links down",
    "churn": "node crashes per minute",
}
AXIS_SCALE = {"fraction": (100.0, "%"), "seconds": (1000.0, "ms"), "bit/s": (1e-6, "Mbit/s")}


def _value(metric: str, e: Mapping[str, Any] | None) -> str:
    if not e or e.get("value") is None:
        return "-"
    text = format_value(e["value"], metric)
    if metric.endswith("_bps"):
        text = _rate(e["value"])
    iv = e.get("interval")
    if iv and iv[0] != iv[1]:
        lo, hi = (format_value(x, metric) if not metric.endswith("_bps") else _rate(x) for x in iv)
        text += f" [{lo}, {hi}]"
    if e.get("n") and e.get("k") is not None:
        text += f" ({e['k']}/{e['n']})"
    return text


def _rate(bps: float) -> str:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.3g} {unit}"
    return f"{bps:.0f} bit/s"


def table_lines(results: Mapping[str, Any]) -> list[str]:
    """The degradation tables, one per sweep (several: in time order): a row per step and
    flow (and process), the step's metrics pooled over its repeats with their intervals
    (Clopper-Pearson with the counts for ratios, bootstrap for percentiles, goodput and
    means)."""
    from meshstress.judge.degradation import sweeps_of

    out: list[str] = []
    for sw in sweeps_of(results):
        out += _table_one(sw)
    return out


def _process_rows(sw: Mapping[str, Any]) -> list[list[str]]:
    """A row per step and process metric: `process.NAME.METRIC` of the points."""
    names = [str(n) for n in sw.get("processes") or []]
    metrics = list(
        dict.fromkeys(
            m
            for p in sw["points"]
            for m in (p.get("metrics") or {})
            if m.startswith("process.") and m.split(".")[1] in names
        )
    )
    rows = []
    for m in metrics:
        for p in sw["points"]:
            e = (p.get("metrics") or {}).get(m)
            rows.append([str(p["step"]), str(p["text"]), m[len("process.") :], _value(m, e)])
    return rows


def _table_one(sw: Mapping[str, Any]) -> list[str]:
    if not sw.get("points"):
        return []
    from meshstress.report import _table

    flows: Mapping[str, str] = sw.get("flows") or {}
    rep = sw.get("repeat", 1)
    start = sw.get("start_s")
    lines = [
        f"degradation over {sw.get('axis')} ({len(sw['points'])} steps of "
        f"{sw.get('step_s'):g} s, first {sw.get('settle_s'):g} s not measured"
        + (f", from t = {start:g} s" if start else "")
        + (f", {rep} repeats pooled" if rep and rep > 1 else "")
        + (", a fresh mesh per step" if sw.get("fresh") else "")
        + "; 99% intervals):"
    ]
    for name, kind in flows.items():
        cols = TABLE.get(kind, (("delivery_ratio", "delivery"),))
        rows = [["step", str(sw.get("axis")), "flow", *(title for _, title in cols)]]
        for p in sw["points"]:
            m = p.get("metrics") or {}
            rows.append(
                [str(p["step"]), str(p["text"]), name]
                + [_value(metric, m.get(f"flows.{name}.{metric}")) for metric, _ in cols]
            )
        lines += _table(rows)
    procs = _process_rows(sw)
    if procs:
        lines += _table([["step", str(sw.get("axis")), "process metric", "value"], *procs])
    applied = [w.get("applied") for w in sw.get("windows") or [] if w.get("applied")]
    if applied:
        took = max(a["took_s"] for a in applied)
        late = max(a.get("late_s", 0.0) for a in applied)
        lines.append(
            f"  steps applied at t = {', '.join(format(a['t_rel'], 'g') for a in applied)} s; "
            f"each took at most {took * 1000:.3g} ms, began at most {late * 1000:.3g} ms late"
        )
    return lines


def check_line(c: Mapping[str, Any]) -> str:
    mark = "PASS" if c.get("passed") else "FAIL"
    default = " (default)" if c.get("default") else ""
    why = c.get("explanation") or c.get("error") or ""
    return f"  {mark} {c.get('assert')}{default}: {why}"


def plot(results: Mapping[str, Any], out_dir: Path, plt: Any) -> list[str]:
    """degradation.png (one sweep) or degradation-AXIS.png per sweep (several): each panel
    one metric family against the stress, one line per flow or process metric with its
    confidence bars, the knee (half the baseline) marked; [] without a sweep."""
    from meshstress.judge.degradation import sweeps_of

    sws = sweeps_of(results)
    written: list[str] = []
    for sw in sws:
        name = "degradation.png" if len(sws) == 1 else f"degradation-{sw.get('axis')}.png"
        written += _plot_one(results, sw, out_dir, plt, name)
    return written


def _dodge(x: float, shift: float, ticks: list[float], log: bool) -> float:
    """x moved by `shift` of the axis's span (in log space on a log axis)."""
    if not shift or len(ticks) < 2:
        return x
    if log:
        import math

        return x * 10 ** (shift * math.log10(max(ticks) / min(ticks)))
    return x + shift * (max(ticks) - min(ticks))


def _ratio_metrics(sw: Mapping[str, Any]) -> set[str]:
    """The metrics counted as k of n (their points carry k): drawn in %."""
    return {
        m for p in sw.get("points") or [] for m, e in (p.get("metrics") or {}).items() if "k" in e
    }


def _plot_one(
    results: Mapping[str, Any], sw: Mapping[str, Any], out_dir: Path, plt: Any, filename: str
) -> list[str]:
    if not sw.get("curves"):
        return []
    curves: Mapping[str, Any] = sw["curves"]
    flows: Mapping[str, str] = sw.get("flows") or {}
    unit = sw.get("unit", "")
    scale, suffix = AXIS_SCALE.get(unit, (1.0, ""))
    axis = str(sw.get("axis"))
    ratios = _ratio_metrics(sw)
    procs = [m for m in curves if m.startswith("process.")]
    panels = []
    for title, metrics, yscale in PANELS:
        lines = [
            (f"{name} ({flows.get(name)})", f"flows.{name}.{m}")
            for name in flows
            for m in metrics
            if f"flows.{name}.{m}" in curves
        ]
        if title.startswith("delivery"):
            lines += [(m[len("process.") :], m) for m in procs if m in ratios]
            if any(m in ratios for m in procs):
                title = "delivered / ok (%)"
        if lines:
            panels.append((title, lines, yscale))
    means = [(m[len("process.") :], m) for m in procs if m not in ratios]
    if means:
        panels.append(("process metrics (mean)", means, 1.0))
    if not panels:
        return []
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.0 * len(panels)), squeeze=False)
    knees = {
        c.get("metric"): c.get("value")
        for c in results.get("checks") or []
        if c.get("check") == "knee"
        and c.get("value") is not None
        and c.get("axis", axis) == axis
    }
    xlabel = f"{axis}: {AXIS_TITLE.get(axis, axis)}" + (f" ({suffix})" if suffix else "")
    ticks_all = [x * scale for x in sw.get("stress") or []]
    log = unit == "bit/s" and bool(ticks_all) and min(ticks_all) > 0
    for row, (title, lines, yscale) in zip(axes, panels, strict=True):
        ax = row[0]
        for i, (label, metric) in enumerate(lines):
            c = curves[metric]
            # lines that coincide (two flows at 100%) stay apart: each its own marker
            # and dash, and its points and bars dodged a little along the x axis
            shift = (i - (len(lines) - 1) / 2) * 0.012
            xs = [_dodge(x * scale, shift, ticks_all, log) for x in c["stress"]]
            ys = [v * yscale for v in c["values"]]
            lo = [
                max(0.0, (v - iv[0]) * yscale)
                for v, iv in zip(c["values"], c["intervals"], strict=True)
            ]
            hi = [
                max(0.0, (iv[1] - v) * yscale)
                for v, iv in zip(c["values"], c["intervals"], strict=True)
            ]
            line = ax.errorbar(
                xs, ys, yerr=[lo, hi], marker="osD^v<>"[i % 7], capsize=4, label=label,
                linestyle=("-", "--", "-.", ":")[i % 4], markersize=5,
            )  # fmt: skip
            knee = knees.get(metric)
            if knee is not None:  # in the legend: a label on the plot may hide behind it
                color = line[0].get_color()
                ax.axvline(
                    knee * scale, color=color, linestyle=":", alpha=0.8,
                    label=f"{label}: knee at {format_stress(knee, unit)}",
                )  # fmt: skip
        ticks = ticks_all
        if log:
            # bandwidth steps are usually factors apart (8, 2, 1, 0.5 Mbit/s): on a log
            # axis they spread out, on a linear one the smallest crowd together
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(ticks, labels=sw.get("steps") or [])
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        if sw.get("stress") and sw["stress"][-1] < sw["stress"][0]:
            ax.invert_xaxis()  # more stress to the right
        ax.set_xlabel(xlabel)
    scenario = (results.get("run") or {}).get("scenario")
    fig.suptitle(
        f"{scenario}: degradation over {axis} (bars: 99% intervals; dotted: knee)", fontsize=10
    )
    fig.tight_layout()
    path = out_dir / filename
    with safefs.open_write(out_dir, path.name) as f:
        fig.savefig(f, dpi=90, format="png")
    plt.close(fig)
    return [str(path)]
