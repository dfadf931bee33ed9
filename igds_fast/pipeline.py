"""Assemble denoiser, codec and critics into a guided step; sample batches of classes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .defaults import BETA0
from .errors import UserError
from .guidance.bounds import default_beta
from .guidance.step import GuidedStep, StepConfig
from .models.critics import load_critic
from .models.loading import load_denoiser
from .models.vae import PixelSpace, decode_images, load_vae
from .sampling import run_chunk

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
    return default_beta(ipc or 1, BETA0)


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
            return decode_images(self.vae, x)


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Samples in class-major order: (final latents (N, C, H, W), images in [-1, 1], log q, H2).

    Batches never mix classes and later chunks of a class see the earlier ones' features (the
    entropy term's memory), exactly as in a distill run with the same batch size.
    """
    from tqdm import tqdm

    from .backends.eager import EagerEngine
    from .jobs.units import class_units

    if n_per_class <= 0:
        raise UserError(f"--n-per-class must be >= 1, got {n_per_class}")
    if batch_size <= 0:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    pipe.step.check_labels(labels)
    total = len(labels) * n_per_class
    if init_noise is not None and init_noise.shape != (total, *pipe.shape):
        raise UserError(f"--init-noise has shape {init_noise.shape}, expected {(total, *pipe.shape)}")
    engine = EagerEngine(pipe.step, pipe.vae)
    n_steps = len(pipe.step.schedule)
    bar = tqdm(total=total * n_steps, desc="sampling", unit="step", disable=not progress, leave=False)
    latents, images, log_q, h2 = [], [], [], []
    for k, label in enumerate(labels):
        memory: list[np.ndarray] = []
        for unit in class_units(str(label), label, n_per_class, batch_size):
            x_init = None
            if init_noise is not None:
                first = k * n_per_class + unit.start
                x_init = torch.from_numpy(init_noise[first : first + unit.count]).float()
            x, feats, lq, h = run_chunk(
                engine, seed, unit, memory, x_init=x_init, on_step=lambda _i, _x, n=unit.count: bar.update(n)
            )
            memory.append(feats)
            latents.append(x.cpu())
            images.append(pipe.decode(x).cpu())
            log_q.append(torch.from_numpy(lq))
            h2.append(torch.from_numpy(h))
    bar.close()
    return torch.cat(latents), torch.cat(images), torch.cat(log_q), torch.cat(h2)
