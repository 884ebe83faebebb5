"""Run a scenario: build the mesh, let traffic flow, apply the events, measure, judge.

    results = run(scenario, out_dir, say=print)     # on this kernel (host, or inside the lab)
    where, why = choose_where(scenario, "auto")      # "host" or "lab", and why

The sequence, every step bounded in time and undone in `finally` (also on Ctrl-C,
SIGTERM or a crash: `meshstress clean` finds the rest from the state file):
1. probes compile and attach (if the scenario asks for any; the slow part, done once);
2. `build.bringup.bring_up`: namespaces, links, impairments, routing, wait for convergence;
   then the scenario's [[process]] entries start in order, each ready before the next
   (meshstress.procs.run), and are stopped when the traffic has ended;
3. t0 = now + a short lead; every flow starts at t0 + its start; a route recorder
   samples every node's table in its own thread; the event timeline runs;
4. at t0 + duration the flows end; their records become metrics (meshstress.judge.metrics),
   each event gets the recovery time of every flow (from the moment the event began
   until delivery resumed; its `t_rel` is that moment, `took_s` how long it ran), the
   route snapshots become flap and reachability counts, probes become counter deltas;
5. the verdict's assertions are judged against that results dict, and the run is
   INVALID if the host was saturated meanwhile (CPU samples, softnet backlog drops;
   verdict.judge_host); the run folder gets results.json (report.write_all renders
   the rest from it);
6. teardown.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import meshstress
from meshstress import build, safefs
from meshstress.errors import CapabilityError, MeshstressError
from meshstress.judge import verdict
from meshstress.model.scenario import Scenario

Say = Callable[[str], None]
# Seconds from the start barrier's release (every flow agent is up: traffic.flows.release)
# to t0: the agents see the go file within milliseconds, then bind their sockets (the
# receivers first; a sender also waits for its receiver). The lab emulates its CPU.
LEAD = 0.3
LEAD_LAB = 1.0
AGENTS_UP_TIMEOUT = 120.0  # an agent not up by then: the run stops with an error


def missing_here(sc: Scenario) -> list[str]:
    """The doctor checks this scenario needs that this kernel fails, with remedies."""
    from meshstress import doctor

    needs = ["netns", "veth", *sc.needs()]
    if os.geteuid() != 0:
        return ["root: run as root (sudo meshstress run ...)"]
    checks = {c.name: c for c in doctor.run_checks()}
    out = []
    for name in needs:
        c = checks.get(name)
        if c is None or not c.ok:
            out.append(f"{name}" + (f" ({c.remedy})" if c is not None and c.remedy else ""))
    return out


def choose_where(sc: Scenario, where: str | None = None) -> tuple[str, str]:
    """('host' | 'lab', why). Raises CapabilityError when neither can run it."""
    where = where or sc.where
    if where == "lab":
        return "lab", "asked for the VM lab"
    if where == "host" and os.environ.get("MESHSTRESS_WHERE_LABEL") == "lab":
        # run_in_lab's guest: the host chose the lab for what its stock kernel has; the
        # checks (modprobe, a BCC import, throwaway namespaces) cost 10-20 s under emulation
        return "host", "inside the VM lab, whose stock kernel has what the scenario needs"
    missing = missing_here(sc)
    if not missing:
        return "host", "this host has everything the scenario needs"
    names = ", ".join(m.split(" ")[0] for m in missing)
    if where == "host" or missing[0].startswith("root"):
        raise CapabilityError(f"{sc.source}: this host lacks {'; '.join(missing)}")
    from meshstress.lab import lab_available

    ok, why = lab_available()
    if not ok:
        raise CapabilityError(
            f"{sc.source}: this host lacks {'; '.join(missing)}, and the VM lab cannot run "
            f"here either: {why}"
        )
    return "lab", f"this host lacks {names}: running it in the VM lab (stock kernel under qemu)"


class _RouteRecorder(threading.Thread):
    """Route snapshots every `interval` s until stopped, through its own Mesh sockets."""

    def __init__(self, st: Any, backend: Any, interval: float) -> None:
        super().__init__(name="meshstress-routes", daemon=True)
        self.st, self.backend, self.interval = st, backend, interval
        self.snaps: list[Any] = []
        self.errors: list[str] = []
        self.cpu: list[float] = []  # host CPU busy %, all cores, between samples
        self.snapshot_s: list[float] = []  # what one route snapshot cost
        self.halt = threading.Event()
        self.meter: Any = None  # observe.cpu.CpuMeter: who used the CPU meanwhile

    def run(self) -> None:
        import psutil

        from meshstress.observe.cpu import CpuMeter
        from meshstress.routing import snapshot
        from meshstress.routing.converge import open_reader

        mesh = build.Mesh(self.st)
        reader = open_reader(mesh, self.backend)
        psutil.cpu_percent(interval=None)
        meter = CpuMeter(lambda: self.st.processes, recorder_tid=threading.get_native_id())
        meter.sample()
        self.meter = meter
        try:
            while not self.halt.is_set():
                t = time.monotonic()
                try:
                    self.snaps.append(snapshot(mesh, self.backend, reader))
                except Exception as exc:  # a node mid-restart: note it, keep sampling
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                self.snapshot_s.append(time.monotonic() - t)
                self.halt.wait(max(0.0, self.interval - (time.monotonic() - t)))
                self.cpu.append(psutil.cpu_percent(interval=None))
                meter.sample()
        finally:
            reader.close()
            mesh.close()


def host_load(
    cpu: list[float],
    snapshot_s: list[float],
    limits: verdict.HostLimits | None = None,
    softnet_dropped: int | None = None,
    cpu_by: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pure: how busy the host was while the run measured (CPU % busy, all cores, per
    sample; packets dropped from full softnet backlogs over the run; `cpu_by`, who used
    the CPU: observe.cpu.breakdown). A saturated host measures itself: flows start
    late, daemons miss their timers, outages grow."""
    limits = limits or verdict.HostLimits()
    out: dict[str, Any] = {}
    if cpu:
        busy = limits.max_host_busy * 100
        out.update(
            cpu_mean_pct=round(sum(cpu) / len(cpu), 1),
            cpu_max_pct=round(max(cpu), 1),
            cpu_samples=len(cpu),
            saturated_share=round(sum(1 for c in cpu if c >= busy) / len(cpu), 3),
        )
    if snapshot_s:
        out["route_snapshot_s"] = round(sum(snapshot_s) / len(snapshot_s), 3)
    if softnet_dropped is not None:
        out["softnet_dropped"] = softnet_dropped
    if cpu_by is not None:
        out["recorder_cpu_share"] = cpu_by["by"]["recorder"]["share"]
        out["cpu_by"] = cpu_by
    return out


