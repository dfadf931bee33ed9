"""The image <-> denoiser-space codec: a diffusers ``AutoencoderKL`` or none (pixel space).

Both map images in [-1, 1] to the denoiser's input space and back; ``decode`` returns [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import UserError


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
    """``AutoencoderKL`` with its latent scale (0.18215 for sd-vae-ft-mse/ema)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.get("scaling_factor", 0.18215))
        self.channels = int(vae.config["latent_channels"])
        self.downsample = 2 ** (len(vae.config["block_out_channels"]) - 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images).latent_dist.mean * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scaling_factor).sample


def load_vae(path: str | Path | None) -> nn.Module:
    """``None``/"none" -> pixel space; otherwise a local diffusers AutoencoderKL folder."""
    if path is None or str(path).lower() == "none":
        return PixelSpace()
    path = Path(path)
    if (path / "vae" / "config.json").exists():  # a pipeline folder
        path = path / "vae"
    if not (path / "config.json").exists():
        raise UserError(f"VAE '{path}' is not a diffusers AutoencoderKL folder (no config.json); or pass --vae none")
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise UserError("a latent VAE needs diffusers: pip install 'igds-fast[diffusers]'") from None
    try:
        vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load VAE from {path}: {str(e).splitlines()[0][:200]}") from None
    return LatentVAE(vae).eval()


def decode_images(codec: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Denoiser space -> images in [-1, 1], float32: what every backend and writer consumes."""
    return codec.decode(x).float().clamp(-1, 1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] NCHW float -> NHWC uint8 (round half to even, as PIL conversion of (x+1)*127.5 would)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
