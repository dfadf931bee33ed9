"""``igds-fast sample``: the reference sampler (a grid of classes)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UserError
from . import options as opt


def sample(
    classes: str = typer.Option(..., help="Class labels of the model (207,3) or WNIDs."),
    denoiser: Path | None = opt.denoiser(),
    vae: str | None = opt.vae(),
    critics: Path | None = opt.critics(),
    n_per_class: int = typer.Option(1, help="Samples per class."),
    steps: str | None = opt.steps(),
    sampler: str | None = opt.sampler(),
    eta: float | None = opt.eta(),
    cfg_scale: float | None = opt.cfg_scale(),
    cfg_channels: str | None = opt.cfg_channels(),
    guidance: str = typer.Option("off", help="igds (our information guidance) or off [off]."),
    guidance_scale: float | None = opt.guidance_scale(),
    beta: float | None = opt.beta(),
    window_lo: int | None = opt.window_lo(),
    window_hi: int | None = opt.window_hi(),
    ipc: int | None = typer.Option(None, help="Images per class, for the default beta(IPC) [--n-per-class]."),
    seed: int = typer.Option(0, help="Global seed; each sample's noise derives from (seed, class, index)."),
    batch_size: int = typer.Option(16, help="Samples per denoiser batch."),
    init_noise: Path | None = typer.Option(None, help="Initial noise .npy of shape (N, C, H, W)."),
    latents_out: Path | None = typer.Option(None, help="Write the final latents here (.npy)."),
    out: Path = typer.Option(Path("grid.png"), help="Grid image: one row per class."),
    device: str = opt.device(),
    dtype: str = typer.Option("fp32", help="Denoiser precision: fp32, fp16 or bf16."),
) -> None:
    """Sample a grid of images for some classes (the reference sampler)."""
    import numpy as np

    from ..config import parse_classes, step_config
    from ..imageio import grid, save_picture
    from ..jobs.sample import sample_classes
    from ..models.embedded import resolve_models
    from ..models.labels import model_labels
    from ..sampling.pipeline import build_pipeline

    labels = parse_classes(classes)
    cfg = step_config(ipc if ipc is not None else n_per_class, opt.step_flags(locals()))
    models = resolve_models(denoiser, vae, critics, cfg.guidance)
    noise = None
    if init_noise is not None:
        if not init_noise.is_file():
            raise UserError(f"--init-noise file '{init_noise}' does not exist")
        noise = np.load(init_noise)
    for path in (out, latents_out):
        if path is not None and not path.parent.exists():
            raise UserError(f"output folder '{path.parent}' does not exist")
    pipe = build_pipeline(models.denoiser, models.vae, models.critics, cfg, device=device, dtype=dtype)
    labels = model_labels(labels, pipe.step.denoiser)
    latents, images, _, _ = sample_classes(pipe, labels, n_per_class, seed, batch_size, init_noise=noise)
    save_picture(grid(images, rows=len(labels)), out)
    typer.echo(f"wrote {out} ({len(images)} images, {len(labels)} classes)")
    if latents_out is not None:
        np.save(latents_out, latents.numpy())
        typer.echo(f"wrote {latents_out} {tuple(latents.shape)}")


def register(app: typer.Typer) -> None:
    app.command()(sample)