def read_softnet_dropped() -> int | None:
    """Packets dropped so far from full per-CPU input backlogs (None: not readable)."""
    try:
        with open("/proc/net/softnet_stat") as f:
            return verdict.softnet_dropped(f.read())
    except (OSError, ValueError):
        return None


def routing_summary(snaps: list[Any], t0: float) -> dict[str, Any]:
    """Pure: flaps and reachability over the run's route snapshots."""
    from meshstress.routing import route_changes

    if not snaps:
        return {"snapshots": 0}
    changes = route_changes(snaps)
    reach = []
    last: tuple[list[int], float] | None = None
    for s in snaps:
        rows = [id(r) for r in s.next_hops.values()]  # a reader reuses unchanged rows
        if last is not None and last[0] == rows:
            share = last[1]
        else:
            n = len(s.next_hops)
            share = s.reachable_pairs() / (n * (n - 1)) if n > 1 else 1.0
            last = (rows, share)
        reach.append((round(s.t - t0, 3), share))
    return {
        "snapshots": len(snaps),
        "route_changes": sum(changes.values()),
        "pairs_changed": len(changes),
        "most_changed": [
            {"src": a, "dst": b, "changes": n} for (a, b), n in changes.most_common(5)
        ],
        "reachable_min": round(min(r for _, r in reach), 4),
        "reachable_final": round(reach[-1][1], 4),
        "reachable_series": reach,
    }


# batman-adv's own signalling (originator messages, echo location, TVLVs) as opposed to
# the payload it carries (unicast, broadcast, fragments, network coding, multicast).
BATMAN_CONTROL = ("iv_ogm", "elp", "ogm2", "icmp", "unicast_tvlv")


