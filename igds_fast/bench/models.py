"""The models a bench run times: the shipped embedded model, or random stand-ins of the DiT sizes
(timing does not depend on the weights), written to files so every backend is built from them
exactly as ``igds-fast export`` builds engines from a user's files."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig, load_autoencoder_kl
from ..models.critics import CriticConfig, NoiseCritic, load_critic, save_critic
from ..models.dit import DiT, DiTConfig
from ..models.embedded import resolve_models
from ..models.loading import load_denoiser, save_denoiser
from ..models.vae import LatentVAE, PixelSpace
from .config import ARCHS, BenchConfig

CRITIC_CLASSES = list(range(10))  # a 10-class subset (Imagenette/ImageWoof size); the head is tiny


@dataclass
class BenchModels:
    denoiser: nn.Module  # fp32
    critic: NoiseCritic | None
    codec: nn.Module  # PixelSpace or LatentVAE
    paths: dict[str, str | None]  # denoiser / vae / critics files the backends are built from
    info: dict[str, Any]


def _perturb(module: nn.Module, names: tuple[str, ...], seed: int) -> None:
    """Give zero-initialised layers (adaLN, output) small random weights, so outputs depend on the
    inputs and parity errors mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(n in name for n in names):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def random_dit(cfg: DiTConfig, seed: int) -> DiT:
    dit = DiT(cfg).initialize(seed)
    _perturb(dit, ("adaLN_modulation", "final_layer"), seed + 1)
    return dit


def random_critic(cfg: CriticConfig, seed: int) -> NoiseCritic:
    torch.manual_seed(seed)
    critic = NoiseCritic(cfg)
    _perturb(critic, (".ada.",), seed + 1)
    return critic


def random_sd_vae(seed: int) -> AutoencoderKL:
    """sd-vae-ft-mse's architecture (our AutoencoderKL, diffusers layout) with random weights."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        AutoencoderKLConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)
    ).eval()


def _shipped_embedded() -> tuple[nn.Module, NoiseCritic, AutoencoderKL | None] | None:
    """The shipped denoiser, critics and (a latent model's) VAE, by the one rule every command uses."""
    try:
        paths = resolve_models(None, None, None, "igds")
    except UserError:
        return None
    vae = None if paths.vae == "none" else load_autoencoder_kl(paths.vae)
    return load_denoiser(paths.denoiser), load_critic(paths.critics), vae


def _pixel_stand_in(tiny: bool, seed: int) -> tuple[DiT, NoiseCritic]:
    size = 16 if tiny else 32
    den = random_dit(
        DiTConfig(
            input_size=size,
            patch_size=4,
            in_channels=3,
            hidden_size=64 if tiny else 256,
            depth=2 if tiny else 8,
            num_heads=2 if tiny else 4,
            num_classes=10,
        ),
        seed,
    )
    critic = random_critic(
        CriticConfig(
            in_channels=3,
            input_size=size,
            patch_size=4,
            width=64 if tiny else 128,
            depth=1 if tiny else 3,
            heads=2 if tiny else 4,
            class_ids=CRITIC_CLASSES,
        ),
        seed + 7,
    )
    return den, critic


def build_models(cfg: BenchConfig, folder: Path) -> BenchModels:
    """The models, and their files under ``folder``."""
    info: dict[str, Any] = {"model": cfg.model}
    vae: AutoencoderKL | None = None
    if cfg.model in ("embedded", "tiny"):
        shipped = _shipped_embedded() if cfg.model == "embedded" and not cfg.random_weights else None
        if shipped is not None:
            den, critic, vae = shipped
            info["weights"] = "shipped embedded model"
            if vae is not None:
                info["vae"] = "the shipped embedded VAE (our AutoencoderKL)"
        else:
            den, critic = _pixel_stand_in(cfg.model == "tiny", cfg.seed)
            info["weights"] = (
                "random (test-size model)"
                if cfg.model == "tiny"
                else "random: the first embedded model's pixel config (--random-weights, or not built here)"
            )
    else:
        latent = cfg.resolution // 8
        den = random_dit(
            DiTConfig.from_arch(ARCHS[cfg.model], input_size=latent, in_channels=4, num_classes=1000), cfg.seed
        )
        critic = random_critic(
            CriticConfig(
                in_channels=4, input_size=latent, patch_size=2, width=256, depth=4, heads=4, class_ids=CRITIC_CLASSES
            ),
            cfg.seed + 7,
        )
        vae = random_sd_vae(cfg.seed + 11)
        info["weights"] = "random (timing does not depend on weights)"
        info["vae"] = "our AutoencoderKL, sd-vae-ft-mse config, random weights"
    den = den.float().eval().requires_grad_(False)
    critic = critic.float().eval().requires_grad_(False) if cfg.guidance == "igds" else None
    paths: dict[str, str | None] = {"denoiser": str(save_denoiser(den, folder / "denoiser.safetensors"))}
    paths["critics"] = str(save_critic(critic, folder / "critic.safetensors")) if critic is not None else None
    paths["vae"] = str(vae.save_pretrained(folder / "vae")) if vae is not None else "none"
    codec = LatentVAE(vae) if vae is not None else PixelSpace()
    if cfg.resolution is None:  # the embedded model: its image size is the loaded model's
        cfg.resolution = int(den.config.input_size) * (codec.downsample if vae is not None else 1)
    info["denoiser_config"] = den.config.to_dict() if hasattr(den.config, "to_dict") else str(den.config)
    info["denoiser_params"] = sum(p.numel() for p in den.parameters())
    if critic is not None:
        info["critic_config"] = asdict(critic.config)
        info["critic_params"] = sum(p.numel() for p in critic.parameters())
    return BenchModels(den, critic, codec, paths, info)
