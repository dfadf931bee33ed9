"""Denoisers (DiT, diffusers UNet), the VAE codec and the critics."""

from .critics import CriticConfig, NoiseCritic, load_critic, save_critic
from .dit import DiT, DiTConfig
from .loading import UNetDenoiser, load_denoiser, save_denoiser
from .vae import LatentVAE, PixelSpace, load_vae

__all__ = [
    "CriticConfig",
    "DiT",
    "DiTConfig",
    "LatentVAE",
    "NoiseCritic",
    "PixelSpace",
    "UNetDenoiser",
    "load_critic",
    "load_denoiser",
    "load_vae",
    "save_critic",
    "save_denoiser",
]
