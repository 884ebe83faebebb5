"""`meshstress lab ...`: run commands inside the VM lab, inspect it, prefetch its kernel."""

from __future__ import annotations

import json
import sys

import click

from meshstress.lab import kernel as kmod
from meshstress.lab import runner


@click.group()
def lab() -> None:
    """Run meshstress inside a micro-VM with a stock kernel."""


_kernel_opt = click.option(
    "--kernel",
    "kernel_package",
    default=None,
    help="Distribution kernel package, metapackage or versioned linux-image-* "
    "[default: linux-image-amd64 on Debian, linux-image-generic on Ubuntu].",
)


@lab.command(
    "run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@_kernel_opt
@click.option("--mem", default=runner.DEFAULT_MEM_MB, show_default=True, help="Guest MiB.")
@click.option("--cpus", default=runner.DEFAULT_CPUS, show_default=True, help="Guest vCPUs.")
@click.option(
    "--timeout",
    default=runner.DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds before the guest is killed (exit 124); 0 for none.",
)
@click.option(
    "--share",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Host directory shared writable at the same path [default: the git tree of cwd].",
)
@click.option("--no-share", is_flag=True, help="Share nothing writable (results stay in guest).")
@click.option("--keep", is_flag=True, help="Keep the run directory (console log) for debugging.")
@click.option("-v", "--verbose", is_flag=True, help="Print boot timing on stderr.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run_cmd(
    kernel_package: str | None,
    mem: int,
    cpus: int,
    timeout: float,
    share: str | None,
    no_share: bool,
    keep: bool,
    verbose: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND as root in the lab VM, in this directory with this environment.

    COMMAND's stdout and stderr come back on ours; its exit code becomes ours.
    """
    timings: dict[str, float] = {}
    share_arg: str | bool | None = False if no_share else (share or True)
    try:
        rc = runner.run_in_lab(
            list(command),
            timeout=timeout or None,
            mem=mem,
            cpus=cpus,
            kernel_package=kernel_package,
            share=share_arg,
            keep=keep,
            timings=timings,
        )
    except KeyboardInterrupt:
        click.echo("meshstress lab: interrupted; guest stopped", err=True)
        sys.exit(130)
    except runner.LabTerminated as exc:
        click.echo(f"meshstress lab: signal {exc.signum}; guest stopped", err=True)
        sys.exit(128 + exc.signum)
    if verbose:
        parts = [f"{k}={v:.2f}s" for k, v in sorted(timings.items())]
        click.echo("meshstress lab: " + " ".join(parts), err=True)
    sys.exit(rc)


@lab.command("doctor")
@_kernel_opt
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor_cmd(kernel_package: str | None, as_json: bool) -> None:
    """Boot the lab and report what its kernel offers."""
    from meshstress.lab.doctor import doctor, render_table

    report = doctor(kernel_package)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        click.echo(render_table(report))
    sys.exit(0 if report.get("ok") else 1)


@lab.command("fetch")
@_kernel_opt
@click.option("--refresh", is_flag=True, help="Ask apt for the current version again.")
def fetch_cmd(kernel_package: str | None, refresh: bool) -> None:
    """Download and unpack the lab kernel (and headers) into the cache."""
    from meshstress.lab.initramfs import build_initramfs

    k = kmod.fetch_kernel(kernel_package, refresh=refresh)
    initrd = build_initramfs(k)
    click.echo(f"{k.package} {k.version} ({k.release}) at {k.root}; initramfs {initrd}")


@lab.command("clean")
def clean_cmd() -> None:
    """Stop qemus left by lab runs whose owner died; remove old kept run directories."""
    for name in runner.reap_stale() + runner.remove_kept_rundirs():
        click.echo(f"removed {name}")
