"""The ``igds-fast`` command line. Commands parse their options, call the library, and print.

Importing this package loads no torch (tests/test_cli_polish.py): the commands import the library
inside their bodies, so ``--help``, ``--version`` and shell completion answer at once.
"""

from __future__ import annotations

import errno
import inspect
import re
import sys

import typer

from .. import __version__
from ..errors import UserError, one_line
from . import _env, bench, distill, doctor, eval, export, sample, train, verify  # noqa: F401 (_env first)

try:  # typer >= 0.22 carries its own copy of click; its errors derive from TyperException
    from typer import TyperException as ClickError
except ImportError:  # pragma: no cover (older typer: click's own)
    from click import ClickException as ClickError

app = typer.Typer(
    help="Information-Guided Diffusion Sampling (IGDS) for dataset distillation: sample, train critics, "
    "export engines, distill whole ImageNet subsets, evaluate.",
    no_args_is_help=True,
    rich_markup_mode="rich",
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


for module in (sample, train, distill, export, eval, bench, verify, doctor):  # doctor after export: its --json
    module.register(app)

# Rich reads "[word ...]" in a help text as a style tag and drops it ("ddim [ddpm]" would print as
# "ddim"): help texts are plain text, so their brackets are escaped once, here, for every command.
_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def _plain(text: str | None) -> str | None:
    return None if text is None else _TAG.sub(lambda m: f"{m[1]}{m[1]}\\{m[2]}", text)


def _escape_help(typer_app: typer.Typer) -> None:
    seen: set[int] = set()  # the step flags' options are shared by several commands: escape each once
    for info in typer_app.registered_commands:
        callback = info.callback
        if callback is None:
            continue
        info.help = _plain(info.help if info.help is not None else inspect.getdoc(callback))
        for param in inspect.signature(callback).parameters.values():
            option = param.default
            if isinstance(option, typer.models.ParameterInfo) and id(option) not in seen:
                seen.add(id(option))
                option.help = _plain(option.help)


_escape_help(app)


def usage_error(e: ClickError) -> str:
    """Click's usage error (a bad value, an unknown option, a missing one) as the one line every
    other error is: what is wrong, then where the command's options are described."""
    message = one_line(" ".join(e.format_message().split()).rstrip("."))
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
    except OSError as e:  # a full disk or a file-size limit in a write the library did not name: one line
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        typer.echo(f"error: {one_line(str(e))}: free space (or raise the file-size limit) and rerun", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
