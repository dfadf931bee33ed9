"""``igds-fast train-dit`` and ``igds-fast train-critics``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import UserError


def train_dit_cmd(
    data: Path = typer.Option(..., help="ImageFolder root (<wnid>/*.jpg), e.g. imagenette-64/train."),
    out: Path = typer.Option(..., help="Output folder: denoiser.safetensors, train_state.pt, log.jsonl."),
    subset: str | None = typer.Option(None, help="Class subset (imagenette, imagewoof, ...)."),
    classes: str | None = typer.Option(None, help="Comma-separated WNIDs instead of --subset."),
    resolution: int = typer.Option(32, help="Training resolution (pixel space)."),
    config: str = typer.Option("small", help="Model size preset: tiny, small, base."),
    space: str = typer.Option("pixel", help="pixel (latent training: encode with --vae first; not yet)."),
    steps: int = typer.Option(20000, help="Total optimizer steps (resumes from out/train_state.pt)."),
    batch_size: int = typer.Option(64, help="Images per step."),
    lr: float = typer.Option(3e-4, help="AdamW learning rate (after linear warmup)."),
    ema_decay: float = typer.Option(0.999, help="EMA decay of the saved weights."),
    seed: int = typer.Option(0, help="Initialisation and data-order seed."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    ckpt_every: int = typer.Option(500, help="Checkpoint interval in steps."),
) -> None:
    """Train a class-conditional DiT (learned sigma, label dropout for CFG, EMA) on an ImageFolder."""
    from ..subsets import resolve_classes
    from ..training.train_dit import TrainDiTConfig, train_dit

    if space != "pixel":
        raise UserError("only --space pixel is supported by train-dit for now")
    wnids = [c.wnid for c in resolve_classes(subset, classes)]
    cfg = TrainDiTConfig(
        data=str(data),
        wnids=wnids,
        out=str(out),
        resolution=resolution,
        preset=config,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        ema_decay=ema_decay,
        seed=seed,
        device=device,
        ckpt_every=ckpt_every,
    )
    path = train_dit(cfg)
    typer.echo(f"wrote {path}")


def train_critics_cmd(
    data: Path = typer.Option(..., help="ImageFolder root of real training images (<wnid>/*.jpg)."),
    out: Path = typer.Option(..., help="Output folder: critic.safetensors + critic.json (config, metrics)."),
    subset: str | None = typer.Option(None, help="Class subset (imagenette, imagewoof, imageidc, ...)."),
    classes: str | None = typer.Option(None, help="Comma-separated WNIDs instead of --subset."),
    val: Path | None = typer.Option(None, help="Held-out real ImageFolder (default: every 10th image)."),
    denoiser: Path | None = typer.Option(None, help="Denoiser the critics guide (default: embedded)."),
    vae: str | None = typer.Option(None, help="VAE folder for latent denoisers, or 'none'."),
    steps: int = typer.Option(3000, help="Optimizer steps."),
    batch_size: int = typer.Option(128, help="Images per step (two noisings each)."),
    lr: float = typer.Option(1e-3, help="Peak AdamW learning rate (one-cycle)."),
    width: int = typer.Option(192, help="Critic width."),
    depth: int = typer.Option(4, help="Critic transformer blocks."),
    heads: int = typer.Option(4, help="Attention heads (must divide --width)."),
    eval_images: int = typer.Option(1000, help="Held-out images scored per t bucket for the reported metrics."),
    feat_dim: int = typer.Option(64, help="Feature size of the entropy term's space."),
    seed: int = typer.Option(0, help="Seed."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    overwrite: bool = typer.Option(False, help="Replace finished critics in --out."),
) -> None:
    """Train the noise-conditional critics (class head + feature head) and fit kernel widths."""
    from ..models.embedded import resolve_models
    from ..models.loading import load_denoiser
    from ..models.vae import load_vae
    from ..subsets import resolve_classes
    from ..training.train_critic import TrainCriticConfig, train_critic

    wnids = [c.wnid for c in resolve_classes(subset, classes)]
    models = resolve_models(denoiser, vae, None, "off")
    model = load_denoiser(models.denoiser)
    codec = load_vae(models.vae)
    cfg = TrainCriticConfig(
        data=str(data),
        wnids=wnids,
        out=str(out),
        val=str(val) if val else None,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        width=width,
        depth=depth,
        heads=heads,
        feat_dim=feat_dim,
        seed=seed,
        device=device,
        eval_images=eval_images,
    )
    path = train_critic(cfg, model, codec, overwrite=overwrite)
    m = json.loads((out / "critic.json").read_text())["metrics"]
    typer.echo(
        f"wrote {path}: held-out accuracy {m['trained']['acc']:.3f}, I(X;Y) bound "
        f"{m['trained']['ba_bound_nats']:.3f} nats (untrained {m['untrained']['ba_bound_nats']:.3f}, "
        f"ln K {m['trained']['ln_k']:.3f})"
    )


def register(app: typer.Typer) -> None:
    app.command("train-dit")(train_dit_cmd)
    app.command("train-critics")(train_critics_cmd)
