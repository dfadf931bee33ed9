"""Train (or fine-tune) a class-conditional DiT: learned sigma, DiT schedule, label dropout, EMA.

Resumable: ``<out>/train_state.pt`` holds model, EMA, optimizer and step (tensors only, loaded
with ``weights_only=True``); ``<out>/denoiser.safetensors`` holds the EMA weights in our format.

On CUDA: the training set lives on the GPU (pixel space as uint8, scaled per batch; latents as
float), every random draw is made there, the forward pass runs under bf16 autocast (the losses in
fp32) and the model is compiled with ``torch.compile``. ``--data`` is an ImageFolder or a data pack
(``training.data_pack``).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import resolve_device
from ..diffusion.schedule import Schedule
from ..errors import UserError
from ..imagefolder import to_model_range
from ..models.dit import DiT, DiTConfig
from ..models.loading import save_denoiser
from ..models.vae import load_vae
from .accel import autocast, autocast_dtype, compiled_forward
from .data_pack import load_training_images
from .latents import encoded_views
from .losses import hybrid_loss, q_sample

# Presets for small pixel/latent models (name -> hidden, depth, heads, patch).
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (192, 6, 3, 4),
    "small": (256, 8, 4, 4),
    "base": (384, 12, 6, 4),
}


@dataclass
class TrainDiTConfig:
    data: str
    wnids: list[str]
    out: str
    resolution: int = 32
    preset: str = "small"
    steps: int = 20000
    batch_size: int = 64
    lr: float = 3e-4
    warmup: int = 500
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    seed: int = 0
    device: str = "cpu"
    ckpt_every: int = 1000
    log_every: int = 50
    vae: str | None = None  # a VAE: train on its latents of the images (latent DiT); None: pixel space
    patch: int | None = None  # patch size instead of the preset's (e.g. 2 on 16x16 latents)
    precision: str = "auto"  # forward pass: fp32, or bf16 autocast; auto = bf16 on CUDA, fp32 elsewhere
    compile: bool | None = None  # torch.compile the model; None = on CUDA only

    def validate(self) -> TrainDiTConfig:
        """Every option checked before ``out`` is created."""
        if self.batch_size <= 0 or self.steps <= 0:
            raise UserError("--batch-size and --steps must be >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if not 0 <= self.ema_decay < 1:  # also NaN
            raise UserError(f"--ema-decay must lie in [0, 1) (0.999 keeps a slow average), got {self.ema_decay}")
        if self.ckpt_every < 1:
            raise UserError(f"--ckpt-every must be >= 1 (steps between checkpoints), got {self.ckpt_every}")
        if self.resolution < 8:
            raise UserError(f"--resolution must be >= 8, got {self.resolution}")
        if self.patch is not None and self.patch < 1:
            raise UserError(f"--patch must be >= 1, got {self.patch}")
        if self.preset not in PRESETS:
            raise UserError(f"unknown --config '{self.preset}': choose one of {', '.join(PRESETS)}")
        autocast_dtype(self.precision, resolve_device(self.device))  # checks --precision and --device
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out '{out}' is a file; choose a folder for the denoiser")
        return self


def build_model(cfg: TrainDiTConfig, in_channels: int, input_size: int) -> DiT:
    if cfg.preset not in PRESETS:
        raise UserError(f"unknown --config '{cfg.preset}': choose one of {', '.join(PRESETS)}")
    hidden, depth, heads, patch = PRESETS[cfg.preset]
    patch = cfg.patch or patch
    dcfg = DiTConfig(
        input_size=input_size,
        patch_size=patch,
        in_channels=in_channels,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        num_classes=len(cfg.wnids),
        wnids=list(cfg.wnids),
    )
    return DiT(dcfg).initialize(cfg.seed)


def training_data(images: torch.Tensor, vae: str | None, cache: Path) -> torch.Tensor:
    """(N, 2, C, H, W): every image and its mirror image in the VAE's scaled latents."""
    return encoded_views(images, load_vae(vae).eval(), cache)


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train_dit(cfg: TrainDiTConfig, progress: bool = True) -> Path:
    """Train until ``cfg.steps`` (resuming from ``<out>/train_state.pt``); returns the weights path."""
    cfg.validate()
    out = Path(cfg.out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _train(cfg, out, progress)
    except UserError:
        if created:
            shutil.rmtree(out, ignore_errors=True)  # refused (bad data, VAE, model): leave no --out behind
        raise


def _train(cfg: TrainDiTConfig, out: Path, progress: bool) -> Path:
    images, labels = load_training_images(cfg.data, cfg.wnids, cfg.resolution, cache_dir=out / "cache")
    device = torch.device(cfg.device)
    amp = autocast_dtype(cfg.precision, device)
    # (N, 2, C, H, W): each image and its mirror image, in the denoiser's space; pixels stay uint8
    # (scaled to [-1, 1] per batch, the same values), all of it held on the training device
    if cfg.vae is None:
        data = torch.stack([images, images.flip(-1)], dim=1).to(device)
    else:
        data = training_data(images, cfg.vae, out / "cache").to(device)
    labels = labels.to(device)
    model = build_model(cfg, data.shape[2], data.shape[3]).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    step = 0
    state_path = out / "train_state.pt"
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        if state["config"] != json.dumps(model.config.to_dict(), sort_keys=True):
            raise UserError(f"{state_path} was written for another model config; use a new --out")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
    tab = {k: v.to(device) for k, v in Schedule.create(1000).tables().items()}
    gen = torch.Generator(device).manual_seed(cfg.seed * 1_000_003 + step)  # resumes get a fresh stream
    forward = compiled_forward(model, cfg.compile, device)
    log = open(out / "log.jsonl", "a")  # noqa: SIM115 - held for the whole loop, closed at the end
    bar = tqdm(total=cfg.steps, initial=step, desc="train-dit", unit="step", disable=not progress)
    t_start, seen = time.perf_counter(), 0
    model.train()
    while step < cfg.steps:
        idx = torch.randint(len(data), (cfg.batch_size,), generator=gen, device=device)
        flip = (torch.rand(cfg.batch_size, generator=gen, device=device) < 0.5).long()
        x0 = data[idx, flip]
        x0 = to_model_range(x0) if x0.dtype == torch.uint8 else x0.float()
        y = labels[idx].clone()
        y[torch.rand(cfg.batch_size, generator=gen, device=device) < cfg.label_dropout] = model.num_classes  # null
        t = torch.randint(1000, (cfg.batch_size,), generator=gen, device=device)
        eps = torch.randn(x0.shape, generator=gen, device=device)
        x_t = q_sample(x0, t, eps, tab)
        with autocast(device, amp):
            pred = forward(x_t, t.float(), y)
        mse, vb = hybrid_loss(pred.float(), x0, x_t, t, eps, tab)
        loss = (mse + vb).mean()
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        # Warm the EMA up: a fixed 0.999 would keep short runs anchored to the (zero-output) init.
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        step += 1
        seen += cfg.batch_size
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            rate = seen / (time.perf_counter() - t_start)
            rec = {"step": step, "loss": loss.item(), "mse": mse.mean().item(), "vb": vb.mean().item(), "img_s": rate}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rate:.0f}")
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            state = {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "config": json.dumps(model.config.to_dict(), sort_keys=True),
            }
            _save_state(state_path, state)
            save_denoiser(ema.eval(), out / "denoiser.safetensors", extra={"train_step": str(step)})
    bar.close()
    log.close()
    return out / "denoiser.safetensors"