def probe_totals(delta: dict[str, Any]) -> dict[str, Any]:
    """Pure: mesh-wide totals of a probes delta (what assertions usually want)."""
    drops: dict[str, int] = {}
    out: dict[str, Any] = {"tx_packets": 0, "tx_bytes": 0, "tcp_retransmits": 0, "drops": 0,
           "batman_control_tx_packets": 0, "batman_control_tx_bytes": 0}  # fmt: skip
    for node in (delta.get("nodes") or {}).values():
        out["tcp_retransmits"] += node.get("tcp_retransmits") or 0
        for reason, n in (node.get("drops") or {}).items():
            drops[reason] = drops.get(reason, 0) + n
        for ifname, c in (node.get("interfaces") or {}).items():
            if ifname == "lo":
                continue
            out["tx_packets"] += c.get("tx_packets", 0)
            out["tx_bytes"] += c.get("tx_bytes", 0)
            for kind, t in (c.get("batman_types") or {}).items():
                if kind in BATMAN_CONTROL:
                    out["batman_control_tx_packets"] += t.get("tx_packets", 0)
                    out["batman_control_tx_bytes"] += t.get("tx_bytes", 0)
    out["drops"] = sum(drops.values())
    out["drop_reasons"] = dict(sorted(drops.items(), key=lambda kv: -kv[1]))
    out["batman_control_share"] = (
        round(out["batman_control_tx_bytes"] / out["tx_bytes"], 4) if out["tx_bytes"] else None
    )
    return out


def event_recoveries(events: list[dict[str, Any]], records: dict[str, Any], horizon: float) -> None:
    """Add recovery_s {flow: seconds} to each event record (in place)."""
    from meshstress.judge.metrics import outage_after

    for ev in events:
        rec: dict[str, float | None] = {}
        for name, record in records.items():
            if record.spec.kind == "crafted":  # nobody receives it: no outage to measure
                continue
            value = outage_after(record, ev["t"], horizon=horizon)
            rec[name] = None if value is None else round(value, 3)
        ev["recovery_s"] = rec


