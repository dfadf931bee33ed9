"""The ``igds-fast`` command line. Commands are thin: they parse, then call the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .errors import UserError

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


def parse_classes(text: str) -> list[int]:
    """``"207,3"`` (model labels) or WNIDs ``"n01440764,..."`` (mapped to ImageNet-1k indices)."""
    from .subsets import class_info

    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.startswith("n") and part[1:].isdigit():
            out.append(class_info(part).imagenet_index)
        else:
            try:
                out.append(int(part))
            except ValueError:
                raise UserError(f"bad class '{part}' in --classes: use labels like 207,3 or WNIDs") from None
    if not out:
        raise UserError("--classes is empty: pass labels like 207,3")
    return out


def parse_cfg_channels(text: str) -> int | None:
    if text == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise UserError(f"--cfg-channels must be a positive count or 'all', got '{text}'")
    return n


@app.command()
def sample(
    classes: str = typer.Option(..., help="Class labels of the model (207,3) or WNIDs."),
    denoiser: Optional[Path] = typer.Option(None, help="Denoiser checkpoint/folder (default: embedded model)."),
    vae: Optional[str] = typer.Option(None, help="diffusers AutoencoderKL folder, or 'none' for pixel space."),
    critics: Optional[Path] = typer.Option(None, help="Critics file from train-critics (needed for --guidance igds)."),
    n_per_class: int = typer.Option(1, help="Samples per class."),
    sampler: str = typer.Option("ddpm", help="ddpm (ancestral, learned variance) or ddim."),
    eta: float = typer.Option(0.0, help="DDIM eta."),
    steps: str = typer.Option("50", help="Respaced step count (50), sections (10,20) or ddimN."),
    cfg_scale: float = typer.Option(4.0, help="Classifier-free guidance scale (1 = off)."),
    cfg_channels: str = typer.Option("3", help="Channels CFG applies to: 3 (DiT/Minimax) or all (diffusers)."),
    guidance: str = typer.Option("off", help="igds (our information guidance) or off."),
    guidance_scale: float = typer.Option(1.0, help="IGDS gradient scale s."),
    beta: Optional[float] = typer.Option(None, help="Weight of the contextual (H2) term; default beta(IPC)."),
    ipc: Optional[int] = typer.Option(None, help="Images per class, for the default beta(IPC)."),
    seed: int = typer.Option(0, help="Global seed; each sample's noise derives from (seed, class, index)."),
    batch_size: int = typer.Option(16, help="Samples per denoiser batch."),
    init_noise: Optional[Path] = typer.Option(None, help="Initial noise .npy of shape (N, C, H, W)."),
    latents_out: Optional[Path] = typer.Option(None, help="Write the final latents here (.npy)."),
    out: Path = typer.Option(Path("grid.png"), help="Grid image: one row per class."),
    device: str = typer.Option("cpu", help="cpu or cuda[:N]."),
    dtype: str = typer.Option("fp32", help="Denoiser precision: fp32, fp16 or bf16."),
) -> None:
    """Sample a grid of images for some classes (the reference sampler)."""
    import numpy as np

    from .guidance.step import StepConfig
    from .imageio import grid, save_picture
    from .models.embedded import critics_or_default, denoiser_or_default
    from .pipeline import build_pipeline, resolve_beta, sample_classes

    labels = parse_classes(classes)
    cfg = StepConfig(
        steps=steps,
        sampler=sampler,
        eta=eta,
        cfg_scale=cfg_scale,
        cfg_channels=parse_cfg_channels(cfg_channels),
        guidance=guidance,
        guidance_scale=guidance_scale,
        beta=resolve_beta(beta, ipc if ipc is not None else n_per_class, guidance),
    )
    den = denoiser_or_default(denoiser)
    crit = critics_or_default(critics, denoiser is not None) if guidance == "igds" else None
    if vae is None and denoiser is not None:
        vae = "none"
    noise = None
    if init_noise is not None:
        if not init_noise.is_file():
            raise UserError(f"--init-noise file '{init_noise}' does not exist")
        noise = np.load(init_noise)
    for path in (out, latents_out):
        if path is not None and not path.parent.exists():
            raise UserError(f"output folder '{path.parent}' does not exist")
    pipe = build_pipeline(den, vae, crit, cfg, device=device, dtype=dtype)
    latents, images = sample_classes(pipe, labels, n_per_class, seed, batch_size, init_noise=noise)
    save_picture(grid(images, rows=len(labels)), out)
    typer.echo(f"wrote {out} ({len(images)} images, {len(labels)} classes)")
    if latents_out is not None:
        np.save(latents_out, latents.numpy())
        typer.echo(f"wrote {latents_out} {tuple(latents.shape)}")


def _register_optional_commands() -> None:
    """Command groups that live in their own modules register themselves here."""
    import importlib

    for name in ("igds_fast.cli_eval", "igds_fast.cli_export"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(app)


_register_optional_commands()


def main() -> None:
    try:
        app()
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
