"""Build an engine folder from model paths: export, manifest, atomic rename; and verify it."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..guidance.step import GuidedStep, StepConfig
from ..models.labels import model_class_names
from .io import STEP_OUTPUTS, StepShapes, random_inputs, rel_error
from .manifest import build_manifest, file_sha256, optional_sha256, write_manifest
from .registry import EXPORT_BACKENDS

PRECISIONS = ("fp32", "fp16", "bf16", "fp8")


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

    def validate(self) -> ExportSpec:
        self.cfg.validate()
        if self.backend not in EXPORT_BACKENDS:
            raise UserError(f"unknown backend '{self.backend}': use {', '.join(EXPORT_BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision '{self.precision}': use {', '.join(PRECISIONS)}")
        if self.precision == "fp8":
            raise UserError(
                "fp8 engines need FP8 Q/DQ nodes from a quantizer (NVIDIA ModelOpt), which this exporter "
                "does not write; use --precision fp16 or bf16"
            )
        if self.precision == "bf16" and self.backend == "onnxruntime":
            raise UserError(
                "bf16 does not run on onnxruntime (ONNX Conv takes bf16 only from opset 22, and ORT has no "
                "bf16 kernels for it); use --precision fp16, or --backend tensorrt/compiled for bf16"
            )
        if self.batch_size < 1 or self.memory_size < 1:
            raise UserError("--batch-size and --memory-size must be >= 1")
        if self.cfg.entropy != "collision":
            raise UserError("exported engines use the collision-entropy bound; --entropy knn is eager only")
        if self.cfg.guidance == "igds" and self.critics is None:
            raise UserError("--guidance igds needs --critics PATH (or --guidance off)")
        if self.out.exists() and not self.overwrite:
            raise UserError(f"'{self.out}' already exists; pass --overwrite to replace it, or choose another --out")
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
    d = step.denoiser
    size = int(d.input_size)
    return StepShapes(batch_size, int(d.in_channels), size, size, memory_size, step.feat_dim)


def example_labels(step: GuidedStep) -> list[int]:
    """Labels the step can be asked for: the critic's classes when guided, else the denoiser's."""
    if step.critic is not None:
        return list(step.critic.config.class_ids)
    return list(range(step.num_classes))


def write_graphs(
    spec: ExportSpec, step: GuidedStep, codec: torch.nn.Module, shapes: StepShapes, folder: Path
) -> dict[str, Any]:
    """Write the backend's files into ``folder``; returns the manifest's ``graphs`` entry."""
    from ..models.vae import PixelSpace
    from . import onnx_export as ox

    dev = torch.device(spec.device)
    args = tuple(a.to(dev) for a in random_inputs(shapes, len(step.schedule), example_labels(step), seed=0))
    latents = torch.randn(shapes.batch_size, shapes.channels, shapes.height, shapes.width, device=dev)
    has_decoder = not isinstance(codec, PixelSpace)
    opset = spec.graph_opset
    graphs: dict[str, Any] = {}
    if spec.backend == "compiled":
        from .compiled import build_decoder_package, build_step_package

        graphs["step"] = build_step_package(step, args, folder / "step.pt2").name
        if has_decoder:
            graphs["decoder"] = build_decoder_package(codec, latents, folder / "decoder.pt2").name
    else:
        ox.export_step(step, args, folder / "step.onnx", opset)
        graphs["step"] = "step.onnx"
        if has_decoder:
            graphs["decoder"] = ox.export_decoder(codec, latents, folder / "decoder.onnx", opset).name
        if spec.backend == "tensorrt":
            from .tensorrt import build_plan

            cache = folder / "timing.cache"
            graphs["onnx"] = {"step": graphs["step"], "decoder": graphs.get("decoder")}
            graphs["step"] = build_plan(folder / "step.onnx", folder / "step.plan", spec.precision, cache).name
            if has_decoder:
                graphs["decoder"] = build_plan(
                    folder / "decoder.onnx", folder / "decoder.plan", spec.precision, cache
                ).name
    if spec.split:
        graphs["split"] = ox.export_split(step, args, folder, opset)
    return graphs


def export_engine(spec: ExportSpec) -> Path:
    """Build ``spec.out``. Files go to a hidden temporary folder renamed at the end, so a crash
    never leaves a folder that looks like a finished engine; an existing engine is replaced only
    with ``overwrite`` and only once the new one is complete."""
    from ..pipeline import build_pipeline

    spec.validate()
    if spec.backend == "tensorrt":
        from .tensorrt import import_tensorrt

        import_tensorrt()  # fail before minutes of export
    dtype = spec.precision if spec.precision in ("fp16", "bf16") else "fp32"
    pipe = build_pipeline(spec.denoiser, spec.vae, spec.critics, spec.cfg, device=spec.device, dtype=dtype)
    shapes = step_shapes(pipe.step, spec.batch_size, spec.memory_size)
    spec.out.parent.mkdir(parents=True, exist_ok=True)  # e.g. engines/ in a fresh clone
    tmp = spec.out.parent / f".{spec.out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
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
                "opset": None if spec.backend == "compiled" else spec.graph_opset,
                **spec.extra,
            },
        )
        write_manifest(tmp, manifest)
        _replace(tmp, spec.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return spec.out


def _replace(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def verify_engine(engine: Any, step: GuidedStep, steps: list[int] | None = None, seed: int = 1) -> list[dict[str, Any]]:
    """Relative error of every output against the eager GuidedStep on fresh random inputs."""
    shapes = StepShapes(engine.batch_size, *engine.shape, engine.memory_size, engine.feat_dim)
    n = len(step.schedule)
    rows = []
    for k, i in enumerate(steps if steps is not None else sorted({n - 1, n // 2, 0}, reverse=True)):
        args = random_inputs(shapes, n, example_labels(step), seed=seed + k, i=i)
        dev = next(step.parameters()).device
        with torch.no_grad():
            ref = step(*(a.to(dev) for a in args))
        out = engine.step(*args)
        rows.append({"i": i, **{name: rel_error(o, r) for name, o, r in zip(STEP_OUTPUTS, out, ref, strict=True)}})
    return rows
