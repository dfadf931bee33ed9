"""A distill job as the library describes it: what to make (``DistillJob``), the engine it runs on,
the model labels of its classes, and the configuration that identifies its output folder."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.backend import LoadOptions
from ..backends.build import expect_for
from ..backends.eager import EagerEngine
from ..backends.engine_manifest import manifest_view, optional_sha256, read_engine_manifest
from ..backends.registry import load_engine
from ..config import STEP_DEFAULTS, StepConfig, check_count, parse_shard, step_config
from ..errors import UserError
from ..machine import library_versions, machine_facts
from ..models.critics import load_critic
from ..models.embedded import ModelPaths, resolve_models
from ..models.labels import class_labels, labels_for_wnids
from ..sampling import StepEngine, memory_rows
from ..sampling.pipeline import build_pipeline
from ..subsets import ClassInfo, resolve_classes
from .distill import DistillConfig


@dataclass
class DistillJob:
    """Everything a distill run needs, parsed and resolved (the CLI builds it from its options)."""

    out: Path
    classes: list[ClassInfo]
    ipc: int
    step: StepConfig
    models: ModelPaths
    batch_size: int | None = None  # None: min(IPC, 32)
    seed: int = 0
    engines: Path | None = None  # an exported engine folder; None: the eager step
    device: str = "cpu"
    dtype: str = "fp32"  # the denoiser's precision on the eager backend
    image_format: str = "png"
    resolution: int | None = None
    shard: tuple[int, int] = (0, 1)
    ray: str | None = None
    overwrite: bool = False
    log_json: bool = False

    @property
    def batch(self) -> int:
        return check_count(self.batch_size if self.batch_size is not None else min(self.ipc, 32), "--batch-size")


def distill_job(
    out: Path,
    *,
    subset: str | None = None,
    classes: str | None = None,
    classes_file: Path | None = None,
    ipc: int = 10,
    batch_size: int | None = None,
    seed: int = 0,
    engines: Path | None = None,
    denoiser: Path | None = None,
    vae: str | None = None,
    critics: Path | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    image_format: str = "png",
    resolution: int | None = None,
    shard: str | None = None,
    ray: str | None = None,
    overwrite: bool = False,
    log_json: bool = False,
    **step_options: Any,
) -> DistillJob:
    """A job from the command line's options (strings as typed; ``step_options``: the step options
    of ``config.STEP_DEFAULTS``, None = not given)."""
    unknown = sorted(set(step_options) - set(STEP_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown distill options {unknown}")
    cfg = step_config(check_count(ipc, "--ipc"), step_options)
    return DistillJob(
        out=Path(out),
        classes=resolve_classes(subset, classes, classes_file),
        ipc=ipc,
        step=cfg,
        models=resolve_models(denoiser, vae, critics, cfg.guidance),
        batch_size=batch_size,
        seed=seed,
        engines=Path(engines) if engines is not None else None,
        device=device,
        dtype=dtype,
        image_format=image_format,
        resolution=resolution,
        shard=parse_shard(shard),
        ray=ray,
        overwrite=overwrite,
        log_json=log_json,
    )


def build_engine(job: DistillJob) -> StepEngine:
    """The engine to run: an exported one (checked against the models and config) or eager."""
    m, cfg, batch = job.models, job.step, job.batch
    rows_needed = memory_rows(job.ipc, batch)
    if job.engines is not None:
        # Models, step config and batch must match; memory rows need only suffice (checked below),
        # and precision/backend are the engine's own choice.
        have = manifest_view(read_engine_manifest(job.engines))
        expect = expect_for(
            m.denoiser, m.vae, m.critics, cfg, batch, have["memory_size"], have["precision"], have["backend"]
        )
        engine = load_engine(job.engines, expect, LoadOptions(device=job.device))
        if rows_needed > engine.memory_size:
            raise UserError(
                f"IPC {job.ipc} with batch {batch} needs {rows_needed} memory rows, the engine takes "
                f"{engine.memory_size}; re-export with --memory-size {rows_needed}"
            )
        return engine
    pipe = build_pipeline(m.denoiser, m.vae, m.critics, cfg, device=job.device, dtype=job.dtype)
    return EagerEngine(pipe.step, pipe.vae, memory_size=max(1, rows_needed))


def labels_for(engine: StepEngine, critics: Path | None, wnids: list[str]) -> list[int]:
    """The denoiser's labels for the classes; refuses classes the denoiser or critics lack."""
    if isinstance(engine, EagerEngine):
        labels = class_labels(engine.module.denoiser, wnids)
    elif "class_wnids" in engine.manifest:  # the engine records the classes: no need to load the weights
        labels = labels_for_wnids(engine.manifest["class_wnids"], int(engine.manifest["num_classes"]), wnids)
    else:
        raise UserError("this engine's manifest does not record the model's classes: re-export it")
    if critics is not None:
        known = set(load_critic(critics).config.class_ids)
        missing = [w for w, lab in zip(wnids, labels, strict=True) if lab not in known]
        if missing:
            raise UserError(
                f"the critics were trained for other classes ({missing[0]} is not among them); "
                "train critics for this subset"
            )
    return labels


def distill_config(job: DistillJob, engine: StepEngine) -> DistillConfig:
    """What defines the job's output (the folder's identity): classes, IPC, seed, step, models, engine."""
    wnids = [c.wnid for c in job.classes]
    m = job.models
    return DistillConfig(
        wnids=wnids,
        labels=labels_for(engine, m.critics, wnids),
        ipc=job.ipc,
        batch_size=job.batch,
        seed=job.seed,
        image_format=job.image_format,
        resolution=job.resolution,
        step=job.step.to_dict(),
        models={
            "denoiser": optional_sha256(m.denoiser),
            "vae": optional_sha256(m.vae),
            "critics": optional_sha256(m.critics),
        },
        backend=engine.backend,
        engine_id=engine.id,
    ).validate()


def run_info(job: DistillJob) -> dict[str, Any]:
    return {
        "versions": library_versions(),
        "machine": machine_facts(job.device),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
