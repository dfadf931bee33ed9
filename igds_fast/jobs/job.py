"""A distill job as the library describes it: what to make (``DistillJob``), the backend it runs on
(``choose``: decided without loading weights), the engine, the model labels of its classes, and the
configuration that identifies its output folder."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..backends.backend import LoadOptions
from ..backends.build import expect_for
from ..backends.eager import EagerEngine
from ..backends.engine_manifest import manifest_view, optional_sha256, read_engine_manifest
from ..backends.registry import BACKENDS, EXPORT_BACKENDS, load_engine
from ..config import (
    DTYPES,
    StepConfig,
    check_count,
    parse_shard,
    resolve_device,
    step_config,
)
from ..diffusion.schedule import respaced_timesteps
from ..errors import UserError
from ..machine import library_versions, machine_facts
from ..models.critics import load_critic
from ..models.embedded import ModelPaths, resolve_models
from ..outdir import check_out_folder
from ..sampling import StepEngine, batch_rows, memory_rows
from ..sampling.pipeline import build_pipeline
from ..subsets import ClassInfo, resolve_classes
from .engine_cache import (
    BACKEND_CHOICES,
    Choice,
    cache_entry,
    cache_key,
    default_backend,
    default_cache_dir,
    ensure_cached_engine,
)
from .events import check_log_path
from .identity import DistillConfig
from .job_file import JobFile, holds_other_files, not_a_run, read_job_file
from .limits import JobShape
from .state import digest

DEFAULT_FEAT_DIM = 64  # the estimate's critic feature size when the critics' file does not say
# --batch-size when not given: rows per denoiser call, whatever the IPC (a batch holds chunks of several
# classes). CPU: the fastest per image of the embedded default (benchmarks/results/batch_size/cpu.json);
# CUDA: never measured here, a size every H100-class card holds for the embedded model.
DEFAULT_BATCH = {"cpu": 50, "cuda": 64}


def default_batch(device: str) -> int:
    return DEFAULT_BATCH["cuda" if str(device).startswith("cuda") else "cpu"]


@dataclass
class DistillJob:
    """Everything a distill run needs, parsed and resolved (the CLI builds it from its options)."""

    out: Path
    classes: list[ClassInfo]
    ipc: int
    step: StepConfig
    models: ModelPaths
    batch_size: int | None = None  # rows per denoiser call; None: DEFAULT_BATCH of the device
    seed: int = 0
    engines: Path | None = None  # an exported engine folder; None: by ``backend``
    device: str = "cpu"
    dtype: str | None = None  # the denoiser's precision; None: the backend rule's
    image_format: str = "png"
    resolution: int | None = None
    shard: tuple[int, int] = (0, 1)
    ray: str | None = None
    overwrite: bool = False
    log_json: Path | None = None  # events to this file; None: stdout (the CLI) or nowhere (library)
    backend: str = "auto"  # auto (the machine's fastest), eager, onnxruntime, compiled, tensorrt
    engine_cache: Path | None = None  # None: engine_cache.default_cache_dir()
    progress: bool | None = None  # None: on a terminal only
    wait: bool = False  # queue behind another writer of --out instead of failing
    threads: int | None = None  # CPU threads of torch and onnxruntime; None: their defaults (all cores)

    @property
    def batch(self) -> int:
        """The batch size: what decides which samples share a denoiser call (``sampling.units``)."""
        size = self.batch_size if self.batch_size is not None else default_batch(self.device)
        return check_count(size, "--batch-size")

    @property
    def rows(self) -> int:
        """Rows of the job's fullest batch: an exported engine's static batch (no padding to --batch-size
        when the job has fewer samples than it holds)."""
        return batch_rows(self.ipc, self.batch, len(self.classes))

    def validate(self) -> DistillJob:
        check_count(self.ipc, "--ipc")
        self.batch  # noqa: B018 (checks --batch-size)
        if self.resolution is not None and self.resolution < 8:
            raise UserError(f"--resolution must be >= 8, got {self.resolution}")
        if self.image_format not in ("png", "jpeg"):
            raise UserError(f"unknown --format '{self.image_format}': use png or jpeg")
        if self.backend not in BACKEND_CHOICES:
            raise UserError(f"unknown --backend '{self.backend}': use {', '.join(BACKEND_CHOICES)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise UserError(f"unknown --dtype '{self.dtype}': use {', '.join(DTYPES)}")
        resolve_device(self.device)
        if self.threads is not None:
            check_count(self.threads, "--threads")
        if self.engines is not None and self.engines.is_file():
            raise UserError(f"--engines '{self.engines}' is a file; give the engine folder `igds-fast export` wrote")
        if self.engines is not None and self.backend not in ("auto",):
            raise UserError("give --engines or --backend, not both (an engine folder fixes its backend)")
        check_out_folder(self.out)
        if holds_other_files(self.out):
            raise UserError(not_a_run(self.out))
        check_log_path(self.log_json)
        return self


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
    dtype: str | None = None,
    image_format: str = "png",
    resolution: int | None = None,
    shard: str | None = None,
    ray: str | None = None,
    overwrite: bool = False,
    log_json: Path | None = None,
    backend: str = "auto",
    engine_cache: Path | None = None,
    progress: bool | None = None,
    wait: bool = False,
    threads: int | None = None,
    step: StepConfig | Mapping[str, Any] | None = None,
) -> DistillJob:
    """A job from the command line's options (strings as typed). ``step``: a StepConfig, or the step
    options given (by field name, as ``config.step_config`` reads them) over the shipped step, or over
    the step of the engine folder ``engines`` (``job_step``); None = nothing given."""
    if classes_file is not None and Path(classes_file).is_dir():
        raise UserError(f"--classes-file '{classes_file}' is a folder; give a text file with one WNID a line")
    check_count(ipc, "--ipc")
    cfg = job_step(step, engines)
    if batch_size is None and engines is not None and Path(engines).is_dir():
        batch_size = manifest_view(read_engine_manifest(Path(engines)))["batch_size"]  # the engine's static batch
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
        log_json=Path(log_json) if log_json is not None else None,
        backend=backend,
        engine_cache=Path(engine_cache) if engine_cache is not None else None,
        progress=progress,
        wait=wait,
        threads=threads,
    ).validate()


def job_step(step: StepConfig | Mapping[str, Any] | None, engines: Path | str | None) -> StepConfig:
    """The job's step. A StepConfig is the whole step. Step options (by field name; None or absent:
    not given) lie over the shipped step, or, with an engine folder, over the step the engine was
    exported with: a job on an engine exported with ``--steps 10`` need not repeat ``--steps 10``.
    An option given must agree with the engine (``build_engine`` refuses a mismatch naming the field)."""
    if isinstance(step, StepConfig):
        return step.validate()
    if engines is None or not Path(engines).is_dir():
        return step_config(step)
    exported = manifest_view(read_engine_manifest(Path(engines)))["step"] or {}
    return step_config(step_layer(exported), step)


def step_layer(step: StepConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A whole step as a layer of ``config.step_config``, where None means "not given": all channels
    (cfg_channels None) spelled as the option spells it."""
    values = step.to_dict() if isinstance(step, StepConfig) else dict(step)
    if "cfg_channels" in values and values["cfg_channels"] is None:
        values["cfg_channels"] = "all"
    return values


