"""The `meshstress` command line: a thin front over the library."""

from __future__ import annotations

import sys

import click

from meshstress.build import Interrupted
from meshstress.errors import MeshstressError


class Group(click.Group):
    """A click group that turns MeshstressError into one line and its exit code."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except MeshstressError as exc:
            click.echo(f"meshstress: {exc}", err=True)
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
    from meshstress import hostcli
    from meshstress.lab import lab
    from meshstress.run_cli import report_cmd, run
    from meshstress.topo_cli import topo

    cli.add_command(run)
    cli.add_command(report_cmd, name="report")
    cli.add_command(lab)
    cli.add_command(topo)
    for command in hostcli.COMMANDS:
        cli.add_command(command)
    cli.add_command(hostcli.exec_, name="exec")


_register()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
