"""Build an engine folder from model paths: export, manifest, atomic rename; and verify it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import PRECISIONS, RETIRED_STEP_FIELDS, STEP_FIELDS, StepConfig, check_count, step_config
from ..errors import UserError
from ..guidance.step import GuidedStep
from ..models.embedded import resolve_models
from ..models.labels import model_class_names
from ..models.vae import PixelSpace
from ..sampling.engine import StepEngine, plain_path
from ..sampling.pipeline import build_pipeline
from . import onnx_export as ox
from .backend import ExportInputs, LoadOptions
from .engine_manifest import (
    build_manifest,
    file_sha256,
    optional_sha256,
    replaceable_files,
    write_engine_manifest,
)
from .io import STEP_OUTPUTS, StepShapes, random_inputs, rel_error
from .registry import backend as backend_row
from .registry import load_engine
from .trust import engine_key

# Export settings of a recipe (export/*.toml) or the flags, besides the step's (config.StepConfig).
EXPORT_DEFAULTS: dict[str, Any] = {
    "denoiser": None,
    "vae": None,
    "critics": None,
    "batch_size": 16,
    "memory_size": 64,
    "ipc": 10,  # the IPC the engine is for (validated; the step defaults do not depend on it)
    "precision": "fp32",
    "backend": "onnxruntime",
    "opset": 18,
    "split": False,
    "device": None,  # None: the backend's export_device() (cuda when a GPU is visible; see docs/export.md)
}
# The largest static shapes an engine is built with: tracing allocates example inputs of these
# shapes (a batch of 10^7 asks for 100+ GiB), and a distill batch is at most 32 by default.
MAX_BATCH = 4096
MAX_MEMORY = 1 << 20


def read_recipe(path: Path) -> dict[str, Any]:
    """A TOML recipe: the flags' names with '_' or '-', any of the export and step settings."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise UserError("--recipe needs Python 3.11+ (tomllib)") from None
    if not path.is_file():
        raise UserError(f"recipe '{path}' does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    data = {k.replace("-", "_"): v for k, v in data.items()}
    known = [*EXPORT_DEFAULTS, *STEP_FIELDS]
    unknown = sorted(set(data) - set(known) - set(RETIRED_STEP_FIELDS))  # retired: read at the neutral value
    if unknown:
        raise UserError(f"{path}: unknown recipe key '{unknown[0]}' (known: {', '.join(known)})")
    return data


def export_spec(recipe: Path | None, flags: dict[str, Any], out: Path, overwrite: bool = False) -> ExportSpec:
    """Defaults, then the recipe, then every flag given (None = not given): the one way from export
    options to what is built."""
    layers = [read_recipe(recipe) if recipe is not None else {}, flags]
    s = dict(EXPORT_DEFAULTS)
    for layer in layers:
        s.update({k: v for k, v in layer.items() if k in EXPORT_DEFAULTS and v is not None})
    check_count(int(s["ipc"]), "--ipc")
    cfg = step_config(*layers)
    m = resolve_models(s["denoiser"], s["vae"], s["critics"], cfg.guidance)
    return ExportSpec(
        denoiser=m.denoiser,
        vae=m.vae,
        critics=m.critics,
        cfg=cfg,
        batch_size=int(s["batch_size"]),
        memory_size=int(s["memory_size"]),
        precision=str(s["precision"]),
        backend=str(s["backend"]),
        out=out,
        overwrite=overwrite,
        split=bool(s["split"]),
        opset=int(s["opset"]),
        device=str(s["device"] or backend_row(str(s["backend"]), exporting=True).export_device()),
    )


@dataclass
class ExportSpec:
    denoiser: Path
    vae: str | None  # None / "none": pixel space
    critics: Path | None
    cfg: StepConfig
    batch_size: int
    memory_size: int
    precision: str
    backend: str
    out: Path
    overwrite: bool = False
    split: bool = False  # also write denoiser_eps / critic_grad graphs, to compare part by part
    opset: int = 18
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def graph_opset(self) -> int:
        return max(self.opset, 22) if self.precision == "bf16" else self.opset  # bf16 Conv needs opset 22

    @property
    def dtype(self) -> str:
        """The models' precision in the exported graph (bf16: the critic too; fp16: the critic stays fp32)."""
        return self.precision if self.precision in ("fp16", "bf16") else "fp32"

    def validate(self) -> ExportSpec:
        self.cfg.validate()
        row = backend_row(self.backend, exporting=True)
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision '{self.precision}': use {', '.join(PRECISIONS)}")
        if self.precision == "fp8":
            raise UserError(
                "fp8 engines need FP8 Q/DQ nodes from a quantizer (NVIDIA ModelOpt), which this exporter "
                "does not write; use --precision fp16 or bf16"
            )
        if self.precision not in row.precisions:
            raise UserError(
                f"--precision {self.precision} does not run on {self.backend} (it builds {', '.join(row.precisions)}); "
                "choose one of those, or another --backend"
            )
        if self.batch_size < 1 or self.memory_size < 1:
            raise UserError("--batch-size and --memory-size must be >= 1")
        for option, value, most in (
            ("--batch-size", self.batch_size, MAX_BATCH),
            ("--memory-size", self.memory_size, MAX_MEMORY),
        ):
            if value > most:
                raise UserError(
                    f"{option} {value} is more than an engine's static shapes allow ({most}): "
                    "tracing would allocate example inputs of that size; choose a smaller value"
                )
        if self.cfg.guidance == "igds" and self.critics is None:
            raise UserError("--guidance igds needs --critics PATH (or --guidance off)")
        if self.out.exists():
            if not self.out.is_dir():
                raise UserError(f"--out '{self.out}' is a file; choose a folder name for the engine")
            if not self.overwrite:
                raise UserError(f"'{self.out}' already exists; pass --overwrite to replace it, or choose another --out")
            replaceable_files(self.out)  # before minutes of export; checked again when replacing
        if self.out.parent.exists() and not self.out.parent.is_dir():
            raise UserError(f"'{self.out.parent}' is a file; --out must be inside a folder")
        return self


def expect_for(
    denoiser: str | Path,
    vae: str | Path | None,
    critics: str | Path | None,
    cfg: StepConfig,
    batch_size: int,
    memory_size: int,
    precision: str,
    backend: str,
) -> dict[str, Any]:
    """What ``load_engine(expect=...)`` should demand for these inputs."""
    return {
        "denoiser_sha256": file_sha256(denoiser),
        "vae_sha256": optional_sha256(vae),
        "critic_sha256": optional_sha256(critics) if cfg.guidance == "igds" else None,
        "step": cfg.to_dict(),
        "batch_size": batch_size,
        "memory_size": memory_size,
        "precision": precision,
        "backend": backend,
    }


def step_shapes(step: GuidedStep, batch_size: int, memory_size: int) -> StepShapes:
    return StepShapes(batch_size, *step.shape, memory_size, step.feat_dim)


def example_labels(step: GuidedStep) -> list[int]:
    """Labels the step can be asked for: the critic's classes when guided, else the denoiser's."""
    if step.critic is not None:
        return list(step.critic.config.class_ids)
    return list(range(step.num_classes))


def write_graphs(
    spec: ExportSpec, step: GuidedStep, codec: torch.nn.Module, shapes: StepShapes, folder: Path
) -> dict[str, Any]:
    """Write the backend's files into ``folder``; returns the manifest's ``graphs`` entry."""
    dev = torch.device(spec.device)
    args = tuple(a.to(dev) for a in random_inputs(shapes, len(step.schedule), example_labels(step), seed=0))
    latents = None
    if not isinstance(codec, PixelSpace):
        latents = torch.randn(shapes.batch_size, shapes.channels, shapes.height, shapes.width, device=dev)
    row = backend_row(spec.backend, exporting=True)
    graphs = row.write(ExportInputs(step, codec, args, latents, folder, spec.precision, spec.graph_opset))
    if spec.split:
        graphs["split"] = ox.export_split(step, args, folder, spec.graph_opset)
    return graphs


def export_engine(spec: ExportSpec) -> Path:
    """Build ``spec.out``. Files go to a hidden temporary folder renamed at the end, so a crash
    never leaves a folder that looks like a finished engine; an existing engine is replaced only
    with ``overwrite`` and only once the new one is complete."""
    spec.validate()
    reason = backend_row(spec.backend).unavailable()
    if reason:  # fail before minutes of export
        raise UserError(f"the {spec.backend} backend cannot run here: {reason}")
    key = engine_key(create=True)  # signs the manifest; made (or refused) before minutes of export
    pipe = build_pipeline(spec.denoiser, spec.vae, spec.critics, spec.cfg, device=spec.device, dtype=spec.dtype)
    shapes = step_shapes(pipe.step, spec.batch_size, spec.memory_size)
    spec.out.parent.mkdir(parents=True, exist_ok=True)  # e.g. engines/ in a fresh clone
    remove_stale_exports(spec.out)
    tmp = spec.out.parent / f".{spec.out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        (tmp / EXPORT_HOST).write_text(socket.gethostname() + "\n")  # whose export this is (see below)
        graphs = write_graphs(spec, pipe.step, pipe.vae, shapes, tmp)
        critic = spec.critics if spec.cfg.guidance == "igds" else None
        manifest = build_manifest(
            backend=spec.backend,
            precision=spec.precision,
            step_config=spec.cfg.to_dict(),
            models={
                "denoiser": file_sha256(spec.denoiser),
                "vae": optional_sha256(spec.vae),
                "critic": optional_sha256(critic),
            },
            model_paths={
                "denoiser": str(spec.denoiser),
                "vae": spec.vae and str(spec.vae),
                "critic": critic and str(critic),
            },
            shapes=shapes.as_dict(),
            graphs=graphs,
            extra={
                "num_steps": len(pipe.step.schedule),
                "num_classes": pipe.step.num_classes,
                "class_wnids": model_class_names(pipe.step.denoiser),  # distill maps WNIDs without the weights
                "labels": example_labels(pipe.step),
                "opset": spec.graph_opset if backend_row(spec.backend).onnx else None,
                "device": torch.device(spec.device).type,  # compiled code is for this device type
                # where the plain graph stands in for the step (the engine runs it at these indices)
                "plain_steps": sorted(pipe.step.plain_steps) if "plain" in graphs else [],
                **spec.extra,
            },
        )
        (tmp / EXPORT_HOST).unlink()
        write_engine_manifest(tmp, manifest, key)
        _replace(tmp, spec.out, spec.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return spec.out


# In an export's temporary folder: the host it runs on (its pid means something only there).
EXPORT_HOST = ".export-host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_exports(out: Path) -> list[Path]:
    """Remove the temporary folders ``.NAME.tmp-PID`` next to ``out`` left by exports that were
    killed: their process is not alive on this host (a folder whose export ran on another host, as
    its ``.export-host`` says, is left alone). Returns what was removed."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.tmp-(\d+)")
    removed = []
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return removed
    for path in entries:
        m = pattern.fullmatch(path.name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid <= 0 or pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            if not stat.S_ISDIR(path.lstat().st_mode):  # a link or a file: not ours
                continue
            host = (path / EXPORT_HOST).read_text().strip() if (path / EXPORT_HOST).is_file() else None
        except (OSError, UnicodeDecodeError):
            continue
        if host is not None and host != socket.gethostname():
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _replace(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished engine into place. An existing ``out`` (``overwrite``) is checked again
    (``replaceable_files``: only an engine's own files), moved aside, and only the files its
    manifest lists are deleted; a folder left with anything else in it is kept as ``.NAME.old-PID``."""
    if not out.exists() and not out.is_symlink():
        tmp.rename(out)
        return
    if not overwrite:
        raise UserError(f"'{out}' already exists; pass --overwrite to replace it, or choose another --out")
    names = replaceable_files(out)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    out.rename(old)
    tmp.rename(out)
    for name in names:
        path = old / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    folders = {p for n in names for p in (old / n).parents if old in p.parents}
    for folder in sorted(folders, key=lambda p: -len(p.parts)):  # deepest first; only empty ones go
        with contextlib.suppress(OSError):
            folder.rmdir()
    with contextlib.suppress(OSError):  # something appeared in it during the export: kept for its owner
        old.rmdir()


def verify_engine(
    engine: StepEngine, step: GuidedStep, steps: list[int] | None = None, seed: int = 1
) -> list[dict[str, Any]]:
    """Relative error of every output against the eager GuidedStep on fresh random inputs (made on
    the CPU: the engine moves them to its device). An engine with a plain graph also gets a row for it
    ("graph": "plain") at its first and last plain index: its x_{t-1} against the full eager step's
    (its other outputs are zeros by design)."""
    shapes = StepShapes(engine.batch_size, *engine.shape, engine.memory_size, engine.feat_dim)
    n = len(step.schedule)
    dev = step.tab_timestep.device
    plain, plain_steps = plain_path(engine)
    checks = [("step", i) for i in (steps if steps is not None else sorted({n - 1, n // 2, 0}, reverse=True))]
    checks += [("plain", i) for i in sorted({max(plain_steps), min(plain_steps)}, reverse=True)] if plain else []
    rows = []
    for k, (graph, i) in enumerate(checks):
        args = random_inputs(shapes, n, example_labels(step), seed=seed + k, i=i)
        with torch.no_grad():
            ref = step(*(a.to(dev) for a in args))
        if graph == "plain":
            rows.append({"i": i, "graph": graph, "x_prev": rel_error(plain(*args)[0], ref[0])})
            continue
        out = engine.step(*args)
        rows.append({"i": i, **{name: rel_error(o, r) for name, o, r in zip(STEP_OUTPUTS, out, ref, strict=True)}})
    return rows


def worst_error(rows: list[dict[str, Any]]) -> float:
    """The largest relative error of ``verify_engine``'s rows (inf when any output was not finite)."""
    return max(v for r in rows for k, v in r.items() if k not in ("i", "graph"))


def verify_export(spec: ExportSpec) -> list[dict[str, Any]]:
    """Open the engine just built and compare it with the eager step; refuse errors beyond the
    precision's tolerance (fp32 1e-3 per output, reduced precision 5e-2; NaN never passes)."""
    pipe = build_pipeline(spec.denoiser, spec.vae, spec.critics, spec.cfg, device=spec.device, dtype=spec.dtype)
    engine = load_engine(spec.out, options=LoadOptions(device=spec.device))
    rows = verify_engine(engine, pipe.step)
    worst = worst_error(rows)
    tol = 1e-3 if spec.precision == "fp32" else 5e-2
    if not worst <= tol:  # also catches NaN
        raise UserError(f"--verify: worst relative error {worst:.2e} exceeds {tol:g}")
    return rows
