"""The ``igds-fast`` command line. Commands parse their options, call the library, and print."""

from __future__ import annotations

import sys

import typer

from .. import __version__
from ..errors import UserError
from . import _env, bench, distill, eval, export, sample, train, verify  # noqa: F401 (_env first: before torch loads)

try:  # typer >= 0.22 carries its own copy of click; its errors derive from TyperException
    from typer import TyperException as ClickError
except ImportError:  # pragma: no cover (older typer: click's own)
    from click import ClickException as ClickError

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


def usage_error(e: ClickError) -> str:
    """Click's usage error (a bad value, an unknown option, a missing one) as the one line every
    other error is: what is wrong, then where the command's options are described."""
    message = " ".join(e.format_message().split()).rstrip(".")
    ctx = getattr(e, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"{message}{where}"


def main() -> None:
    try:
        code = app(standalone_mode=False)  # click's usage errors reach us, to be printed as one line
    except ClickError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare `igds-fast` or `igds-fast baseline`: the help
            if e.format_message().strip():  # (rich has printed it already)
                e.show()
            sys.exit(e.exit_code)
        typer.echo(f"error: {usage_error(e)}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