def run(
    sc: Scenario,
    out_dir: Path,
    say: Say | None = None,
    probes: Any = None,
    keep: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run `sc` on this kernel; return the results dict (also written to out_dir).

    `probes`: an attached meshstress.observe.probes.Probes to reuse (a BCC compile costs about a
    minute under emulation); it is left open. Without it, the scenario's `probes` are
    compiled here and closed at the end. `keep`: a dict that gets the flow records
    ("records") and t0 ("t0"). A [sweep] runs its steps on the timeline
    (meshstress.stress.sweep; a fresh sweep runs one such run per step)."""
    from meshstress import report
    from meshstress.build import bringup
    from meshstress.judge.metrics import flow_metrics
    from meshstress.stress import sweep as sweeps
    from meshstress.stress.events import EventRunner, run_timeline
    from meshstress.traffic.flows import release, start_flow

    say = say or (lambda msg: None)
    if sc.sweep is not None and sc.sweep.fresh:
        return sweeps.run_fresh(sc, out_dir, say, probes)
    safefs.make_dir(out_dir)
    raw = out_dir / "raw"
    safefs.make_dir(raw)  # never a symlink, nobody else's
    started = time.time()
    results: dict[str, Any] = {
        "schema_version": report.SCHEMA_VERSION,
        "run": {
            "meshstress_version": meshstress.__version__,
            "scenario": sc.name,
            "source": sc.source,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "where": os.environ.get("MESHSTRESS_WHERE_LABEL", "host"),
            "kernel": os.uname().release,
            "duration_s": sc.duration,
        }
    }
    own_probes = probes is None
    softnet: int | None = None
    up = None
    flows: list[Any] = []
    recorder: _RouteRecorder | None = None
    try:
        with build.sigterm_as_interrupt():
            if sc.probes and probes is None:
                from meshstress.observe.probes import Probes

                say(f"probes: compiling and attaching {', '.join(sc.probes)} (once per run)")
                t = time.monotonic()
                probes = Probes(sc.probes)
                results["run"]["probes_attach_s"] = round(time.monotonic() - t, 2)
            topo = sc.topology
            say(
                f"mesh: {len(topo.nodes)} nodes, {len(topo.links)} links, "
                f"{len(topo.segments)} segments, routing {topo.routing}"
            )
            t = time.monotonic()
            up = bringup.bring_up(
                topo, wait=True, timeout=sc.converge_timeout, impair=not sc.ideal,
                say=lambda m: say(f"build: {m} ({time.monotonic() - t:.1f} s)"),
            )  # fmt: skip
            say(
                f"build: done in {up.info.get('setup_s')} s; routing started, waited "
                f"{up.info.get('routing_start_s')} s for convergence"
            )
            info = dict(up.info)
            results["mesh"] = info
            results["run"]["id"] = up.state.run_id
            if up.result is not None:
                say(f"routing: {up.result}")
            converged_at = time.monotonic()
            mesh = build.Mesh(up.state)
            procs = _processes(sc, mesh, out_dir, say)
            captures = None
            runner: EventRunner | None = None
            try:
                if sc.capture is not None and sc.capture.targets:
                    from meshstress.observe.capture import Captures

                    captures = Captures(mesh, sc.capture)
                    captures.start()
                    say(f"capture: {len(captures.threads)} interface(s) into capture/")
                if probes is not None:
                    probes.watch(mesh)
                    before = probes.snapshot()
                recorder = _RouteRecorder(up.state, up.backend, sc.route_interval)
                runner = EventRunner(mesh, up.backend, topo)
                runner.out_dir = str(out_dir)
                kmark = _kernel_mark(sc, results)
                # sockets and indexes: not inside a timed event
                runner.prepare(sweeps.prepare_events(sc))
                procs.start_all(converged_at)  # each ready before the next, before traffic
                time.sleep(sc.warmup)
                lead = LEAD_LAB if results["run"]["where"] == "lab" else LEAD
                # the start barrier: every agent is up before t0 is chosen, so a slow
                # start (a loaded host, the emulated lab) costs no traffic
                go = str(raw / "go")
                t = time.monotonic()
                # inject senders too: up now, fired at their events (stress.inject_agent)
                runner.arm_injects(wait=sc.duration + AGENTS_UP_TIMEOUT + 60.0)
                for spec in sc.flows:
                    flows.append(start_flow(mesh, spec, str(raw), 0.0, sc.duration, go=go))
                runner.injects_up(AGENTS_UP_TIMEOUT)
                if flows:
                    t0 = release(flows, go, lead=lead, timeout=AGENTS_UP_TIMEOUT)
                else:
                    t0 = time.monotonic() + lead
                results["run"]["agents_up_s"] = round(t0 - lead - t, 3)
                window = sc.capture.window if sc.capture is not None else None
                if captures is not None and window and sc.events:
                    from meshstress.observe.capture import event_windows, wall_of

                    captures.set_windows(
                        event_windows([wall_of(t0 + ev.at) for ev in sc.events], window)
                    )
                softnet_before = read_softnet_dropped()
                recorder.start()
                say(
                    f"traffic: {len(flows)} flow(s) for {sc.duration:g} s, "
                    f"{len(sc.events)} event(s)"
                )
                steps: list[dict[str, Any]] = []
                if not sc.sweeps:
                    events = run_timeline(_Announcing(runner, say, t0), sc.events, t0)
                else:
                    events, steps = sweeps.timeline(
                        runner, _Announcing(runner, say, t0), sc, t0, say
                    )
                _sleep_until(t0 + sc.duration, say, t0)
                for f in flows:
                    f.wait(timeout=15.0)
                procs.stop()
                injected = _wait_injects(runner, t0 + sc.duration)
                offset = time.time() - time.monotonic()  # unix = monotonic + offset
                if sc.processes:
                    results["process"] = procs.results(t0 + offset)
                recorder.halt.set()
                recorder.join(timeout=10)
                softnet_after = read_softnet_dropped()
                if softnet_before is not None and softnet_after is not None:
                    softnet = softnet_after - softnet_before
                records = {f.spec.name: f.record() for f in flows}
                if keep is not None:
                    keep.update(records=records, t0=t0)
                results["flows"] = {}
                for f in flows:
                    m = flow_metrics(records[f.spec.name], t0)
                    results["flows"][f.spec.name] = {
                        "kind": f.spec.kind, "from": f.spec.src, "to": f.spec.dst, **m,
                    }  # fmt: skip
                for ev in events:  # "t": when the action began; recovery counts from it
                    ev["t_rel"] = round(ev["t"] - t0, 3)
                event_recoveries(events, records, horizon=max(5.0, sc.duration))
                for ev in events:
                    del ev["t"]
                results["events"] = events
                if sc.sweeps:
                    from meshstress.procs.metrics import step_provider

                    providers = {
                        f"process.{name}": step_provider(procs.samples(name), offset)
                        for name in dict.fromkeys(p.name for p in sc.processes)
                    }
                    n = sum(len(sw.steps) for sw in sc.sweeps)
                    say(f"sweep: per-step metrics with 99% intervals over {n} steps")
                    t = time.monotonic()
                    results.update(sweeps.all_results(sc, records, t0, steps, providers))
                    say(f"sweep: measured in {time.monotonic() - t:.1f} s")
                results["routing"] = routing_summary(recorder.snaps, t0)
                if captures is not None:
                    from meshstress.observe.capture import section

                    folder = out_dir / "capture"
                    results["capture"] = section(captures.write(folder, out_dir), folder)
                if injected:
                    results["inject"] = inject_results(
                        injected, recorder.snaps, t0, mesh, up.backend, runner.crashed, kmark,
                        str(out_dir))  # fmt: skip
                if recorder.errors:
                    results["routing"]["sample_errors"] = recorder.errors[:5]
                results["run"]["host"] = host_load(
                    recorder.cpu, recorder.snapshot_s, sc.host_limits, softnet,
                    recorder.meter.breakdown() if recorder.meter is not None else None,
                )  # fmt: skip
                if probes is not None:
                    from meshstress.observe.probes import delta

                    results["probes"] = delta(before, probes.snapshot())
                    results["probes"]["totals"] = probe_totals(results["probes"])
            finally:
                if captures is not None:
                    captures.stop()
                for f in flows:
                    f.stop()
                procs.stop()
                if recorder is not None and recorder.is_alive():
                    recorder.halt.set()
                    recorder.join(timeout=10)
                if runner is not None:
                    runner.close()  # the drop map's fd (no pins: nothing else to remove)
                mesh.close()
    finally:
        if probes is not None and own_probes:
            probes.close()
        if up is not None:
            t = time.monotonic()
            problems = build.teardown(up.state, timeout=60)
            results.setdefault("mesh", {})["teardown_s"] = round(time.monotonic() - t, 3)
            if problems:
                results["mesh"]["teardown_problems"] = problems
    checks = []
    if sc.require_converged and up is not None and up.result is not None:
        checks.append(
            {
                "assert": "mesh converged before traffic started",
                "metric": "mesh.converged",
                "actual": bool(up.result.converged),
                "passed": bool(up.result.converged),
            }
        )
    checks += _process_checks(results)
    checks += inject_checks(results.get("inject"))
    checks += verdict.judge(sc.assertions, results)
    from meshstress.judge.degradation import sweeps_of

    checks += sweeps.checks(sc, sweeps_of(results))
    results["checks"] = checks
    results["passed"] = all(c["passed"] for c in checks)
    # a saturated host invalidates the run whatever the checks say (exit 4)
    results["valid"], results["validity"] = verdict.judge_host(
        [c / 100 for c in recorder.cpu] if recorder is not None else [], softnet, sc.host_limits
    )
    results["run"]["wall_s"] = round(time.time() - started, 2)
    report.write_all(results, out_dir)
    return results


def _kernel_mark(sc: Scenario, results: dict[str, Any]) -> int | None:
    """Where the kernel log stands before an inject run (lab only: the kernel is ours;
    `meshstress run` sent there, or anything else running inside the guest, e.g. the
    kernel tests)."""
    if not any(e.action == "inject" for e in sc.events):
        return None
    from meshstress.lab import guest

    if results["run"]["where"] != "lab" and not guest.inside():
        return None
    from meshstress.observe import kmsg

    return kmsg.mark()


def _wait_injects(runner: Any, deadline: float) -> list[dict[str, Any]]:
    """Let the inject senders finish (they end after their `for`; past the scenario's
    end + 5 s they are stopped), then read their records."""
    import json
    import subprocess

    runner.disarm()  # the senders armed for an event that never came
    for it in runner.injects:
        p = it["proc"]
        try:
            p.wait(timeout=max(0.0, deadline + 5.0 - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        try:
            with open(it["paths"]["json"]) as f:
                it["record"] = json.load(f)
        except (OSError, ValueError) as exc:
            it["record"] = {"sent": [], "errors": [f"no record: {exc}"]}
    return list(runner.injects)


def inject_results(
    injected: list[dict[str, Any]], snaps: list[Any], t0: float, mesh: Any, backend: Any,
    crashed: set[str], kmark: int | None, out_dir: str,
) -> dict[str, Any]:  # fmt: skip
    """What the hostile nodes sent, whether the daemons lived, whether the honest nodes'
    routes held (or when they came back), and (lab) the kernel log's complaints."""
    from meshstress.routing.base import live_records
    from meshstress.stress.inject import honest_routes, kernel_problems

    hostile = {it["node"] for it in injected}
    honest = [n for n in mesh.nodes if n not in hostile and n not in crashed]
    events = []
    for it in injected:
        spec, rec = it["spec"], it["record"]
        sent = rec.get("sent") or []
        # the attack's window is when frames went out (an agent can start seconds late
        # under emulation), else when it was started
        t_begin = sent[0][1] if sent else it["t"]
        t_end = sent[-1][1] if sent else it["t"] + spec.duration
        first = round(sent[0][1] - t0, 3) if sent else None
        last = round(sent[-1][1] - t0, 3) if sent else None
        # the event's own record says when its frames really went out, and how many
        it.get("detail", {}).update(sent=len(sent), first_s=first, last_s=last)
        events.append({
            "node": it["node"], "protocol": spec.protocol, "attack": spec.attack,
            "seed": spec.seed, "rate": spec.rate, "for_s": spec.duration,
            "planned": it["planned"], "sent": len(sent), "send_errors": rec.get("send_errors", 0),
            "started_s": round(it["t"] - t0, 3),
            "first_s": first, "last_s": last,
            "pcap": os.path.relpath(it["paths"]["pcap"], out_dir),
            "recover_within_s": spec.recover_within,
            "routes": honest_routes(snaps, honest, t_begin, t_end),
            "errors": rec.get("errors", []),
        })  # fmt: skip
    out: dict[str, Any] = {"events": events, "honest": honest}
    role = backend.role
    if role:
        dead = [n for n in mesh.nodes if n not in crashed and not live_records(mesh, n, role)]
        out["daemons"] = {"role": role, "expected": len(mesh.nodes) - len(crashed),
                          "dead": dead, "alive": not dead}  # fmt: skip
    else:
        out["daemons"] = {"role": None, "alive": True, "note": "the kernel routes: no daemon"}
    meshif = getattr(backend, "meshif_problem", None)
    if meshif is not None:  # batman-adv: each node's bat0, up, with its hard interfaces
        live = [n for n in mesh.nodes if n not in crashed]
        broken = {n: why for n in live if (why := meshif(mesh, n))}
        out["meshif"] = {"name": backend.meshif, "expected": len(live), "broken": broken,
                         "alive": not broken}  # fmt: skip
    if kmark is not None:
        from meshstress.observe import kmsg

        bad = kernel_problems(kmsg.since(kmark))
        out["kernel"] = {"problems": len(bad), "lines": bad[:20]}
    return out


def inject_checks(inj: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The built-in checks of a run with inject events."""
    if not inj:
        return []
    d = inj["daemons"]
    checks = [{"assert": "every routing daemon is still alive (by recorded PID)",
               "metric": "inject.daemons.alive", "actual": d.get("dead") or True,
               "passed": bool(d["alive"])}]  # fmt: skip
    for i, ev in enumerate(inj["events"]):
        r = ev["routes"]
        got, limit = r.get("recovered_s"), ev["recover_within_s"]
        # not back, and the run ended before the time allowed: undecided, which is not
        # a pass (said so: a longer run can decide it)
        open_end = got is None and r.get("watched_s", limit) < limit
        checks.append({
            "assert": f"routes between the honest nodes hold or come back within "
                      f"{limit:g} s of the end of inject[{i}] ({ev['node']}, "
                      f"{ev['attack']}, seed {ev['seed']})"
                      + (f" (not back {r['watched_s']:g} s after, when the run ended: "
                         "undecided)" if open_end else ""),
            "metric": f"inject.events[{i}].routes.recovered_s",
            "actual": got,
            "passed": got is not None and got <= limit,
        })  # fmt: skip
    if "meshif" in inj:
        m = inj["meshif"]
        checks.append({"assert": f"every node's {m['name']} is still up with its hard interfaces",
                       "metric": "inject.meshif.alive", "actual": m["broken"] or True,
                       "passed": bool(m["alive"])})  # fmt: skip
    if "kernel" in inj:
        checks.append({"assert": "the kernel log shows no WARNING, BUG or Oops",
                       "metric": "inject.kernel.problems", "actual": inj["kernel"]["problems"],
                       "passed": inj["kernel"]["problems"] == 0})  # fmt: skip
    return checks


def _processes(sc: Scenario, mesh: Any, out_dir: Path, say: Say) -> Any:
    """The scenario's [[process]] entries on this mesh (meshstress.procs.run)."""
    from meshstress.procs.run import Processes

    return Processes(mesh, sc.processes, out_dir, say)


def _process_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    from meshstress.procs.metrics import exit_checks

    return exit_checks(results.get("process") or {})


class _Announcing:
    """An EventRunner that also says what it did."""

    def __init__(self, runner: Any, say: Say, t0: float) -> None:
        self.runner, self.say, self.t0 = runner, say, t0

    def apply(self, event: Any) -> dict[str, Any]:
        rec: dict[str, Any] = self.runner.apply(event)
        began = rec.get("t", time.monotonic()) - self.t0
        took = f" ({rec['took_s'] * 1000:.0f} ms)" if "took_s" in rec else ""
        self.say(f"[{began:6.1f} s] {rec['action']} {rec.get('target', '')}{took}")
        return rec


def _sleep_until(deadline: float, say: Say, t0: float, every: float = 5.0) -> None:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, every))
        now = time.monotonic() - t0
        if deadline - time.monotonic() > 0.5:
            say(f"[{now:6.1f} s] traffic running")


