"""``igds-fast sample``: the reference sampler (a grid of classes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..errors import UserError
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
    import numpy as np

    from ..config import parse_classes, step_config
    from ..imageio import grid, save_picture, write_atomic
    from ..jobs.events import show_progress
    from ..jobs.sample import sample_classes, sample_pipeline
    from ..jobs.state import npy_bytes
    from ..models.embedded import resolve_models
    from ..models.labels import model_labels

    labels = parse_classes(classes)
    cfg = step_config(step)
    models = resolve_models(denoiser, vae, critics, cfg.guidance)
    if no_images and latents_out is None:
        raise UserError("--no-images writes only the latents: pass --latents-out FILE.npy")
    outputs = [(latents_out, "--latents-out", ".npy")] + ([] if no_images else [(out, "--out", ".png")])
    for path, option, suffix in outputs:
        if path is None:
            continue
        if path.is_dir():
            raise UserError(f"{option} '{path}' is a folder; give a file name ending in {suffix}")
        if path.suffix.lower() != suffix:
            raise UserError(f"{option} '{path}' must end in {suffix} (it is written as {suffix[1:].upper()})")
        if not path.parent.is_dir():
            raise UserError(f"output folder '{path.parent}' does not exist")
    noise = None if init_noise is None else read_noise(init_noise, np)
    pipe = sample_pipeline(
        models.denoiser, models.vae, models.critics, cfg, device=device, dtype=dtype, images=not no_images
    )
    labels = model_labels(labels, pipe.step.denoiser)
    latents, images, _, _ = sample_classes(
        pipe,
        labels,
        n_per_class,
        seed,
        batch_size,
        init_noise=noise,
        images_too=not no_images,
        progress=show_progress(None),
    )
    if images is not None:
        save_picture(grid(images, rows=len(labels)), out)
        typer.echo(f"wrote {out} ({len(images)} images, {len(labels)} classes)")
    if latents_out is not None:
        write_atomic(latents_out, npy_bytes(latents.numpy()))
        typer.echo(f"wrote {latents_out} {tuple(latents.shape)}")


def read_noise(path: Path, np: Any) -> Any:
    """``--init-noise``: a float .npy array (no pickles), or a one-line error."""
    if path.is_dir():
        raise UserError(f"--init-noise '{path}' is a folder; give a .npy file of shape (N, C, H, W)")
    if not path.is_file():
        raise UserError(f"--init-noise file '{path}' does not exist")
    try:
        noise = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"--init-noise '{path}' is not a NumPy .npy array ({str(e).splitlines()[0][:80]})") from None
    if not isinstance(noise, np.ndarray) or noise.dtype.kind not in "fiu":
        raise UserError(f"--init-noise '{path}' must hold a numeric array (N, C, H, W), not {type(noise).__name__}")
    return noise.astype(np.float32)


def register(app: typer.Typer) -> None:
    app.command()(sample)
