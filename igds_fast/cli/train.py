"""``igds-fast train-dit``, ``igds-fast train-critics`` and ``igds-fast pack-data``."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path

import typer

from ..errors import UserError
from .options import warn_if_slow_bf16


def train_dit_cmd(
    data: Path = typer.Option(
        ..., help="ImageFolder root (<wnid>/*.jpg), e.g. imagenette-64/train, or a data pack (.npz, pack-data)."
    ),
    out: Path = typer.Option(..., help="Output folder: denoiser.safetensors, train_state.pt, log.jsonl."),
    subset: str | None = typer.Option(None, help="Class subset (imagenette, imagewoof, ...)."),
    classes: str | None = typer.Option(
        None, help="Comma-separated WNIDs or ImageNet class names (tench) instead of --subset."
    ),
    resolution: int = typer.Option(32, help="Image resolution (latent models: R / the VAE factor per side)."),
    config: str = typer.Option("small", help="Model size preset: tiny, small, base."),
    vae: str | None = typer.Option(None, help="Train on this VAE's latents (a latent DiT); default: pixel space."),
    patch: int | None = typer.Option(None, help="Patch size instead of the preset's (2 on small latents)."),
    steps: int = typer.Option(20000, help="Total optimizer steps (resumes from out/train_state.pt)."),
    batch_size: int = typer.Option(64, help="Images per step."),
    lr: float = typer.Option(3e-4, help="AdamW learning rate (after linear warmup)."),
    ema_decay: float = typer.Option(0.999, help="EMA decay of the saved weights."),
    seed: int = typer.Option(0, help="Initialisation and data-order seed."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    ckpt_every: int = typer.Option(500, help="Checkpoint interval in steps."),
    precision: str = typer.Option(
        "auto", help="Forward pass: fp32 or bf16 (autocast) (default auto: bf16 on CUDA, else fp32)."
    ),
    compile_model: bool | None = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the model (default on for CUDA, off for the CPU)."
    ),
) -> None:
    """Train a class-conditional DiT (learned sigma, label dropout for CFG, EMA) on an ImageFolder."""
    from ..subsets import resolve_classes
    from ..training.train_dit import TrainDiTConfig, train_dit

    check_folder(data, "--data")
    wnids = [c.wnid for c in resolve_classes(subset, classes)]
    warn_if_slow_bf16(precision, device)
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
        vae=vae,
        patch=patch,
        precision=precision,
        compile=compile_model,
    )
    path = usual_mode(train_dit(cfg))
    typer.echo(f"wrote {path}")


def train_critics_cmd(
    data: Path = typer.Option(
        ..., help="ImageFolder root of real training images (<wnid>/*.jpg), or a data pack (.npz, pack-data)."
    ),
    out: Path = typer.Option(..., help="Output folder: critic.safetensors + critic.json (config, metrics)."),
    subset: str | None = typer.Option(None, help="Class subset (imagenette, imagewoof, imageidc, ...)."),
    classes: str | None = typer.Option(
        None, help="Comma-separated WNIDs or ImageNet class names (tench) instead of --subset."
    ),
    val: Path | None = typer.Option(None, help="Held-out real ImageFolder (default: every 10th image)."),
    denoiser: Path | None = typer.Option(None, help="Denoiser the critics guide (default: embedded)."),
    vae: str | None = typer.Option(None, help="VAE folder for latent denoisers, or 'none'."),
    steps: int = typer.Option(3000, help="Optimizer steps."),
    batch_size: int = typer.Option(128, help="Images per step (two noisings each)."),
    lr: float = typer.Option(1e-3, help="Peak AdamW learning rate (one-cycle)."),
    arch: str = typer.Option("vit", help="Critic trunk: vit (patch transformer) or conv (residual convolutions)."),
    width: int = typer.Option(192, help="Critic width (vit: tokens; conv: first stage's channels)."),
    depth: int = typer.Option(4, help="vit: transformer blocks; conv: residual blocks per stage."),
    heads: int = typer.Option(4, help="Attention heads of a vit critic (must divide --width)."),
    eval_images: int = typer.Option(1000, help="Held-out images scored per t bucket for the reported metrics."),
    feat_dim: int = typer.Option(64, help="Feature size of the entropy term's space."),
    seed: int = typer.Option(0, help="Seed."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    overwrite: bool = typer.Option(False, help="Replace finished critics in --out."),
    precision: str = typer.Option(
        "auto", help="Forward pass: fp32 or bf16 (autocast) (default auto: bf16 on CUDA, else fp32)."
    ),
    compile_model: bool | None = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the critic for training (default on for CUDA only)."
    ),
    shift: int = typer.Option(0, help="Augment: translate inputs by up to this many input positions (latent cells)."),
    t_power: float = typer.Option(1.0, help="Draw t = 1000 u^p: 1 uniform, 2 favours low noise (55%% below 300)."),
    crops: int = typer.Option(
        0, help="Augment: random-resized crops (scale 0.5-1) of each image, encoded once and cached beside it."
    ),
    ema: float = typer.Option(0.0, help="Decay of an exponential moving average of the weights, saved (0 = off)."),
) -> None:
    """Train the noise-conditional critics (class head + feature head) and report their I(X;Y) bound."""
    from ..models.embedded import resolve_models
    from ..models.labels import class_labels
    from ..models.loading import load_denoiser
    from ..models.vae import load_vae
    from ..subsets import resolve_classes
    from ..training.train_critic import TrainCriticConfig, train_critic

    # Everything that can be checked is checked before --out is created.
    check_critic_options(
        steps, batch_size, lr, width, depth, heads, eval_images, feat_dim, shift, t_power, crops, ema, arch
    )
    check_precision(precision)
    check_folder(data, "--data")
    if val is not None:
        check_folder(val, "--val")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; choose a folder for the critics")
    wnids = [c.wnid for c in resolve_classes(subset, classes)]
    models = resolve_models(denoiser, vae, None, "off")
    model = load_denoiser(models.denoiser)
    class_labels(model, wnids)  # every class must be one of the model's
    for folder, option in ((data, "--data"), (val, "--val")):
        if folder is not None and is_pack_file(folder):
            continue  # the pack's classes are checked when it is read
        lacking = [w for w in wnids if folder is not None and not (folder / w).is_dir()]
        if lacking:
            w = lacking[0]
            raise UserError(f"{option} '{folder}' has no folder for class {w} (expected {folder}/{w}/)")
    codec = load_vae(models.vae)
    warn_if_slow_bf16(precision, device)
    created = not out.exists()
    cfg = TrainCriticConfig(
        data=str(data),
        wnids=wnids,
        out=str(out),
        val=str(val) if val else None,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        arch=arch,
        width=width,
        depth=depth,
        heads=heads,
        feat_dim=feat_dim,
        seed=seed,
        device=device,
        eval_images=eval_images,
        precision=precision,
        compile=compile_model,
        shift=shift,
        t_power=t_power,
        crops=crops,
        ema=ema,
    )
    try:
        path = usual_mode(train_critic(cfg, model, codec, overwrite=overwrite))
    except UserError:
        if created:
            shutil.rmtree(out, ignore_errors=True)  # refused inside training: leave no --out (or its cache) behind
        raise
    m = json.loads((out / "critic.json").read_text())["metrics"]
    typer.echo(
        f"wrote {path}: held-out accuracy {m['trained']['acc']:.3f}, I(X;Y) bound "
        f"{m['trained']['ba_bound_nats']:.3f} nats (untrained {m['untrained']['ba_bound_nats']:.3f}, "
        f"ln K {m['trained']['ln_k']:.3f})"
    )


def usual_mode(path: Path) -> Path:
    """safetensors' ``save_file`` creates its file 0600; give the weights the mode every other output
    has (0666 & ~umask), so whoever reads the other outputs can read the weights too."""
    mask = os.umask(0)
    os.umask(mask)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~mask)
    return Path(path)


def is_pack_file(path: Path) -> bool:
    return path.suffix == ".npz" and path.is_file()  # training.data_pack.PACK_SUFFIX


def check_folder(path: Path, option: str) -> None:
    if is_pack_file(path):
        return
    if not path.exists():
        raise UserError(f"{option} folder '{path}' does not exist")
    if not path.is_dir():
        raise UserError(f"{option} '{path}' is a file; give an ImageFolder root (<wnid>/*.jpg)")


def check_precision(precision: str) -> None:
    from ..training.accel import PRECISIONS

    if precision not in PRECISIONS:
        raise UserError(f"unknown --precision '{precision}': use {', '.join(PRECISIONS)}")


def check_critic_options(
    steps: int,
    batch_size: int,
    lr: float,
    width: int,
    depth: int,
    heads: int,
    eval_images: int,
    feat_dim: int,
    shift: int = 0,
    t_power: float = 1.0,
    crops: int = 0,
    ema: float = 0.0,
    arch: str = "vit",
) -> None:
    from ..models.critics import CRITIC_ARCHS

    if arch not in CRITIC_ARCHS:
        raise UserError(f"unknown --arch '{arch}': use {' or '.join(CRITIC_ARCHS)}")
    if steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    if batch_size < 2:
        raise UserError(f"--batch-size must be >= 2 (the contrastive term pairs samples), got {batch_size}")
    if not (math.isfinite(lr) and lr > 0):
        raise UserError(f"--lr must be a positive number, got {lr}")
    sizes = [("--width", width), ("--depth", depth), ("--feat-dim", feat_dim)]
    if arch == "vit":  # a conv critic has no heads
        sizes.append(("--heads", heads))
    for name, v in sizes:
        if v < 1:
            raise UserError(f"{name} must be >= 1, got {v}")
    if arch == "vit" and width % heads:
        raise UserError(f"--heads {heads} must divide --width {width}")
    if eval_images < 1:
        raise UserError(f"--eval-images must be >= 1, got {eval_images}")
    if shift < 0:
        raise UserError(f"--shift must be >= 0 (input positions), got {shift}")
    if not (math.isfinite(t_power) and t_power > 0):
        raise UserError(f"--t-power must be a positive number (1 = uniform t), got {t_power}")
    if crops < 0:
        raise UserError(f"--crops must be >= 0 (crops per image), got {crops}")
    if not (math.isfinite(ema) and 0 <= ema < 1):
        raise UserError(f"--ema must be in [0, 1) (0 = off; e.g. 0.999), got {ema}")


def pack_data_cmd(
    data: Path = typer.Option(..., help="ImageFolder root (<wnid>/*.jpg), e.g. imagenette-64/train."),
    out: Path = typer.Option(..., help="The pack file to write (.npz), e.g. runs/packs/imagenette-32-train.npz."),
    subset: str | None = typer.Option(None, help="Class subset (imagenette, imagewoof, ...)."),
    classes: str | None = typer.Option(
        None, help="Comma-separated WNIDs or ImageNet class names (tench) instead of --subset."
    ),
    resolution: int = typer.Option(32, help="Image size in px (the model's resolution)."),
) -> None:
    """Pack an ImageFolder at one resolution into one uint8 .npz that train-dit and train-critics read
    (Imagenette train at 32 px: 29 MB). The images keep their licence: never commit a pack."""
    from ..subsets import resolve_classes
    from ..training.data_pack import write_pack

    check_folder(data, "--data")
    if resolution < 8:
        raise UserError(f"--resolution must be >= 8, got {resolution}")
    wnids = [c.wnid for c in resolve_classes(subset, classes)]
    path = write_pack(data, wnids, resolution, out)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {len(wnids)} classes, {resolution} px)")


def register(app: typer.Typer) -> None:
    app.command("train-dit")(train_dit_cmd)
    app.command("train-critics")(train_critics_cmd)
    app.command("pack-data")(pack_data_cmd)
