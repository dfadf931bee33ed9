"""Assemble a denoiser, its codec (VAE or pixel space) and the critics into one guided step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import StepConfig, resolve_device, resolve_dtype
from ..errors import UserError
from ..guidance.step import GuidedStep
from ..models.critics import load_critic
from ..models.loading import load_denoiser
from ..models.vae import PixelSpace, decode_images, load_vae


@dataclass
class Pipeline:
    step: GuidedStep
    vae: nn.Module
    device: torch.device

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.step.shape

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
    need_codec: bool = True,
) -> Pipeline:
    """Load the models: the denoiser in ``dtype``; the critics in bf16 too for ``dtype="bf16"`` (their
    gradient is normalised per sample, so its 0.5-2% bf16 error barely moves the step; fp32's range,
    unlike fp16's), else in fp32; a VAE likewise (bf16 decodes 2.5-3.5x faster on an AMX CPU, images
    within 0.5% of fp32's, about a uint8 step).
    ``need_codec=False``: a latent denoiser may run without its VAE (latents only, no images)."""
    den_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    model = load_denoiser(denoiser)
    codec = load_vae(vae)
    if isinstance(codec, PixelSpace) and model.in_channels != 3 and need_codec:
        raise UserError(f"the denoiser works on {model.in_channels}-channel latents: pass --vae PATH to its VAE")
    if not isinstance(codec, PixelSpace) and codec.channels != model.in_channels:
        raise UserError(f"the VAE has {codec.channels} latent channels, the denoiser {model.in_channels}")
    critic = load_critic(critics) if (critics is not None and cfg.guidance == "igds") else None
    return pipeline_from_modules(model, codec, critic, cfg, dev, den_dtype)


def pipeline_from_modules(
    model: nn.Module,
    codec: nn.Module,
    critic: nn.Module | None,
    cfg: StepConfig,
    device: torch.device,
    den_dtype: torch.dtype,
) -> Pipeline:
    """The pipeline of models already in memory, by ``build_pipeline``'s precision rule: the denoiser in
    ``den_dtype``; in bf16 the critic and the VAE follow it, else they stay as they are. Moves and casts
    the modules in place; no parameter needs a gradient (the clip guard differentiates the decoder
    w.r.t. its input only)."""
    critic = critic if cfg.guidance == "igds" else None
    for module in (model, codec, critic):
        if module is not None:
            module.requires_grad_(False)
    if den_dtype == torch.bfloat16:  # the critic and the VAE follow the denoiser into bf16 (see above)
        for module in (critic, codec):
            if module is not None:
                module.to(torch.bfloat16)
    pixel_space = isinstance(codec, PixelSpace) and model.in_channels == 3
    latent_without_vae = isinstance(codec, PixelSpace) and not pixel_space
    decoder = None if latent_without_vae else codec  # --clip-guard decodes inside the step
    step = GuidedStep(model.to(device, den_dtype), cfg, critic, pixel_space=pixel_space, decoder=decoder).to(device)
    return Pipeline(step=step, vae=codec.to(device), device=device)
