"""``igds-fast sample``'s job: a few classes sampled in class-major order with the eager step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..backends.eager import EagerEngine
from ..config import StepConfig, check_count
from ..errors import UserError
from ..memory import check_memory
from ..sampling import class_units, run_class
from ..sampling.pipeline import Pipeline, build_pipeline
from .limits import check_clip_guard_memory


def sample_pipeline(
    denoiser: str | Path,
    vae: str | Path | None,
    critics: str | Path | None,
    cfg: StepConfig,
    device: str = "cpu",
    dtype: str = "fp32",
    images: bool = True,
) -> Pipeline:
    """The models as a pipeline. Without images (latents only) a latent denoiser needs no VAE: a data
    platform may keep latents alone."""
    return build_pipeline(denoiser, vae, critics, cfg, device=device, dtype=dtype, need_codec=images)


def sample_classes(
    pipe: Pipeline,
    labels: list[int],
    n_per_class: int,
    seed: int,
    batch_size: int,
    init_noise: np.ndarray | None = None,
    progress: bool = True,
    images_too: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Samples in class-major order: (final latents (N, C, H, W), images in [-1, 1] (None without
    ``images_too``), log q, H2).

    Batches never mix classes and later chunks of a class see the earlier ones' features (the
    entropy term's memory), exactly as in a distill run with the same batch size.
    """
    check_count(n_per_class, "--n-per-class")
    check_count(batch_size, "--batch-size")
    pipe.step.check_labels(labels)
    total = len(labels) * n_per_class
    c, h, w = pipe.shape
    side = w * int(getattr(pipe.vae, "downsample", 1)) if images_too else 0
    # every sample's latents and image stay in memory (fp32), concatenated at the end (twice)
    check_memory(
        2 * total * 4 * (c * h * w + 3 * side * side),
        f"{total} samples ({len(labels)} classes x {n_per_class})",
        "lower --n-per-class (sample makes a grid; distill writes large sets image by image)",
    )
    if init_noise is not None and init_noise.shape != (total, *pipe.shape):
        raise UserError(f"--init-noise has shape {init_noise.shape}, expected {(total, *pipe.shape)}")
    if init_noise is not None and not np.isfinite(init_noise).all():
        raise UserError("--init-noise holds NaN or infinite values")
    engine = EagerEngine(pipe.step, pipe.vae)
    check_clip_guard_memory(engine, min(batch_size, n_per_class))  # a chunk never mixes classes
    bar = tqdm(total=total * engine.num_steps, desc="sampling", unit="step", disable=not progress, leave=False)
    latents, images, log_q, h2 = [], [], [], []
    for k, label in enumerate(labels):

        def x_init(unit, k=k):  # the user's x_T rows of this chunk
            if init_noise is None:
                return None
            first = k * n_per_class + unit.start
            return torch.from_numpy(init_noise[first : first + unit.count]).float()

        units = class_units(str(label), label, n_per_class, batch_size)
        for res in run_class(engine, seed, units, x_init=x_init, on_step=lambda u, _i, _x: bar.update(u.count)):
            latents.append(res.x0.cpu())
            if images_too:
                images.append(pipe.decode(res.x0).cpu())
            log_q.append(torch.from_numpy(res.log_q))
            h2.append(torch.from_numpy(res.h2))
    bar.close()
    return torch.cat(latents), torch.cat(images) if images_too else None, torch.cat(log_q), torch.cat(h2)
