"""`meshstress run [SCENARIO]` and `meshstress report DIR`."""

from __future__ import annotations

import json
import os
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import click

from meshstress import safefs
from meshstress.errors import CapabilityError, MeshstressError

DEFAULT = "default.toml"


def default_scenario() -> Path:
    """The packaged default scenario (meshstress/data/default.toml)."""
    return Path(str(resources.files("meshstress") / "data" / DEFAULT))


def _say(msg: str) -> None:
    click.echo(f"meshstress: {msg}", err=True)


@click.command()
@click.argument("scenario_file", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--where",
    type=click.Choice(["auto", "host", "lab"]),
    default=None,
    help="host, the VM lab, or auto: the lab when this kernel lacks what the scenario needs "
    "[default: the scenario's, else auto]",
)
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="run folder [default: results/SCENARIO-TIME]")  # fmt: skip
@click.option("--duration", default=None, help="override the scenario's duration, e.g. 30s")
@click.option("--timeout", type=float, default=1800.0, show_default=True,
              help="lab only: kill the VM after this many seconds")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="print results.json instead of the summary")
@click.option("--check", "check_only", is_flag=True,
              help="only validate the scenario, say where it would run and estimate the CPU "
                   "and memory it needs")  # fmt: skip
@click.option("--strict", is_flag=True,
              help="refuse (exit 3) when the estimate exceeds this host's cores or memory")
@click.option("--calibration", type=click.Path(dir_okay=False), default=None,
              help="per-unit costs [default: /var/lib/meshstress/calibration.json, "
                   "else the packaged default]")  # fmt: skip
@click.option("--capture", "capture", multiple=True, metavar="NODE[:IFACE]",
              help="write capture/NODE-IFACE.pcap (repeatable; NODE alone: every mesh "
              "interface of the node; docs/packets.md)")  # fmt: skip
def run(
    scenario_file: str | None,
    where: str | None,
    out: str | None,
    duration: str | None,
    timeout: float,
    as_json: bool,
    check_only: bool,
    strict: bool,
    calibration: str | None,
    capture: tuple[str, ...] = (),
) -> None:
    """Run a scenario: build the mesh, send traffic, apply events, measure, judge.

    Without SCENARIO_FILE, runs the default scenario, the mission in one run: a 3x3 grid
    routed by batman-adv, UDP, ping and TCP flows corner to corner, loss, delay and
    bandwidth sweeps, BCC probes, a degradation verdict (natively where the kernel has
    batman-adv, netem and BCC, else in the VM lab; scenarios/quick.toml for hosts that
    have neither). Writes results.json, summary.txt, junit.xml and timeline.png into the run
    folder. Exit code: 0 all checks passed, 1 a check failed, 2 bad input, 3 missing
    capability (or, with --strict, a host too small for the estimate), 4 invalid: the
    host was saturated while it measured (CPU, or softnet backlog drops; limits in
    [verdict]), the numbers are kept in results.json.
    """
    from meshstress import report, runner
    from meshstress.model import scenario, units

    path = Path(scenario_file) if scenario_file else default_scenario()
    sc = scenario.load(path)
    if duration is not None and sc.sweep is not None:
        raise click.BadParameter(
            "a sweep lasts steps x repeat x step: change [sweep] step instead",
            param_hint="--duration",
        )
    if duration is not None:
        try:
            sc.duration = units.parse_duration(duration)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--duration") from None
        if "scenario" not in sc.raw:
            sc.raw["scenario"] = {}
        sc.raw["scenario"]["duration"] = duration
        scenario.check_times(sc)
    if capture:
        add_capture(sc, list(capture))
    try:
        chosen, why = runner.choose_where(sc, where)
    except CapabilityError as exc:
        if scenario_file:
            raise
        from meshstress.doctor import QUICK_HINT

        raise CapabilityError(f"{exc}; {QUICK_HINT}") from None
    if chosen == "host" or check_only:
        capacity_check(sc, calibration, strict, lab=chosen == "lab")
    if check_only:
        click.echo(f"{path}: valid; {len(sc.topology.nodes)} nodes, {len(sc.flows)} flows, "
                   f"{len(sc.events)} events, "
                   f"{len(sc.assertions) + len(sc.curve_assertions)} checks"
                   + "".join(f", a {sw.axis} sweep of {sw.windows_count} steps"
                             for sw in sc.sweeps)
                   + f"; would run on {chosen} ({why})")  # fmt: skip
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = run_folder(sc.name, stamp, out)
    if chosen != "lab" and os.geteuid() != 0:
        raise MeshstressError("meshstress run needs root (network namespaces): sudo meshstress run")
    if os.path.lexists(out_dir / "results.json"):
        raise MeshstressError(f"{out_dir} holds a run already: choose another --out")
    created = safefs.make_dir(out_dir)
    # Under sudo, the run folder (and a results/ made for it) goes back to the user.
    give_back = created[0] if created else out_dir
    if chosen == "lab":
        if (where or sc.where) == "auto":
            _say(f"auto: {why}")
        try:
            rc = runner.run_in_lab(sc, out_dir, timeout, _say, (("--json",) if as_json else ()))
        finally:
            safefs.give_back(give_back)
        sys.exit(rc)
    _say(f"{sc.name}: run folder {out_dir}")
    try:
        results = runner.run(sc, out_dir, say=_say)
    finally:
        safefs.give_back(give_back)
    if as_json:
        click.echo(json.dumps(results, indent=1))
    else:
        click.echo(report.summary(results), nl=False)
        click.echo(f"results: {out_dir}/results.json")
    invalid = report.invalid_line(results)
    if invalid:
        _say(invalid)
    sys.exit(exit_code(results))


