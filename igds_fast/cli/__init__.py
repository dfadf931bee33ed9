"""The ``igds-fast`` command line. Commands parse their options, call the library, and print."""

from __future__ import annotations

import sys

import typer

from .. import __version__
from ..errors import UserError
from . import bench, distill, eval, export, sample, train, verify

app = typer.Typer(
    help="Information-Guided Diffusion Sampling (IGDS) for dataset distillation: sample, train critics, "
    "export engines, distill whole ImageNet subsets, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"igds-fast {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass


for module in (sample, train, distill, export, eval, bench, verify):
    module.register(app)


def main() -> None:
    try:
        app()
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)