def run_in_lab(
    sc: Scenario, out_dir: Path, timeout: float, say: Say, extra: tuple[str, ...] = ()
) -> int:
    """Run the scenario inside the VM lab (`meshstress run --where host` there); return
    its exit code. The scenario and its topology are written into out_dir first, which
    the guest shares writable, so files the guest cannot see (e.g. under /tmp) work."""
    import sys

    from meshstress import report
    from meshstress.lab import run_in_lab as lab_run

    safefs.make_dir(out_dir)
    path = report.write_resolved(sc, out_dir)
    argv = [sys.executable, "-m", "meshstress", "run", "--where", "host",
            "--out", str(out_dir), *extra, str(path)]  # fmt: skip
    env = dict(os.environ, MESHSTRESS_WHERE_LABEL="lab", MESHSTRESS_PLOTS="host")
    say(f"lab: booting the VM lab for {sc.name} (timeout {timeout:g} s)")
    rc = lab_run(argv, cwd=os.getcwd(), env=env, timeout=timeout, share=str(out_dir), say=say)
    if rc == 124:
        raise MeshstressError(f"lab run of {sc.name} timed out after {timeout:g} s")
    if (out_dir / "results.json").is_file():
        t = time.monotonic()
        try:
            written = report.draw_plots(out_dir)
        except (OSError, ValueError) as exc:
            say(f"plots: not drawn: {exc}")
        else:
            names = ", ".join(os.path.basename(p) for p in written) or "none"
            say(f"plots: {names} drawn on the host in {time.monotonic() - t:.1f} s")
    return rc
