"""``igds-fast doctor``: what runs on this machine, and what ``distill --backend auto`` would choose."""

from __future__ import annotations

import json

import typer


def doctor(
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of the text report."),
) -> None:
    """Report the device, libraries, what each backend can do on this machine and the automatic choice."""
    import torch

    from ..backends.doctor import report, summary
    from ..jobs.engine_cache import default_backend

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    auto = {}
    for device in devices:
        choice = default_backend(device)
        auto[device] = {"backend": choice.backend, "precision": choice.precision, "reason": choice.reason}
    if json_out:
        typer.echo(json.dumps(summary(auto), indent=1, default=str))
    else:
        typer.echo(report(auto))


def register(app: typer.Typer) -> None:
    app.command()(doctor)