def model_hashes(m: ModelPaths, guidance: str) -> dict[str, str | None]:
    return {
        "denoiser": optional_sha256(m.denoiser),
        "vae": optional_sha256(m.vae),
        "critics": optional_sha256(m.critics) if guidance == "igds" else None,
    }


def choose(job: DistillJob, hashes: dict[str, str | None] | None = None, have: JobFile | None = None) -> Choice:
    """The backend, precision and engine folder of the job, decided without loading any weights.
    ``have``: the job file of ``job.out`` when the caller has read it (else it is read here)."""
    if job.engines is not None:
        manifest = read_engine_manifest(job.engines)
        return Choice(str(manifest["backend"]), str(manifest["precision"]), "--engines", engines=job.engines)
    if job.backend == "auto":
        have = have if have is not None else read_job_file(job.out)
        choice = continued_choice(job, have) or default_backend(job.device)
        if job.dtype is not None and job.dtype != choice.precision:
            choice = Choice("eager", job.dtype, f"--dtype {job.dtype}: the eager step in that precision")
    elif job.backend == "eager":
        choice = Choice("eager", job.dtype or "fp32", "--backend eager")
    else:
        row = BACKENDS[job.backend]
        reason = row.unavailable()
        if reason:
            raise UserError(f"--backend {job.backend} cannot run here: {reason}")
        choice = Choice(job.backend, job.dtype or "fp32", f"--backend {job.backend}")
    if choice.backend not in EXPORT_BACKENDS:
        return choice
    hashes = hashes if hashes is not None else model_hashes(job.models, job.step.guidance)
    key = cache_key(hashes, job.step, job.rows, engine_memory(job), choice.backend, choice.precision, job.device)
    entry = cache_entry(job.engine_cache or default_cache_dir(), choice.backend, choice.precision, key)
    return Choice(choice.backend, choice.precision, choice.reason, engines=entry, cache_key=key)


