"""``igds-fast sample``'s job: a few classes sampled in class-major order with the eager step, as a
grid image and/or the final latents."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..backends.eager import EagerEngine
from ..config import StepConfig, check_count, parse_classes
from ..errors import UserError
from ..imageio import grid, save_picture, write_atomic
from ..memory import check_memory
from ..models.embedded import resolve_models
from ..models.labels import model_labels
from ..sampling import batch_rows, class_groups, group_batches, run_group
from ..sampling.pipeline import Pipeline, build_pipeline
from .limits import check_clip_guard_memory
from .state import npy_bytes


@dataclass
class SampleRun:
    """What ``run_sample`` wrote: the grid (None without images), the latents file, and the samples."""

    out: Path | None
    latents_out: Path | None
    labels: list[int]
    latents: torch.Tensor = field(repr=False)
    images: torch.Tensor | None = field(repr=False)


def run_sample(
    classes: str,
    cfg: StepConfig,
    *,
    out: Path = Path("grid.png"),
    denoiser: str | Path | None = None,
    vae: str | Path | None = None,
    critics: str | Path | None = None,
    n_per_class: int = 1,
    seed: int = 0,
    batch_size: int = 16,
    init_noise: Path | np.ndarray | None = None,
    latents_out: Path | None = None,
    no_images: bool = False,
    device: str = "cpu",
    dtype: str = "fp32",
    progress: bool = False,
) -> SampleRun:
    """Sample ``n_per_class`` images of each class (model labels ``207,3`` or WNIDs) and write the grid
    (one row per class) to ``out`` and/or the final latents to ``latents_out`` (.npy). Output paths are
    checked before any weights load."""
    labels = parse_classes(classes)
    models = resolve_models(denoiser, vae, critics, cfg.guidance)
    if no_images and latents_out is None:
        raise UserError("--no-images writes only the latents: pass --latents-out FILE.npy")
    grid_out = None if no_images else Path(out)
    outputs = [(latents_out, "--latents-out", ".npy"), (grid_out, "--out", ".png")]
    for path, option, suffix in outputs:
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise UserError(f"{option} '{path}' is a folder; give a file name ending in {suffix}")
        if path.suffix.lower() != suffix:
            raise UserError(f"{option} '{path}' must end in {suffix} (it is written as {suffix[1:].upper()})")
        if not path.parent.is_dir():
            raise UserError(f"output folder '{path.parent}' does not exist")
    noise = read_noise(init_noise) if isinstance(init_noise, str | Path) else init_noise
    if noise is not None:
        noise = np.asarray(noise, dtype=np.float32)
    pipe = sample_pipeline(
        models.denoiser, models.vae, models.critics, cfg, device=device, dtype=dtype, images=not no_images
    )
    model_ids = model_labels(labels, pipe.step.denoiser)
    latents, images, _, _ = sample_classes(
        pipe, model_ids, n_per_class, seed, batch_size, init_noise=noise, images_too=not no_images, progress=progress
    )
    if images is not None and grid_out is not None:
        save_picture(grid(images, rows=len(model_ids)), grid_out)
    if latents_out is not None:
        write_atomic(Path(latents_out), npy_bytes(latents.numpy()))
    return SampleRun(grid_out, Path(latents_out) if latents_out is not None else None, model_ids, latents, images)


def read_noise(path: str | Path) -> np.ndarray:
    """``--init-noise``: a float .npy array (no pickles), or a one-line error."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--init-noise '{path}' is a folder; give a .npy file of shape (N, C, H, W)")
    if not path.is_file():
        raise UserError(f"--init-noise file '{path}' does not exist")
    try:
        noise = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"--init-noise '{path}' is not a NumPy .npy array ({str(e).splitlines()[0][:80]})") from None
    if not isinstance(noise, np.ndarray) or noise.dtype.kind not in "fiu":
        raise UserError(f"--init-noise '{path}' must hold a numeric array (N, C, H, W), not {type(noise).__name__}")
    return noise.astype(np.float32)


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

    Batches hold a chunk of several classes when the batch size allows, and later chunks of a class see
    the earlier ones' features (the diversity term's memory), exactly as in a distill run with the same
    classes and batch size.
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
    check_clip_guard_memory(engine, batch_rows(n_per_class, batch_size, len(labels)))
    bar = tqdm(total=total * engine.num_steps, desc="sampling", unit="step", disable=not progress, leave=False)
    names = [str(k) for k in range(len(labels))]  # a class's position: the same label may be asked twice
    label_of = dict(zip(names, labels, strict=True))
    done: dict[str, list] = {name: [] for name in names}

    def x_init(unit):  # the user's x_T rows of this chunk
        if init_noise is None:
            return None
        first = int(unit.wnid) * n_per_class + unit.start
        return torch.from_numpy(init_noise[first : first + unit.count]).float()

    for group in class_groups(names, n_per_class, batch_size):
        batches = group_batches([(w, label_of[w]) for w in group], n_per_class, batch_size)
        for res in run_group(engine, seed, batches, x_init=x_init, on_step=lambda n, _i, _x: bar.update(n)):
            done[res.unit.wnid].append(res)
    bar.close()
    results = [res for name in names for res in done[name]]  # class-major, chunk order
    latents = torch.cat([res.x0.cpu() for res in results])
    images = torch.cat([pipe.decode(res.x0).cpu() for res in results]) if images_too else None
    log_q = torch.cat([torch.from_numpy(res.log_q) for res in results])
    h2 = torch.cat([torch.from_numpy(res.h2) for res in results])
    return latents, images, log_q, h2
