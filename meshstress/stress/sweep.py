"""Running a scenario's [sweep] (side effects at the step boundaries; docs/degradation.md).

Phase mode (`fresh = false`): `meshstress.runner.run` builds one mesh; `timeline` runs
the sweep's step actions (model.sweep.expand) on the same timeline as the scenario's
events: at each window's start one batch sets the step's stress (failed links: every
link change of the step in one netlink buffer per namespace, `EventRunner.set_links`;
loss/delay/jitter/rate: one qdisc replace per link direction through the EventRunner's
`impair`, back to back); churn crashes and restarts come at their own times. Each step
record keeps its `t_rel` (when it began) and `took_s`.

Fresh mode (`fresh = true`): `run_fresh` runs one small scenario per window (a fresh
mesh built with the step's impairment, or with the step's failed links taken down or
churn applied at its start) through `runner.run`, each in `steps/NN/` of the run folder.

`results(...)` turns the flow records into the `sweep` part of results.json, `checks`
judges the curve assertions (meshstress.judge.degradation).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshstress.judge import degradation
from meshstress.model.sweep import (
    IMPAIR_AXES,
    StepAction,
    all_events,
    expand,
    expand_all,
    fresh_topology,
    windows,
)

if TYPE_CHECKING:
    from meshstress.model.scenario import Scenario
    from meshstress.model.sweep import Sweep
    from meshstress.stress.events import Event, EventRunner

Say = Callable[[str], None]


def actions(sc: Scenario) -> list[StepAction]:
    """Every sweep's step actions, the sweeps one after another (model.sweep.expand_all)."""
    assert sc.sweeps
    return expand_all(sc.sweeps, sc.topology, sc.ideal)


def prepare_events(sc: Scenario) -> list[Event]:
    """The scenario's events and every event of the sweeps (for EventRunner.prepare)."""
    return [*sc.events, *(all_events(actions(sc)) if sc.sweeps else [])]


class SweepApplier:
    """What run_timeline applies: a StepAction as one step, or a plain scenario event
    through `events` (the runner's announcing EventRunner)."""

    def __init__(self, runner: EventRunner, events: Any, say: Say, t0: float, sc: Scenario):
        self.runner, self.events, self.say, self.t0, self.sc = runner, events, say, t0, sc

    def apply(self, item: Any) -> dict[str, Any]:
        if not isinstance(item, StepAction):
            rec: dict[str, Any] = self.events.apply(item)
            return rec
        return self.step(item)

    def step(self, item: StepAction) -> dict[str, Any]:
        sw = self.sc.sweeps[item.sweep]
        start = time.monotonic()
        done: list[dict[str, Any]] = []
        # the previous sweep's axis back to configured first (impairments: replaced
        # below if this step sets the same link; links: up in the same batch)
        for ev in item.restore:
            if ev.action == "link-up":
                continue
            r = self.runner.apply(ev)
            done.append(
                {
                    "action": "restore-" + r["action"],
                    "target": r["target"],
                    "took_s": round(r["took_s"], 6),
                    "detail": r["detail"],
                }
            )
        downs = [ev.link for ev in item.events if ev.action == "link-down" and ev.link]
        ups = [ev.link for ev in (*item.restore, *item.events)
               if ev.action == "link-up" and ev.link]  # fmt: skip
        if downs or ups:
            carrier = sw.carrier if sw.axis == "failed_links" else "keep"
            r = self.runner.set_links(down=downs, up=ups, carrier=carrier)
            done.append(
                {
                    "action": "links",
                    "down": [f"{a}-{b}" for a, b in downs],
                    "up": [f"{a}-{b}" for a, b in ups],
                    "took_s": round(r["took_s"], 6),
                    "detail": {"down": r["down"], "up": r["up"], "carrier": r["carrier"]},
                }
            )
        for ev in item.events:
            if ev.action in ("link-down", "link-up"):
                continue
            r = self.runner.apply(ev)
            done.append(
                {
                    "action": r["action"],
                    "target": r["target"],
                    "took_s": round(r["took_s"], 6),
                    "detail": r["detail"],
                }
            )
        took = time.monotonic() - start
        k = item.window % len(sw.steps)
        rep = item.window // len(sw.steps)
        if item.boundary:
            self.say(
                f"[{start - self.t0:6.1f} s] sweep {sw.axis} {k + 1}/{len(sw.steps)}: "
                f"{sw.texts()[k]} for {sw.step:g} s"
                + (f" (repeat {rep + 1}/{sw.repeat})" if sw.repeat > 1 else "")
                + (
                    f"; {self.sc.sweeps[item.sweep - 1].axis} back as configured"
                    if item.restore
                    else ""
                )
                + f" ({len(done)} change(s) in {took * 1000:.0f} ms)"
            )
        else:
            self.say(
                f"[{start - self.t0:6.1f} s] sweep churn: {item.events[0].action} "
                f"{item.events[0].node}"
            )
        return {
            "at": item.at,
            "action": item.action,
            "sweep_index": item.sweep,
            "window": item.window,
            "step": k,
            "repeat": rep,
            "t": start,
            "took_s": took,
            "applied": done,
            "sweep": True,
        }


