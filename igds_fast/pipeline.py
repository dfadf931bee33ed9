"""Assemble denoiser, codec and critics into a guided step; sample batches of classes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .guidance.bounds import default_beta
from .guidance.step import GuidedStep, StepConfig
from .models.critics import load_critic
from .models.loading import load_denoiser
from .models.vae import PixelSpace, load_vae
from .sampling import run_chain
from .seeds import SampleNoise, sample_seed

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_BETA0 = 0.5


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is visible; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"unknown device '{name}': use cpu or cuda[:N]")
    return torch.device(name)


def resolve_beta(beta: float | None, ipc: int | None, guidance: str) -> float:
    if guidance == "off":
        return 0.0
    if beta is not None:
        if beta < 0:
            raise UserError(f"--beta must be >= 0, got {beta}")
        return beta
    return default_beta(ipc or 1, DEFAULT_BETA0)


@dataclass
class Pipeline:
    step: GuidedStep
    vae: nn.Module
    device: torch.device

    @property
    def shape(self) -> tuple[int, int, int]:
        d = self.step.denoiser
        return (int(d.in_channels), int(d.input_size), int(d.input_size))

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Denoiser space -> images in [-1, 1]."""
        with torch.no_grad():
            return self.vae.decode(x).float().clamp(-1, 1)


def build_pipeline(
    denoiser: str | Path,
    vae: str | Path | None,
    critics: str | Path | None,
    cfg: StepConfig,
    device: str = "cpu",
    dtype: str = "fp32",
) -> Pipeline:
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}': use fp32, fp16 or bf16")
    dev = resolve_device(device)
    model = load_denoiser(denoiser)
    codec = load_vae(vae)
    if isinstance(codec, PixelSpace) and model.in_channels != 3:
        raise UserError(f"the denoiser works on {model.in_channels}-channel latents: pass --vae PATH to its VAE")
    if not isinstance(codec, PixelSpace) and codec.channels != model.in_channels:
        raise UserError(f"the VAE has {codec.channels} latent channels, the denoiser {model.in_channels}")
    critic = load_critic(critics) if (critics is not None and cfg.guidance == "igds") else None
    if critic is not None:
        critic.requires_grad_(False)
    model.requires_grad_(False)
    step = GuidedStep(model.to(DTYPES[dtype]), cfg, critic).to(dev)
    return Pipeline(step=step, vae=codec.to(dev), device=dev)


def sample_classes(
    pipe: Pipeline,
    labels: list[int],
    n_per_class: int,
    seed: int,
    batch_size: int,
    init_noise: np.ndarray | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples in class-major order: (final latents (N, C, H, W), images in [-1, 1])."""
    from tqdm import tqdm

    if n_per_class <= 0:
        raise UserError(f"--n-per-class must be >= 1, got {n_per_class}")
    if batch_size <= 0:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    pipe.step.check_labels(labels)
    items = [(c, k) for c in labels for k in range(n_per_class)]
    if init_noise is not None and init_noise.shape != (len(items), *pipe.shape):
        raise UserError(f"--init-noise has shape {init_noise.shape}, expected {(len(items), *pipe.shape)}")
    n_steps = len(pipe.step.schedule)
    bar = tqdm(total=len(items) * n_steps, desc="sampling", unit="step", disable=not progress, leave=False)
    latents, images = [], []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        noise = SampleNoise([sample_seed(seed, c, k) for c, k in batch], pipe.shape, pipe.device)
        x_init = None if init_noise is None else torch.from_numpy(init_noise[start : start + len(batch)]).float()
        y = torch.tensor([c for c, _ in batch])
        res = run_chain(pipe.step, n_steps, y, noise, x_init=x_init, on_step=lambda _i, _x, n=len(batch): bar.update(n))
        latents.append(res.x0.cpu())
        images.append(pipe.decode(res.x0).cpu())
    bar.close()
    return torch.cat(latents), torch.cat(images)