def continued_choice(job: DistillJob, have: JobFile) -> Choice | None:
    """``auto`` into a folder that already holds a run of another backend or precision (made on
    another machine, or before the default changed): continue with that one, so the set stays one
    set (same bytes on resume and repair) instead of being refused as another configuration.
    ``have``: the folder's job file."""
    cfg = have.config
    if cfg is None:
        return None
    backend, precision = cfg.get("backend"), cfg.get("precision", "fp32")
    if backend == "eager" and precision in DTYPES:
        return Choice("eager", precision, f"continues the {precision} eager run in {job.out}")
    if backend in EXPORT_BACKENDS and cfg.get("engine_key") and not BACKENDS[backend].unavailable():
        return Choice(backend, precision, f"continues the {backend} {precision} run in {job.out}")
    return None


def engine_memory(job: DistillJob) -> int:
    return max(1, memory_rows(job.ipc, job.batch))


def request_key(job: DistillJob, choice: Choice, hashes: dict[str, str | None]) -> str:
    """A digest of everything that decides the job's output, computed without loading weights: when
    a folder's job file records this key and every unit checks out, the run has nothing to do."""
    engine = choice.cache_key if choice.cache_key is not None else None
    if choice.engines is not None and choice.cache_key is None:
        engine = read_engine_manifest(choice.engines)["id"]
    return digest(
        {
            "classes": [c.wnid for c in job.classes],
            "ipc": job.ipc,
            "batch": job.batch,
            "seed": job.seed,
            "format": job.image_format,
            "resolution": job.resolution,
            "step": job.step.identity(),
            "models": hashes,
            "backend": choice.backend,
            "precision": choice.precision,
            "engine": engine,
        }
    )


def _safetensors_config(path: Path | None) -> dict[str, Any]:
    """The JSON config our safetensors files carry in their metadata ({} for other files)."""
    if path is None or not Path(path).is_file() or Path(path).suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {}).get("config", "{}"))
    except (SafetensorError, OSError, ValueError):
        return {}


def job_shape(job: DistillJob, engine: StepEngine | None = None, classes: int | None = None) -> JobShape:
    """The job's shape for the limits: from the engine when it is built, else from the model files'
    metadata (a guess of 256 px latents' images when a file does not say)."""
    n_classes = classes if classes is not None else len(job.classes[job.shard[0] :: job.shard[1]])
    steps = len(respaced_timesteps(1000, job.step.steps))
    feat_dim = int(_safetensors_config(job.models.critics).get("feat_dim", DEFAULT_FEAT_DIM))
    den = _safetensors_config(job.models.denoiser)
    latent = str(job.models.vae).lower() != "none"
    side = int(den.get("input_size", 32)) * (8 if latent else 1)
    if engine is not None:
        steps, feat_dim = engine.num_steps, engine.feat_dim
        codec = getattr(engine, "codec", None)
        if codec is not None:  # eager: the decoder's real scale; exported engines keep the guess
            side = engine.shape[-1] * int(getattr(codec, "downsample", 1))
    if job.resolution is not None:
        side = job.resolution
    return JobShape(n_classes, job.ipc, job.batch, steps, feat_dim, side, job.image_format)


