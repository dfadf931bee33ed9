"""Training images in the denoiser's space: [-1, 1] pixels, or a VAE's scaled latents, encoded once
and cached under a key of the exact images and VAE weights (another VAE or image set never reuses
them). train-dit and train-critics both read their data through ``encoded`` / ``encoded_views``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from ..augment import random_resized_crop_flip
from ..imagefolder import to_model_range
from ..models.vae import PixelSpace


def encode_space(images: torch.Tensor, vae: nn.Module, batch: int = 64) -> torch.Tensor:
    """uint8 images -> the denoiser's input space (latents, or [-1, 1] pixels)."""
    x = to_model_range(images)
    if isinstance(vae, PixelSpace):
        return x
    with torch.no_grad():
        return torch.cat([vae.encode(x[k : k + batch]) for k in range(0, len(x), batch)])


def encoded(images: torch.Tensor, vae: nn.Module, cache: Path | None) -> torch.Tensor:
    """``encode_space`` of uint8 images, cached in ``cache`` for latent spaces."""
    if isinstance(vae, PixelSpace) or cache is None:
        return encode_space(images, vae)
    h = hashlib.sha256(images.numpy().tobytes())
    for v in vae.state_dict().values():
        h.update(v.detach().cpu().float().numpy().tobytes())
    key = cache / f"latents_{h.hexdigest()[:16]}.pt"
    if key.exists():
        return torch.load(key, weights_only=True)
    z = encode_space(images, vae)
    key.parent.mkdir(parents=True, exist_ok=True)
    tmp = key.with_suffix(".tmp")
    torch.save(z, tmp)
    tmp.replace(key)
    return z


def encoded_views(
    images: torch.Tensor, vae: nn.Module, cache: Path | None, crops: int = 0, seed: int = 0
) -> torch.Tensor:
    """(N, 2 + crops, C, H, W): every image, its mirror image and ``crops`` random-resized crops (scale
    0.5-1, randomly mirrored, drawn from ``seed``) in the denoiser's space. All are encoded: a mirrored
    or resampled latent is not the latent of the mirrored or cropped image, so augmentation happens in
    pixels, once, and the latents are cached."""
    views = [images, images.flip(-1)]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(crops):
        views.append(random_resized_crop_flip(images, gen).round().clamp(0, 255).to(torch.uint8))
    z = encoded(torch.stack(views, dim=1).flatten(0, 1), vae, cache)
    return z.reshape(len(images), len(views), *z.shape[1:])
