"""Training images in the denoiser's space: [-1, 1] pixels, or a VAE's scaled latents, encoded once
and cached under a key of the exact images and VAE weights (another VAE or image set never reuses
them). train-dit and train-critics both read their data through ``encoded`` / ``encoded_pairs``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

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


def encoded_pairs(images: torch.Tensor, vae: nn.Module, cache: Path | None) -> torch.Tensor:
    """(N, 2, C, H, W): every image and its mirror image in the denoiser's space. Both are encoded: a
    mirrored latent is not the latent of the mirrored image, so a flip is only label-preserving here."""
    both = torch.stack([images, images.flip(-1)], dim=1)
    z = encoded(both.flatten(0, 1), vae, cache)
    return z.reshape(len(images), 2, *z.shape[1:])