def explain_beta_mismatch(job: DistillJob, have_step: dict[str, Any]) -> None:
    """An engine that differs from the job only in beta: say which beta to pass to use it."""
    want = job.step.to_dict()
    if have_step.get("beta") == want["beta"] or job.step.guidance != "igds":
        return
    if {k: v for k, v in have_step.items() if k != "beta"} != {k: v for k, v in want.items() if k != "beta"}:
        return
    beta = float(have_step.get("beta") or 0.0)
    raise UserError(
        f"the engine was exported with beta {beta:.4g}, this job uses {want['beta']:.4g}; "
        f"pass --beta {beta:.6g}, or export an engine for this job"
    )


def build_engine(job: DistillJob, choice: Choice | None = None, log: Any = None) -> StepEngine:
    """The engine to run: an exported one (given, or from the cache: exported now if missing;
    checked against the models and config) or eager."""
    choice = choice or choose(job)
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    m, cfg, batch = job.models, job.step, job.rows
    rows_needed = memory_rows(job.ipc, job.batch)
    if choice.engines is not None:
        if choice.cache_key is not None:
            ensure_cached_engine(
                choice.engines, m, cfg, batch, engine_memory(job), choice.backend, choice.precision, job.device, log
            )
        # Models, step config and batch must match; memory rows need only suffice (checked below),
        # and precision/backend are the engine's own choice.
        have = manifest_view(read_engine_manifest(choice.engines))
        explain_beta_mismatch(job, have["step"] or {})
        if choice.cache_key is None and batch <= int(have["batch_size"]):
            batch = int(have["batch_size"])  # a given engine's static batch may exceed the job's rows: padded
        expect = expect_for(
            m.denoiser, m.vae, m.critics, cfg, batch, have["memory_size"], have["precision"], have["backend"]
        )
        try:
            engine = load_engine(choice.engines, expect, LoadOptions(device=job.device, threads=job.threads))
        except UserError:
            if choice.cache_key is None:
                raise
            # a damaged cache entry: rebuild it once
            ensure_cached_engine(
                choice.engines,
                m,
                cfg,
                batch,
                engine_memory(job),
                choice.backend,
                choice.precision,
                job.device,
                log,
                rebuild=True,
            )
            engine = load_engine(choice.engines, expect, LoadOptions(device=job.device, threads=job.threads))
        if rows_needed > engine.memory_size:
            raise UserError(
                f"IPC {job.ipc} with batch {job.batch} needs {rows_needed} memory rows, the engine takes "
                f"{engine.memory_size}; re-export with --memory-size {rows_needed}"
            )
        return engine
    pipe = build_pipeline(m.denoiser, m.vae, m.critics, cfg, device=job.device, dtype=choice.precision)
    return EagerEngine(pipe.step, pipe.vae, memory_size=max(1, rows_needed))


def labels_for(engine: StepEngine, critics: Path | None, wnids: list[str]) -> list[int]:
    """The denoiser's labels for the classes; refuses classes the denoiser or critics lack."""
    labels = engine.labels(wnids)
    if critics is not None:
        known = set(load_critic(critics).config.class_ids)
        missing = [w for w, lab in zip(wnids, labels, strict=True) if lab not in known]
        if missing:
            raise UserError(
                f"the critics were trained for other classes ({missing[0]} is not among them); "
                "train critics for this subset"
            )
    return labels


def distill_config(
    job: DistillJob, engine: StepEngine, choice: Choice | None = None, hashes: dict[str, str | None] | None = None
) -> DistillConfig:
    """What defines the job's output (the folder's identity): classes, IPC, seed, step, models, engine."""
    wnids = [c.wnid for c in job.classes]
    m = job.models
    h = hashes if hashes is not None else model_hashes(m, job.step.guidance)
    precision = choice.precision if choice is not None else (job.dtype or "fp32")
    if engine.backend != "eager":
        precision = str(engine.manifest.get("precision", precision))
    return DistillConfig(
        wnids=wnids,
        labels=labels_for(engine, m.critics, wnids),
        ipc=job.ipc,
        batch_size=job.batch,
        seed=job.seed,
        image_format=job.image_format,
        resolution=job.resolution,
        step=job.step.identity(),
        models=dict(h),
        backend=engine.backend,
        engine_id=engine.id,
        precision=precision,
        engine_key=choice.cache_key if choice is not None else None,
    ).validate()


def run_info(job: DistillJob) -> dict[str, Any]:
    return {
        "versions": library_versions(),
        "machine": machine_facts(job.device),
    }
