"""From command-line options to a running distill job: engine, classes, config."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..defaults import GUIDANCE_SCALE
from ..errors import UserError
from ..guidance.step import StepConfig
from ..subsets import resolve_classes
from .distill import DistillConfig, run_distill
from .units import memory_rows, parse_shard


@dataclass
class DistillRequest:
    """Everything ``igds-fast distill`` takes; the defaults are the CLI's."""

    out: Path = Path("distilled")
    subset: str | None = None
    classes: str | None = None
    classes_file: Path | None = None
    ipc: int = 10
    batch_size: int | None = None
    seed: int = 0
    engines: Path | None = None
    backend: str = "eager"
    denoiser: Path | None = None
    vae: str | None = None
    critics: Path | None = None
    guidance: str = "igds"
    guidance_scale: float | None = None
    beta: float | None = None
    steps: str = "50"
    sampler: str = "ddpm"
    cfg_scale: float = 4.0
    cfg_channels: str = "3"
    image_format: str = "png"
    resolution: int | None = None
    shard: str | None = None
    ray: str | None = None
    overwrite: bool = False
    device: str = "cpu"
    dtype: str = "fp32"
    log_json: bool = False


def step_config(req: DistillRequest) -> StepConfig:
    from ..cli import parse_cfg_channels
    from ..pipeline import resolve_beta

    return StepConfig(
        steps=req.steps,
        sampler=req.sampler,
        cfg_scale=req.cfg_scale,
        cfg_channels=parse_cfg_channels(req.cfg_channels),
        guidance=req.guidance,
        guidance_scale=GUIDANCE_SCALE if req.guidance_scale is None else req.guidance_scale,
        beta=resolve_beta(req.beta, req.ipc, req.guidance),
    ).validate()


def model_paths(req: DistillRequest) -> tuple[Path, str | None, Path | None]:
    from ..models.embedded import critics_or_default, denoiser_or_default

    den = denoiser_or_default(req.denoiser)
    crit = critics_or_default(req.critics, req.denoiser is not None) if req.guidance == "igds" else None
    if req.guidance == "igds" and crit is None:
        raise UserError("--guidance igds with your own --denoiser needs --critics PATH (train them with train-critics)")
    vae = req.vae if req.vae is not None else "none"
    return den, vae, crit


def build_engine(req: DistillRequest, cfg: StepConfig, batch_size: int, rows_needed: int) -> Any:
    """The engine to run: an exported one (checked against the models and config) or eager."""
    from ..backends.eager import EagerEngine
    from ..pipeline import build_pipeline

    den, vae, crit = model_paths(req)
    if req.engines is not None:
        from ..backends.build import expect_for
        from ..backends.manifest import manifest_view, read_manifest
        from ..backends.registry import load_engine

        # Models, step config and batch must match; memory rows need only suffice (checked below),
        # and precision/backend are the engine's own choice.
        have = manifest_view(read_manifest(req.engines))
        expect = expect_for(den, vae, crit, cfg, batch_size, have["memory_size"], have["precision"], have["backend"])
        engine = load_engine(req.engines, expect, device=req.device)
        if rows_needed > engine.memory_size:
            raise UserError(
                f"IPC {req.ipc} with batch {batch_size} needs {rows_needed} memory rows, the engine takes "
                f"{engine.memory_size}; re-export with --memory-size {rows_needed}"
            )
        return engine
    if req.backend != "eager":
        raise UserError(
            f"--backend {req.backend} needs an engine folder: build one with `igds-fast export`, pass --engines"
        )
    pipe = build_pipeline(den, vae, crit, cfg, device=req.device, dtype=req.dtype)
    engine = EagerEngine(pipe.step, pipe.vae, memory_size=max(1, rows_needed))
    return engine


def labels_for(engine: Any, critics: Path | None, wnids: list[str]) -> list[int]:
    """The denoiser's labels for the classes; refuses classes the denoiser or critics lack."""
    from ..models.critics import load_critic
    from ..models.labels import class_labels, labels_for_wnids

    if hasattr(engine, "module"):
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


def run_request(req: DistillRequest) -> dict[str, Any]:
    from ..backends.manifest import optional_sha256

    if req.ipc <= 0:
        raise UserError(f"--ipc must be >= 1, got {req.ipc}")
    batch = req.batch_size if req.batch_size is not None else min(req.ipc, 32)
    if batch <= 0:
        raise UserError(f"--batch-size must be >= 1, got {batch}")
    if req.out.exists() and not req.out.is_dir():
        raise UserError(f"--out '{req.out}' is a file; choose a folder")
    infos = resolve_classes(req.subset, req.classes, req.classes_file)
    shard = parse_shard(req.shard)
    cfg = step_config(req)
    engine = build_engine(req, cfg, batch, memory_rows(req.ipc, batch))
    den, vae, crit = model_paths(req)
    wnids = [c.wnid for c in infos]
    labels = labels_for(engine, crit, wnids)
    dcfg = DistillConfig(
        wnids=wnids,
        labels=labels,
        ipc=req.ipc,
        batch_size=batch,
        seed=req.seed,
        image_format=req.image_format,
        resolution=req.resolution,
        step=cfg.to_dict(),
        models={"denoiser": optional_sha256(den), "vae": optional_sha256(vae), "critics": optional_sha256(crit)},
        backend=engine.backend,
        engine_id=engine.manifest.get("id") if req.engines is not None else None,
    ).validate()
    info = {
        "versions": {"igds_fast": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "device": req.device,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if req.ray is not None:
        from .ray_runner import run_on_ray

        return run_on_ray(req, dcfg, info)
    return run_distill(
        engine, dcfg, req.out, shard=shard, overwrite=req.overwrite, json_log=req.log_json, run_info=info
    )
