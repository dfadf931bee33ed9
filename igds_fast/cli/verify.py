"""``igds-fast verify``: check a finished set file by file; ``--repair`` regenerates what is damaged."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UserError
from . import options as opt


def verify(
    out: Path = typer.Argument(
        ..., help="The set's folder (a distilled or random-real set, or any set with a metadata.parquet)."
    ),
    repair: bool = typer.Option(
        False, help="Regenerate missing or damaged images (same bytes: needs the models the set was made with)."
    ),
    denoiser: Path | None = opt.denoiser(),
    vae: str | None = opt.vae(),
    critics: Path | None = opt.critics(),
    engines: Path | None = typer.Option(None, help="With --repair: the engine folder the set was made with."),
    engine_cache: Path | None = typer.Option(
        None, help="Engine cache (default $IGDS_ENGINE_CACHE or ~/.cache/igds-fast/engines)."
    ),
    device: str = opt.device(),
    wait: bool = typer.Option(False, help="With --repair: wait for another writer of the folder to finish."),
    log_json: Path | None = typer.Option(
        None, "--log-json", help="Write the JSON events here instead of stdout ('-': stdout)."
    ),
) -> None:
    """Check every image's size and sha256 against the set's records and manifest; report (and with
    --repair, fix) what is missing or damaged.

    Events are JSON lines on stdout (or --log-json FILE); the last, ``verified``, is the report.
    Exit codes: 0 intact (or fully repaired), 3 damage left, 2 user error, 1 bug."""
    from ..jobs.events import EXIT_INCOMPLETE, Events, check_log_path, is_stdout
    from ..jobs.verify import repair_set, verify_set

    check_log_path(log_json)  # before any event is written there
    events = Events(path=log_json, out=out)
    try:
        rep = verify_set(out)
        if not rep.ok:
            events.emit("damaged", **{k: v for k, v in rep.as_dict().items() if k not in ("out", "repaired")})
        if repair and not rep.ok:
            if rep.kind != "distilled":
                raise UserError(
                    f"'{out}' has no unit records, so its images cannot be regenerated; "
                    "rebuild it with the command that made it"
                )
            rep, _ = repair_set(
                out,
                events,
                denoiser=denoiser,
                vae=vae,
                critics=critics,
                engines=engines,
                engine_cache=engine_cache,
                device=device,
                wait=wait,
            )
        report = rep.as_dict()
        events.emit("verified", **report)
        if log_json is not None and not is_stdout(log_json):
            Events(out=out).emit("verified", **report)
    except UserError as e:
        events.emit("error", message=str(e), exit_code=2)
        raise
    finally:
        events.close()
    if not rep.ok:
        typer.echo(
            f"{out}: {'; '.join(rep.problems())}" + ("" if repair else "; rerun with --repair to regenerate them"),
            err=True,
        )
        raise typer.Exit(EXIT_INCOMPLETE)


def register(app: typer.Typer) -> None:
    app.command()(verify)
