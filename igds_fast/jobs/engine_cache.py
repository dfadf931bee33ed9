"""Which backend and precision a distill job runs by default, and the engine cache behind it.

The rule (``default_backend``), from what the machine has (measured: README, "Default backend"):

- a CPU with bf16 matrix units (AMX ``amx_bf16``, or ``avx512_bf16``): the eager step in bf16
  (denoiser and critic weights; the guidance gradient is taken w.r.t. the fp32 x_t); an exported
  fp32 graph gains little there;
- any other CPU: ONNX Runtime, the fused step exported once (fp32); eager fp32 if onnxruntime is missing;
- CUDA: eager fp32 (the reference; GPU backends are chosen explicitly, none is measured yet).

An exported engine lives in the cache (``--engine-cache``, ``$IGDS_ENGINE_CACHE``, default
``~/.cache/igds-fast/engines``) under a key of everything it is built from: the models' sha256,
the step configuration, batch and memory shapes, backend, precision and library versions. The
first job exports it (under a lock: concurrent jobs export once), later ones load it. Entries are
signed with the same engine key as any export (``backends/trust.py``) and checked with it whatever
``$IGDS_TRUST_ENGINES`` says: an entry that fails its manifest, signature or file checks (damaged,
made by an earlier release or under another key) is rebuilt, never loaded. The cache's entries are
the product's own: a failed one is deleted as a whole.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..backends.build import ExportSpec, export_engine
from ..backends.engine_manifest import read_engine_manifest, verify_files
from ..config import StepConfig
from ..errors import UserError
from ..machine import bf16_units, library_versions
from ..models.embedded import ModelPaths
from .lock import FolderLock
from .state import digest

BACKEND_CHOICES = ("auto", "eager", "onnxruntime", "compiled", "tensorrt")


@dataclass(frozen=True)
class Choice:
    """The backend a job runs and why."""

    backend: str  # eager, onnxruntime, compiled, tensorrt
    precision: str  # the denoiser's: fp32, bf16, fp16
    reason: str
    engines: Path | None = None  # the engine folder (given, or a cache entry)
    cache_key: str | None = None  # set when ``engines`` is a cache entry built for this job


def default_backend(device: str, flags: set[str] | None = None, have_onnxruntime: bool | None = None) -> Choice:
    """The fastest backend and precision measured for this kind of machine (see the module docstring)."""
    if torch.device(device).type == "cuda":
        return Choice("eager", "fp32", "CUDA device: the eager reference step (no GPU default measured yet)")
    units = bf16_units(flags)
    if units:
        return Choice("eager", "bf16", f"CPU with {units[0]}: eager step in bf16 (denoiser and critic)")
    if have_onnxruntime is None:
        have_onnxruntime = importlib.util.find_spec("onnxruntime") is not None
    if have_onnxruntime:
        return Choice("onnxruntime", "fp32", "CPU without bf16 units: the fused step exported to ONNX Runtime")
    return Choice("eager", "fp32", "CPU without bf16 units and without onnxruntime: eager fp32")


def default_cache_dir() -> Path:
    env = os.environ.get("IGDS_ENGINE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "igds-fast" / "engines"


def cache_key(
    models: dict[str, str | None], step: StepConfig, batch: int, memory: int, backend: str, precision: str, device: str
) -> str:
    """The cache key of an engine: a digest of everything its build depends on."""
    versions = library_versions()
    return digest(
        {
            "models": models,
            "step": step.identity(),
            "batch_size": batch,
            "memory_size": memory,
            "backend": backend,
            "precision": precision,
            "device": torch.device(device).type,
            "versions": {k: versions.get(k) for k in ("igds_fast", "torch", "onnx", "onnxruntime", "tensorrt")},
        }
    )


def cache_entry(cache: Path, backend: str, precision: str, key: str) -> Path:
    return cache / f"{backend}-{precision}-{key}"


def usable(entry: Path) -> bool:
    """A finished cache entry whose manifest and signature check (under the engine key, never
    trusted unsigned) and whose files are all there with their sizes (their hashes are checked when
    the engine loads; a failure there rebuilds the entry too)."""
    try:
        if entry.is_symlink():
            return False
        verify_files(entry, read_engine_manifest(entry, trust=False), hashes=False)
    except (UserError, OSError):
        return False
    return True


def discard(entry: Path) -> None:
    """Remove a failed cache entry (moved aside first, so no reader sees half of it)."""
    try:
        mode = entry.lstat().st_mode
    except FileNotFoundError:
        return
    aside = entry.parent / f".{entry.name}.discard-{os.getpid()}"
    entry.rename(aside)
    if stat.S_ISDIR(mode):
        shutil.rmtree(aside)
    else:  # a file or a link in the entry's place: the link goes, never what it points to
        aside.unlink()


def ensure_cached_engine(
    entry: Path,
    models: ModelPaths,
    step: StepConfig,
    batch: int,
    memory: int,
    backend: str,
    precision: str,
    device: str,
    log: Callable[[str], None] | None = None,
    rebuild: bool = False,
) -> Path:
    """The cache entry, exported now if it is missing or damaged (or ``rebuild``); one exporter at a time."""
    if not rebuild and usable(entry):
        return entry
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create the engine cache '{entry.parent}': {e.strerror or e}; "
            "pass --engine-cache DIR, or --backend eager"
        ) from None
    with FolderLock(entry.parent / f".{entry.name}.lock") as lock:
        lock.acquire(wait=True, on_wait=lambda holder: log and log(f"waiting for {holder} to export {entry.name}"))
        if not rebuild and usable(entry):  # another job exported it while we waited
            return entry
        if log is not None:
            log(f"exporting the {backend} {precision} engine once into {entry} ...")
        spec = ExportSpec(
            denoiser=models.denoiser,
            vae=models.vae,
            critics=models.critics,
            cfg=step,
            batch_size=batch,
            memory_size=memory,
            precision=precision,
            backend=backend,
            out=entry,
            device=device,
        )
        discard(entry)  # damaged, foreign or asked to be rebuilt: the cache's own entry
        export_engine(spec)
    return entry


def describe(choice: Choice) -> dict[str, Any]:
    return {"backend": choice.backend, "precision": choice.precision, "reason": choice.reason}
