"""``igds-fast export``: build an engine folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from . import options as opt


@opt.step_options()
def export(
    out: Path = typer.Option(..., help="Engine folder to create, e.g. engines/dit-b16."),
    recipe: str | None = typer.Option(
        None,
        "--recipe",
        "--config",
        help="TOML recipe: a packaged one by name (embedded-ort-b16, dit-xl2-256-compiled, dit-xl2-256-trt-fp16) "
        "or a file; the options given here override its keys.",
    ),
    denoiser: Path | None = opt.denoiser(),
    vae: str | None = opt.vae(),
    critics: Path | None = opt.critics(),
    batch_size: int | None = typer.Option(None, help="Static batch B of the engine [16]."),
    memory_size: int | None = typer.Option(None, help="Static memory rows M (earlier samples' features) [64]."),
    ipc: int | None = typer.Option(None, help="Images per class the engine is for (recorded) [10]."),
    precision: str | None = typer.Option(None, help="fp32, fp16, bf16 (fp8: see docs/export.md) [fp32]."),
    backend: str | None = typer.Option(None, help="onnxruntime, tensorrt or compiled [onnxruntime]."),
    split: bool | None = typer.Option(None, "--split/--no-split", help="Also write denoiser/critic graphs."),
    device: str | None = typer.Option(None, help="Device to trace/compile on: cpu or cuda [cpu]."),
    verify: bool = typer.Option(False, help="Compare the engine with the eager step on random inputs."),
    overwrite: bool = typer.Option(False, help="Replace an existing engine folder (only an engine folder)."),
    step: dict[str, Any] | None = None,
) -> None:
    """Export the fused guided step (and the VAE decoder) as an engine folder with a manifest."""
    from ..api import export as run_export

    res = run_export(
        out,
        recipe=recipe,
        denoiser=denoiser,
        vae=vae,
        critics=critics,
        batch_size=batch_size,
        memory_size=memory_size,
        ipc=ipc,
        precision=precision,
        backend=backend,
        split=split,
        device=device,
        verify=verify,
        overwrite=overwrite,
        step=step,
    )
    typer.echo(f"wrote {res.out} ({res.backend}, {res.precision}, batch {res.batch_size}, memory {res.memory_size})")
    if res.verify is not None:
        typer.echo("relative error ||engine - eager|| / ||eager|| on random inputs:")
        for r in res.verify:
            name = "plain" if r.get("graph") == "plain" else "step"
            errors = "  ".join(f"{k} {v:.2e}" for k, v in r.items() if k not in ("i", "graph"))
            typer.echo(f"  {name:<5} {r['i']:>4}: {errors}")


def register(app: typer.Typer) -> None:
    app.command()(export)
