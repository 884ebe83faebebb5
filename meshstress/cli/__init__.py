"""The `meshstress` command line: a thin front over the library.

Subcommands load lazily (`COMMANDS`: name -> module, attribute, short help), so
`meshstress --help`, `--version` and `topo` start without importing pyroute2, psutil or
the runner: each command's module is imported only when that command runs. The short
help shown by `--help` is written here; tests/test_topo_cli.py checks it against each
command's own docstring."""

from __future__ import annotations

import errno
import sys
from typing import Any

import click

from meshstress.errors import Interrupted, MeshstressError, one_line

# click >= 8.2: a group called without a command raises this (a UsageError showing help)
_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _one_line(text: str) -> str:
    return one_line(" ".join(text.split()))


class Group(click.Group):
    """A click group that turns MeshstressError into one line and its exit code, and
    click's usage errors into one line with exit code 2 (not a usage block)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) > 3 or not kwargs.get("standalone_mode", True):
            return super().main(*args, **kwargs)
        kwargs["standalone_mode"] = False
        argv = args[0] if args else kwargs.get("args")
        for arg in sys.argv[1:] if argv is None else argv:
            if isinstance(arg, str) and "\x00" in arg:  # only in-process: no path takes one
                click.echo(f"meshstress: argument {arg!r} contains a NUL character",
                           err=True)  # fmt: skip
                sys.exit(2)
        try:
            rv = super().main(*args, **kwargs)
        except _NO_ARGS_IS_HELP as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else "")
            sys.exit(0)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "meshstress"
            click.echo(f"{where}: {_one_line(exc.format_message())} "
                       f"(see {where} --help)", err=True)  # fmt: skip
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"meshstress: {_one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("meshstress: aborted", err=True)
            sys.exit(1)
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # stdout closed early (| head): as click does
                sys.exit(1)
            raise
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except MeshstressError as exc:
            click.echo(f"meshstress: {one_line(str(exc))}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("meshstress: interrupted; what was built has been removed", err=True)
            sys.exit(130)
        except Interrupted as exc:
            click.echo(f"meshstress: {exc}; what was built has been removed", err=True)
            sys.exit(143)


# name -> (module, attribute, the first paragraph of its help, which `meshstress --help`
# shortens as click would)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "clean": ("meshstress.cli.host", "clean",
        'Remove what runs left behind: by state file, then by prefix and mark. A run '
        'whose owner is still alive (a `meshstress run` or a test in progress) is left '
        'alone.'),
    "doctor": ("meshstress.cli.host", "doctor",
        'What this host can do, and how to get what it lacks.'),
    "down": ("meshstress.cli.host", "down",
        'Tear a run down: processes, namespaces, links, files.'),
    "exec": ("meshstress.cli.host", "exec_",
        "Run COMMAND inside NODE's network namespace; @NODE stands for that node's "
        'address: meshstress exec n0 -- ping -c3 @n2'),
    "lab": ("meshstress.lab.cli", "lab",
        'Run meshstress inside a micro-VM with a stock kernel.'),
    "report": ("meshstress.cli.run", "report_cmd",
        'Render a run folder again (summary.txt, junit.xml, plots) from its results.json.'),
    "routes": ("meshstress.cli.host", "routes",
        'Routing tables per node: next hop, hops and metric to every other node '
        '(batman-adv: from the originator table). With --watch, count route flaps.'),
    "run": ("meshstress.cli.run", "run",
        'Run a scenario: build the mesh, send traffic, apply events, measure, judge.'),
    "status": ("meshstress.cli.host", "status",
        'Show the runs that are up.'),
    "topo": ("meshstress.cli.topo", "topo",
        'Generate and inspect topology files.'),
    "up": ("meshstress.cli.host", "up",
        'Build the mesh described by TOPOLOGY (.toml or meshnet-lab .json).'),
}  # fmt: skip


def load_command(name: str) -> click.Command:
    """Import the module of command `name` and return its click command."""
    import importlib

    module, attr, _ = COMMANDS[name]
    command = getattr(importlib.import_module(module), attr)
    assert isinstance(command, click.Command), (name, command)
    return command


class LazyGroup(Group):
    """A Group whose subcommands are imported when they run (see COMMANDS)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load_command(cmd_name) if cmd_name in COMMANDS else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)  # as click does
        rows = [(n, click.Command(n, help=COMMANDS[n][2]).get_short_help_str(limit)) for n in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(package_name="meshstress")
def cli() -> None:
    """Stress-test mesh networks on one Linux host."""


def main() -> None:
    cli(prog_name="meshstress")  # also under `python -m meshstress`
