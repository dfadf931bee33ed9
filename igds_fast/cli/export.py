"""``igds-fast export`` (build an engine folder) and ``igds-fast doctor`` (what runs here)."""

from __future__ import annotations

from pathlib import Path

import typer

from . import options as opt


def export(
    out: Path = typer.Option(..., help="Engine folder to create, e.g. engines/dit-b16."),
    recipe: Path | None = typer.Option(None, help="TOML recipe (export/*.toml); flags override its fields."),
    denoiser: Path | None = opt.denoiser(),
    vae: str | None = opt.vae(),
    critics: Path | None = opt.critics(),
    batch_size: int | None = typer.Option(None, help="Static batch B of the engine [16]."),
    memory_size: int | None = typer.Option(None, help="Static memory rows M (earlier samples' features) [64]."),
    steps: str | None = opt.steps(),
    sampler: str | None = opt.sampler(),
    eta: float | None = opt.eta(),
    cfg_scale: float | None = opt.cfg_scale(),
    cfg_channels: str | None = opt.cfg_channels(),
    guidance: str | None = opt.guidance("igds"),
    guidance_scale: float | None = opt.guidance_scale(),
    beta: float | None = opt.beta(),
    window_lo: int | None = opt.window_lo(),
    window_hi: int | None = opt.window_hi(),
    weighting: str | None = opt.weighting(),
    diversity: str | None = opt.diversity(),
    range_guard: bool | None = opt.range_guard(),
    moment_guard: bool | None = opt.moment_guard(),
    spread_guard: bool | None = opt.spread_guard(),
    envelope_guard: bool | None = opt.envelope_guard(),
    clip_guard: float | None = opt.clip_guard(),
    ipc: int | None = typer.Option(None, help="Images per class the engine is for (recorded) [10]."),
    precision: str | None = typer.Option(None, help="fp32, fp16, bf16 (fp8: see docs/export.md) [fp32]."),
    backend: str | None = typer.Option(None, help="onnxruntime, tensorrt or compiled [onnxruntime]."),
    split: bool | None = typer.Option(None, "--split/--no-split", help="Also write denoiser/critic graphs."),
    device: str | None = typer.Option(None, help="Device to trace/compile on: cpu or cuda [cpu]."),
    verify: bool = typer.Option(False, help="Compare the engine with the eager step on random inputs."),
    overwrite: bool = typer.Option(False, help="Replace an existing engine folder (only an engine folder)."),
) -> None:
    """Export the fused guided step (and the VAE decoder) as an engine folder with a manifest."""
    from ..backends.build import export_engine, export_spec, verify_export

    flags = dict(locals())
    for k in ("out", "recipe", "verify", "overwrite"):
        flags.pop(k)
    spec = export_spec(recipe, flags, out, overwrite)
    export_engine(spec)
    typer.echo(f"wrote {out} ({spec.backend}, {spec.precision}, batch {spec.batch_size}, memory {spec.memory_size})")
    if verify:
        typer.echo("relative error ||engine - eager|| / ||eager|| on random inputs:")
        for r in verify_export(spec):
            name = "plain" if r.get("graph") == "plain" else "step"
            errors = "  ".join(f"{k} {v:.2e}" for k, v in r.items() if k not in ("i", "graph"))
            typer.echo(f"  {name:<5} {r['i']:>4}: {errors}")


def doctor() -> None:
    """Report the device, libraries and what each backend can do on this machine."""
    from ..backends.doctor import report

    typer.echo(report())


def register(app: typer.Typer) -> None:
    app.command()(export)
    app.command()(doctor)