def timeline(
    runner: EventRunner, announcing: Any, sc: Scenario, t0: float, say: Say
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the scenario's events and the sweep's steps on one timeline; returns (event
    records, sweep step records)."""
    from meshstress.stress.events import run_timeline

    items: list[Any] = sorted([*sc.events, *actions(sc)], key=lambda x: x.at)
    records = run_timeline(SweepApplier(runner, announcing, say, t0, sc), items, t0)
    events = [r for r in records if not r.get("sweep")]
    steps = [r for r in records if r.get("sweep")]
    for r in steps:
        del r["sweep"]
    return events, steps


def results(
    sc: Scenario,
    records: Mapping[str, Any],
    t0: float,
    steps: Sequence[dict[str, Any]],
    providers: Mapping[str, degradation.StepProvider] | None = None,
    t0s: Sequence[float] | None = None,
    sw: Sweep | None = None,
) -> dict[str, Any]:
    """One sweep's part of results.json (`sweep`, or an entry of `sweeps`; `sw`: which,
    by default the first). `records` {flow: FlowRecord} (phase mode), or in fresh mode
    `records` {flow: [FlowRecord per window]} with `t0s` per window. `providers`: more
    per-window metric sources (the [[process]] hook: "process.NAME")."""
    from meshstress.judge.metrics import flow_metrics

    sw = sw or sc.sweep
    assert sw is not None
    steps = [s for s in steps if s.get("sweep_index", 0) == sw.index]
    wins = windows(sw)
    if t0s is None:
        raw = degradation.measure_windows(wins, t0, records, providers)
        per_t0 = [t0] * len(wins)
        per_rec = [dict(records) for _ in wins]
    else:
        per_t0 = list(t0s)
        per_rec = [{n: recs[i] for n, recs in records.items()} for i in range(len(wins))]
        raw = []
        for i, w in enumerate(wins):
            local = replace(w, start=0.0, end=sw.step)
            raw += degradation.measure_windows([local], per_t0[i], per_rec[i], providers)
    by_window: dict[int, dict[str, Any]] = {
        s["window"]: s for s in steps if s.get("action") == "sweep-step"
    }
    churn: dict[int, list[dict[str, Any]]] = {}
    for s in steps:
        if s.get("action") == "sweep-churn":
            churn.setdefault(s["window"], []).append(s)
    out_windows = []
    for i, w in enumerate(wins):
        base = per_t0[i] - (w.start if t0s is not None else 0.0)
        a, b = w.measured
        flows = {}
        for name, rec in per_rec[i].items():
            m = flow_metrics(rec, per_t0[i], window=(base + a, base + b))
            m.pop("series", None)
            flows[name] = m
        entry: dict[str, Any] = {
            "window": i,
            "step": w.step,
            "repeat": w.repeat,
            "stress": sw.values[w.step],
            "text": sw.texts()[w.step],
            "start": w.start,
            "end": w.end,
            "measured": [a, b],
            "flows": flows,
        }
        bw = by_window.get(i)
        if bw is not None:
            entry["applied"] = {
                "t_rel": round(bw["t"] - t0, 3),
                "took_s": round(bw["took_s"], 6),
                "late_s": round(bw.get("late_s", 0.0), 6),
                "changes": bw["applied"],
            }
        if i in churn:
            entry["churn"] = [
                {
                    "t_rel": round(c["t"] - t0, 3),
                    "took_s": round(c["took_s"], 6),
                    "changes": c["applied"],
                }
                for c in churn[i]
            ]
        out_windows.append(entry)
    pts = degradation.points(sw, wins, raw)
    out: dict[str, Any] = {
        "index": sw.index,
        "axis": sw.axis,
        "unit": sw.unit,
        "start_s": sw.offset,
        "steps": sw.texts(),
        "stress": list(sw.values),
        "step_s": sw.step,
        "settle_s": sw.settle,
        "repeat": sw.repeat,
        "fresh": sw.fresh,
        "seed": sw.seed,
        "links": [f"{a}-{b}" for a, b in sw.links] if sw.axis != "churn" else [],
        "nodes": list(sw.nodes),
        "flows": {f.name: f.kind for f in sc.flows},
        "processes": sorted({p.name for p in sc.processes}),
        "windows": out_windows,
        "points": pts,
        "curves": degradation.curve_dicts(sw, pts),
    }
    return out


def all_results(
    sc: Scenario,
    records: Mapping[str, Any],
    t0: float,
    steps: Sequence[dict[str, Any]],
    providers: Mapping[str, degradation.StepProvider] | None = None,
) -> dict[str, Any]:
    """{"sweep": {...}} for one sweep (as results.json always had it), {"sweeps": [{...},
    ...]} for several, in time order."""
    got = [results(sc, records, t0, steps, providers, sw=sw) for sw in sc.sweeps]
    return {"sweep": got[0]} if len(got) == 1 else {"sweeps": got}


def checks(sc: Scenario, sweep_results: Any) -> list[dict[str, Any]]:
    """The curve assertions, or the default verdict when none was given. `sweep_results`:
    the sweep dict of results.json, or the list of them (degradation.sweeps_of)."""
    if not sc.sweeps or not sweep_results:
        return []
    given = [sweep_results] if isinstance(sweep_results, Mapping) else list(sweep_results)
    by_axis = {str(d.get("axis")): d.get("curves") or {} for d in given}
    kinds = {f.name: f.kind for f in sc.flows}
    out: list[dict[str, Any]] = []
    several = len(sc.sweeps) > 1
    for sw in sc.sweeps:
        curves = by_axis.get(sw.axis, {})
        if sc.curve_assertions:
            mine = [a for a in sc.curve_assertions if (a.axis or sc.sweeps[0].axis) == sw.axis]
            got = degradation.judge(mine, curves)
        else:
            default = degradation.default_assertions(kinds, sw.axis if several else None)
            got = degradation.judge(default, curves, default=True)
        for c in got:
            c["axis"] = sw.axis
        out += got
    if sc.curve_assertions:  # in the order they were written
        order = {a.text: i for i, a in enumerate(sc.curve_assertions)}
        out.sort(key=lambda c: order.get(c["assert"], 0))
    return out


# --- fresh mode ------------------------------------------------------------------------------


def step_scenario(sc: Scenario, window: int) -> Scenario:
    """The scenario of one window in fresh mode: the step's stress built in (impairment
    axes) or applied at its start (failed links, churn), lasting one step."""
    sw = sc.sweep
    assert sw is not None
    w = windows(sw)[window]
    topo, ideal = sc.topology, sc.ideal
    evs: list[Event] = []
    if sw.axis in IMPAIR_AXES:
        topo, ideal = fresh_topology(sw, sc.topology, w.step, sc.ideal), False
    else:
        mine = [
            a for a in expand(replace(sw, repeat=1), sc.topology, sc.ideal) if a.window == w.step
        ]
        if sw.axis == "failed_links":
            # from a fresh mesh: every failed link of the step goes down at its start
            from meshstress.model.sweep import link_order
            from meshstress.stress.events import Event as Ev

            evs = [
                Ev(at=0.0, action="link-down", link=lk, carrier=sw.carrier)
                for lk in link_order(sw)[: int(sw.values[w.step])]
            ]
        else:
            base = w.step * sw.step
            evs = [replace(ev, at=ev.at - base) for a in mine for ev in a.events]
    return replace(
        sc,
        name=f"{sc.name}-step{window:02d}",
        topology=topo,
        ideal=ideal,
        duration=sw.step,
        events=sorted(evs, key=lambda e: e.at),
        sweeps=[],
        assertions=[],
        curve_assertions=[],
    )


def run_fresh(sc: Scenario, out_dir: Path, say: Say, probes: Any = None) -> dict[str, Any]:
    """A fresh mesh per window: runner.run on each step's scenario in out_dir/steps/NN;
    then the sweep results over all of them, judged, in out_dir."""
    from meshstress import report, runner, safefs
    from meshstress.judge import verdict

    sw = sc.sweep
    assert sw is not None
    safefs.make_dir(out_dir)
    safefs.make_dir(out_dir / "steps")
    started = time.time()
    records: dict[str, list[Any]] = {f.name: [] for f in sc.flows}
    t0s: list[float] = []
    steps: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for w in windows(sw):
        sub = step_scenario(sc, w.index)
        say(
            f"sweep {sw.axis} {w.step + 1}/{len(sw.steps)}: {sw.texts()[w.step]} for "
            f"{sw.step:g} s on a fresh mesh"
            + (f" (repeat {w.repeat + 1}/{sw.repeat})" if sw.repeat > 1 else "")
        )
        keep: dict[str, Any] = {}
        r = runner.run(sub, out_dir / "steps" / f"{w.index:02d}", say=say, probes=probes, keep=keep)
        runs.append(r)
        for name in records:
            records[name].append(keep["records"][name])
        t0s.append(keep["t0"])
        bring = r.get("mesh", {})
        steps.append(
            {
                "window": w.index,
                "action": "sweep-step",
                "t": keep["t0"],
                "took_s": bring.get("setup_s") or 0.0,
                "applied": [{"action": "fresh-mesh", "events": r.get("events", [])}],
            }
        )
    first = runs[0] if runs else {}
    out: dict[str, Any] = {
        "run": {
            **first.get("run", {}),
            "scenario": sc.name,
            "source": sc.source,
            "duration_s": sc.duration,
        },
        "mesh": first.get("mesh", {}),
        "flows": {},
    }
    out["run"].pop("plots", None)
    sweep = results(sc, records, 0.0, steps, t0s=t0s)
    for entry in sweep["windows"]:
        if "applied" in entry:
            entry["applied"]["t_rel"] = 0.0  # each window has its own t0
        entry["run"] = f"steps/{entry['window']:02d}"
    out["sweep"] = sweep
    chk: list[dict[str, Any]] = []
    for i, r in enumerate(runs):
        for c in r.get("checks", []):
            if c.get("metric") == "mesh.converged":
                chk.append({**c, "assert": f"steps/{i:02d}: {c['assert']}"})
    chk += verdict.judge(sc.assertions, out)
    chk += checks(sc, sweep)
    out["checks"] = chk
    out["passed"] = all(c["passed"] for c in chk)
    bad = [
        f"steps/{i:02d}: {r.get('validity')}" for i, r in enumerate(runs) if r.get("valid") is False
    ]
    out["valid"] = not bad
    out["validity"] = "; ".join(bad) if bad else "every step's host load was within limits"
    out["run"]["wall_s"] = round(time.time() - started, 2)
    report.write_all(out, out_dir)
    return out
