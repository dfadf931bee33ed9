"""The models a bench run times: the shipped embedded model, or random stand-ins of the DiT sizes
(timing does not depend on the weights). They stay in memory, on the run's device (a DiT size on a
GPU is built there, in a few seconds, never through the CPU): the eager rows assemble their
pipelines from them; files are written only for rows that export an engine, which is built from
files exactly as ``igds-fast export`` builds engines from a user's files."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import StepConfig, resolve_dtype
from ..errors import UserError
from ..models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig, load_autoencoder_kl
from ..models.critics import CriticConfig, NoiseCritic, load_critic, save_critic
from ..models.dit import DiT, DiTConfig
from ..models.embedded import resolve_models
from ..models.loading import load_denoiser, save_denoiser
from ..models.vae import LatentVAE, PixelSpace
from ..sampling.pipeline import Pipeline, pipeline_from_modules
from .config import ARCHS, BenchConfig

CRITIC_CLASSES = list(range(10))  # a 10-class subset (Imagenette/ImageWoof size); the head is tiny


@dataclass
class BenchModels:
    denoiser: nn.Module  # fp32, on the run's device
    critic: NoiseCritic | None
    codec: nn.Module  # PixelSpace or LatentVAE
    info: dict[str, Any]
    folder: Path | None = None  # where ``paths`` writes the files
    _paths: dict[str, str | None] | None = field(default=None, repr=False)

    @property
    def paths(self) -> dict[str, str | None]:
        """The denoiser / vae / critics files exported rows are built from, written on first use."""
        if self._paths is None:
            if self.folder is None:
                raise ValueError("these bench models have no folder to write their files to")
            self._paths = write_files(self, self.folder)
        return self._paths


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
    """The models, in memory on ``cfg.device``; their files go to ``folder`` when a row needs them."""
    info: dict[str, Any] = {"model": cfg.model}
    vae: AutoencoderKL | None = None
    dev = torch.device(cfg.device)
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
        dit_cfg = DiTConfig.from_arch(ARCHS[cfg.model], input_size=latent, in_channels=4, num_classes=1000)
        critic_cfg = CriticConfig(
            in_channels=4, input_size=latent, patch_size=2, width=256, depth=4, heads=4, class_ids=CRITIC_CLASSES
        )
        if dev.type == "cuda":  # built where it runs: no CPU initialisation of DiT-XL/2's 675M weights
            torch.manual_seed(cfg.seed)
            with torch.device(dev):
                den = DiT(dit_cfg)  # torch's default init: no zero layers, outputs depend on inputs
            info["weights"] = f"random; the denoiser built on {dev} with torch's default init (timing ignores it)"
        else:
            den = random_dit(dit_cfg, cfg.seed)
            info["weights"] = "random (timing does not depend on weights)"
        critic = random_critic(critic_cfg, cfg.seed + 7)
        vae = random_sd_vae(cfg.seed + 11)
        info["vae"] = "our AutoencoderKL, sd-vae-ft-mse config, random weights"
    den = den.float().eval().requires_grad_(False).to(dev)
    critic = critic.float().eval().requires_grad_(False).to(dev) if cfg.guidance == "igds" else None
    codec = (LatentVAE(vae) if vae is not None else PixelSpace()).eval().requires_grad_(False).to(dev)
    if cfg.resolution is None:  # the embedded model: its image size is the loaded model's
        cfg.resolution = int(den.config.input_size) * (codec.downsample if vae is not None else 1)
    info["denoiser_config"] = den.config.to_dict() if hasattr(den.config, "to_dict") else str(den.config)
    info["denoiser_params"] = sum(p.numel() for p in den.parameters())
    if critic is not None:
        info["critic_config"] = asdict(critic.config)
        info["critic_params"] = sum(p.numel() for p in critic.parameters())
    return BenchModels(den, critic, codec, info, folder)


def _on_cpu(module: nn.Module) -> nn.Module:
    return module if all(p.device.type == "cpu" for p in module.parameters()) else copy.deepcopy(module).cpu()


def write_files(models: BenchModels, folder: Path) -> dict[str, str | None]:
    """The models as files under ``folder`` (CPU copies of GPU weights): what ``export_engine`` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str | None] = {
        "denoiser": str(save_denoiser(_on_cpu(models.denoiser), folder / "denoiser.safetensors"))
    }
    critic = models.critic
    paths["critics"] = None
    if critic is not None:  # with its metrics: the step's weight over t (prototype_weights) reads them
        metrics = getattr(critic, "metrics", None)
        paths["critics"] = str(save_critic(_on_cpu(critic), folder / "critic.safetensors", metrics))
    vae = getattr(models.codec, "vae", None)
    paths["vae"] = str(_on_cpu(vae).save_pretrained(folder / "vae")) if vae is not None else "none"
    return paths


def pipeline_of(models: BenchModels, step_cfg: StepConfig, device: torch.device, dtype: str) -> Pipeline:
    """The eager pipeline of the in-memory models in ``dtype``, by ``sampling.pipeline.build_pipeline``'s
    rule (the denoiser in ``dtype``; in bf16 the critic and the VAE follow it, else they stay fp32;
    no parameter needs a gradient). fp32 uses the models' own weights; other precisions a copy."""
    den_dtype = resolve_dtype(dtype)

    def own(module: nn.Module | None) -> nn.Module | None:
        return module if den_dtype == torch.float32 or module is None else copy.deepcopy(module)

    return pipeline_from_modules(
        own(models.denoiser), own(models.codec), own(models.critic), step_cfg, device, den_dtype
    )
