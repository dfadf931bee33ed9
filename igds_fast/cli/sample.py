"""``igds-fast sample``: the reference sampler (a grid of classes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from . import options as opt


@opt.step_options(guidance="off")
def sample(
    classes: str = typer.Option(..., help="Class labels of the model (207,3) or WNIDs."),
    denoiser: Path | None = opt.denoiser(),
    vae: str | None = opt.vae(),
    critics: Path | None = opt.critics(),
    n_per_class: int = typer.Option(1, help="Samples per class."),
    seed: int = typer.Option(0, help="Global seed; each sample's noise derives from (seed, class, index)."),
    batch_size: int = typer.Option(16, help="Samples per denoiser batch."),
    init_noise: Path | None = typer.Option(None, help="Initial noise .npy of shape (N, C, H, W)."),
    latents_out: Path | None = typer.Option(None, help="Write the final latents here (.npy)."),
    out: Path = typer.Option(Path("grid.png"), help="Grid image (.png): one row per class."),
    no_images: bool = typer.Option(
        False, "--no-images", help="Write only --latents-out: no decoding (a latent model needs no --vae)."
    ),
    device: str = opt.device(),
    dtype: str = typer.Option("fp32", help="Denoiser precision: fp32, fp16 or bf16."),
    step: dict[str, Any] | None = None,
) -> None:
    """Sample a grid of images for some classes (the reference sampler)."""
    from ..api import sample as run_sample

    res = run_sample(
        classes,
        out=out,
        denoiser=denoiser,
        vae=vae,
        critics=critics,
        n_per_class=n_per_class,
        seed=seed,
        batch_size=batch_size,
        init_noise=init_noise,
        latents_out=latents_out,
        no_images=no_images,
        device=device,
        dtype=dtype,
        step=step,
    )
    if res.out is not None:
        typer.echo(f"wrote {res.out} ({res.images} images, {len(res.classes)} classes)")
    if res.latents_out is not None:
        typer.echo(f"wrote {res.latents_out} {tuple(res.latents.shape)}")


def register(app: typer.Typer) -> None:
    app.command()(sample)