def add_capture(sc: Any, targets: list[str]) -> None:
    """--capture NODE[:IFACE] on top of the scenario's `capture` (kept in sc.raw, so
    the resolved scenario a lab run reads has them too)."""
    from meshstress.observe.capture import CaptureOptions, parse_targets

    opts = sc.capture or CaptureOptions()
    extra = parse_targets(targets, "--capture", "value", sc.topology)
    opts.targets = list(dict.fromkeys([*opts.targets, *extra]))
    sc.capture = opts
    sc.raw.setdefault("scenario", {})["capture"] = [str(t) for t in opts.targets]


def capacity_check(sc: Any, calibration: str | None, strict: bool, lab: bool = False) -> None:
    """Print the estimate and the host's capacity to stderr; with `strict`, raise
    CapabilityError (exit 3, one line) when the estimate exceeds the host."""
    from meshstress.errors import CapabilityError
    from meshstress.model import capacity
    from meshstress.observe.cpu import host_capacity

    where = capacity.where_of("lab" if lab else None, os.environ)
    cal = capacity.load_calibration(calibration, where)
    est = capacity.estimate_scenario(sc, cal)
    if lab:  # from the host, for a run in the lab: the guest's vCPUs and memory
        cores, mem, busy = capacity.lab_capacity(cal)
    else:  # this host, or inside the guest: what it has
        cores, mem, busy = host_capacity()
    lines, refuse = capacity.verdict(est, cores, mem, busy, sc.host_limits.max_host_busy)
    if where == "lab":
        lines.append("(VM lab: its own per-unit costs, an emulated CPU, measured in the lab)")
    for line in lines:
        _say(line)
    if refuse and strict:
        raise CapabilityError(refuse)


def exit_code(results: dict[str, Any]) -> int:
    """4 invalid (the host was saturated: the numbers measure it, not the mesh), else
    0 every check passed, 1 one failed."""
    if results.get("valid") is False:
        return 4
    return 0 if results.get("passed") else 1


def run_folder(name: str, stamp: str, out: str | None) -> Path:
    """The run folder: --out as given, else results/NAME-STAMP, which must lie directly
    in results/ (the scenario name was checked; this is the last line of defence)."""
    if out:
        return Path(out).absolute()
    results = Path("results").absolute()
    folder = results / f"{name}-{stamp}"
    if os.path.normpath(folder) != str(folder) or folder.parent != results:
        raise MeshstressError(f"run folder {folder} would lie outside {results}: refusing")
    return folder


@click.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True)
@click.option("--html", "as_html", is_flag=True, help="Also write report.html (plots inline).")
def report_cmd(run_dir: str, as_json: bool, as_html: bool) -> None:
    """Render a run folder again (summary.txt, junit.xml, plots) from its results.json."""
    from meshstress import report
    from meshstress.report import html

    try:
        results = report.rerender(Path(run_dir))
    except FileNotFoundError:
        raise MeshstressError(f"{run_dir}: no results.json") from None
    except ValueError as exc:
        raise MeshstressError(f"{run_dir}/results.json: {exc}") from None
    click.echo(json.dumps(results, indent=1) if as_json else report.summary(results), nl=False)
    if as_html:
        page = html.write(Path(run_dir), results)
        click.echo(f"report: {page}", err=True)
    sys.exit(exit_code(results))
