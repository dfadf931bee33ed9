"""The image <-> denoiser-space codec: an SD ``AutoencoderKL`` or none (pixel space).

Both map images in [-1, 1] to the denoiser's input space and back; ``decode`` returns [-1, 1].
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
from torch import nn

from .autoencoder_kl import load_autoencoder_kl


class PixelSpace(nn.Module):
    """Pixel-space models: the denoiser sees images in [-1, 1] directly."""

    downsample = 1
    channels = 3
    scaling_factor = 1.0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x


class LatentVAE(nn.Module):
    """``AutoencoderKL`` with its latent scale (0.18215 for sd-vae-ft-mse/ema).

    Wraps our :class:`~igds_fast.models.autoencoder_kl.AutoencoderKL`, or a diffusers one (tests
    compare against it), which differ only in how encode/decode wrap their results."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        conf = vae.config
        conf = asdict(conf) if is_dataclass(conf) else dict(conf)
        self.scaling_factor = float(conf.get("scaling_factor") or 0.18215)
        self.channels = int(conf["latent_channels"])
        self.downsample = 2 ** (len(conf["block_out_channels"]) - 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(images)
        posterior = getattr(posterior, "latent_dist", posterior)  # diffusers wraps it in an output object
        return posterior.mean * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self.vae.decode(z / self.scaling_factor)
        return out if isinstance(out, torch.Tensor) else out.sample


def load_vae(path: str | Path | None) -> nn.Module:
    """``None``/"none" -> pixel space; otherwise a local AutoencoderKL: a diffusers folder, a pipeline
    folder (with ``vae/``) or a single weights file (diffusers or CompVis/ldm keys). No diffusers needed."""
    if path is None or str(path).lower() == "none":
        return PixelSpace()
    return LatentVAE(load_autoencoder_kl(path)).eval()


def decode_images(codec: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Denoiser space -> images in [-1, 1], float32: what every backend and writer consumes."""
    return decode_unclipped(codec, x).clamp(-1, 1)


def decode_unclipped(codec: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Denoiser space -> images, float32, before the clip to [-1, 1]. A VAE decodes in its weights'
    dtype (bf16 under the bf16 precision, ``build_pipeline``); differentiable in ``x``."""
    weight = next(codec.parameters(), None)  # None: pixel space
    return codec.decode(x if weight is None else x.to(weight.dtype)).float()
