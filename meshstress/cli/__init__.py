"""The `meshstress` command line: a thin front over the library."""

from __future__ import annotations

import errno
import sys
from typing import Any

import click

from meshstress.build import Interrupted
from meshstress.errors import MeshstressError, one_line

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


@click.group(cls=Group)
@click.version_option(package_name="meshstress")
def cli() -> None:
    """Stress-test mesh networks on one Linux host."""


def _register() -> None:
    from meshstress.cli import host as hostcli
    from meshstress.cli.run import report_cmd, run
    from meshstress.cli.topo import topo
    from meshstress.lab import lab

    cli.add_command(run)
    cli.add_command(report_cmd, name="report")
    cli.add_command(lab)
    cli.add_command(topo)
    for command in hostcli.COMMANDS:
        cli.add_command(command)
    cli.add_command(hostcli.exec_, name="exec")


_register()


def main() -> None:
    cli(prog_name="meshstress")  # also under `python -m meshstress`

