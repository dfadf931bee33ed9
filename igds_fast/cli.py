"""The ``igds-fast`` command line. Commands are thin: they parse, then call the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from . import __version__
from .defaults import GUIDANCE_SCALE
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


def parse_classes(text: str) -> list[int | str]:
    """``"207,3"`` (the model's labels) or WNIDs ``"n01440764,..."`` (mapped through the model later)."""
    out: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.startswith("n") and part[1:].isdigit():
            out.append(part)
        else:
            try:
                out.append(int(part))
            except ValueError:
                raise UserError(f"bad class '{part}' in --classes: use labels like 207,3 or WNIDs") from None
    if not out:
        raise UserError("--classes is empty: pass labels like 207,3")
    return out


def model_labels(classes: list[int | str], denoiser: object) -> list[int]:
    """Labels as given, and WNIDs through the model's class names (or ImageNet-1k indices)."""
    from .models.labels import class_labels

    return [c if isinstance(c, int) else class_labels(denoiser, [c])[0] for c in classes]


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
    denoiser: Path | None = typer.Option(None, help="Denoiser checkpoint/folder (default: embedded model)."),
    vae: str | None = typer.Option(None, help="diffusers AutoencoderKL folder, or 'none' for pixel space."),
    critics: Path | None = typer.Option(None, help="Critics file from train-critics (needed for --guidance igds)."),
    n_per_class: int = typer.Option(1, help="Samples per class."),
    sampler: str = typer.Option("ddpm", help="ddpm (ancestral, learned variance) or ddim."),
    eta: float = typer.Option(0.0, help="DDIM eta."),
    steps: str = typer.Option("50", help="Respaced step count (50), sections (10,20) or ddimN."),
    cfg_scale: float = typer.Option(4.0, help="Classifier-free guidance scale (1 = off)."),
    cfg_channels: str = typer.Option("3", help="Channels CFG applies to: 3 (DiT/Minimax) or all (diffusers)."),
    guidance: str = typer.Option("off", help="igds (our information guidance) or off."),
    guidance_scale: float = typer.Option(GUIDANCE_SCALE, help="IGDS gradient scale s."),
    beta: float | None = typer.Option(None, help="Weight of the contextual (H2) term; default beta(IPC)."),
    ipc: int | None = typer.Option(None, help="Images per class, for the default beta(IPC)."),
    seed: int = typer.Option(0, help="Global seed; each sample's noise derives from (seed, class, index)."),
    batch_size: int = typer.Option(16, help="Samples per denoiser batch."),
    init_noise: Path | None = typer.Option(None, help="Initial noise .npy of shape (N, C, H, W)."),
    latents_out: Path | None = typer.Option(None, help="Write the final latents here (.npy)."),
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
    labels = model_labels(labels, pipe.step.denoiser)
    latents, images, _, _ = sample_classes(pipe, labels, n_per_class, seed, batch_size, init_noise=noise)
    save_picture(grid(images, rows=len(labels)), out)
    typer.echo(f"wrote {out} ({len(images)} images, {len(labels)} classes)")
    if latents_out is not None:
        np.save(latents_out, latents.numpy())
        typer.echo(f"wrote {latents_out} {tuple(latents.shape)}")


@app.command("train-dit")
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
    from .subsets import resolve_classes
    from .training.train_dit import TrainDiTConfig, train_dit

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


@app.command("train-critics")
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
    from .models.embedded import denoiser_or_default
    from .models.loading import load_denoiser
    from .models.vae import load_vae
    from .subsets import resolve_classes
    from .training.train_critic import TrainCriticConfig, train_critic

    wnids = [c.wnid for c in resolve_classes(subset, classes)]
    model = load_denoiser(denoiser_or_default(denoiser))
    codec = load_vae(vae)
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


@app.command()
def distill(
    out: Path = typer.Option(Path("distilled"), help="Output ImageFolder (<wnid>/<index>.png) + manifest + run.json."),
    subset: str | None = typer.Option(None, help="imagenette (default), imagewoof, imageidc, imagenet100, imagenet1k."),
    classes: str | None = typer.Option(None, help="Comma-separated WNIDs instead of --subset."),
    classes_file: Path | None = typer.Option(None, help="File with one WNID a line instead of --subset."),
    ipc: int = typer.Option(10, help="Images per class."),
    batch_size: int | None = typer.Option(None, help="Samples per batch (one class a batch); default min(IPC, 32)."),
    seed: int = typer.Option(0, help="Global seed; each image's noise derives from (seed, class, index)."),
    engines: Path | None = typer.Option(None, help="Engine folder from `igds-fast export` (else --backend eager)."),
    backend: str = typer.Option("eager", help="eager when no --engines is given."),
    denoiser: Path | None = typer.Option(None, help="Denoiser (default: the embedded model)."),
    vae: str | None = typer.Option(None, help="VAE folder for latent models, or 'none'."),
    critics: Path | None = typer.Option(None, help="Critics (default: the embedded ones with the embedded model)."),
    guidance: str = typer.Option("igds", help="igds (information guidance) or off (plain DiT sampling)."),
    guidance_scale: float | None = typer.Option(None, help="IGDS gradient scale s [4]."),
    beta: float | None = typer.Option(None, help="Contextual-term weight; default beta(IPC) = 0.5 ln IPC."),
    steps: str = typer.Option("50", help="Respaced steps."),
    sampler: str = typer.Option("ddpm", help="ddpm or ddim."),
    cfg_scale: float = typer.Option(4.0, help="Classifier-free guidance scale."),
    cfg_channels: str = typer.Option("3", help="3 (DiT/Minimax) or all."),
    image_format: str = typer.Option("png", "--format", help="png or jpeg."),
    resolution: int | None = typer.Option(None, help="Resize written images to R px (default: model output size)."),
    shard: str | None = typer.Option(None, help="i/n: run every n-th class starting at i (array jobs)."),
    ray: str | None = typer.Option(None, help="Run on a Ray cluster: 'local' or an address (needs igds-fast[ray])."),
    overwrite: bool = typer.Option(False, help="Replace an earlier run with another configuration in --out."),
    device: str = typer.Option("cpu", help="cpu or cuda[:N]."),
    dtype: str = typer.Option("fp32", help="Denoiser precision for the eager backend."),
    log_json: bool = typer.Option(False, "--log-json", help="One JSON line per finished class on stderr."),
) -> None:
    """Distill a class subset into IPC synthetic images per class (the main job)."""
    options = dict(locals())
    from .jobs.run import DistillRequest, run_request

    summary = run_request(DistillRequest(**options))
    typer.echo(json.dumps(summary))


@app.command()
def demo(
    out: Path = typer.Option(Path("distilled-demo"), help="Where the distilled set goes."),
    engines: Path = typer.Option(Path("engines/embedded-ort-demo"), help="Engine folder (exported once, reused)."),
    val: Path | None = typer.Option(None, help="Real Imagenette val folder (default: $IGDS_DATA/imagenette-64/val)."),
    epochs: int = typer.Option(30, help="Training epochs of the quick evaluation (the protocol uses 2000)."),
) -> None:
    """Export the embedded model (ONNX Runtime), distill Imagenette IPC 10, evaluate: the tour in minutes."""
    from .jobs.demo import run_demo

    result = run_demo(out, engines, val, epochs)
    typer.echo(json.dumps(result, indent=1))


def _register_optional_commands() -> None:
    """Command groups that live in their own modules register themselves here."""
    import importlib

    for name in ("igds_fast.cli_eval", "igds_fast.cli_export", "igds_fast.cli_bench"):
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
