"""Compiled engines: torch.compile of the traced step in-process, or an AOTInductor package.

Both compile the same make_fx graph the ONNX exporter writes (the GuidedStep with its critic
gradient as plain ops). The ``.pt2`` package holds compiled code and weights: it loads in a fresh
process with ``aoti_load_package`` and never recompiles.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .io import StepShapes, prepare_inputs, run_in_batches
from .onnx_export import math_attention, trace, trace_step

StepFn = Callable[..., Any]


def cxx_compiler() -> str | None:
    """The C++ compiler Inductor will call (its CXX override, else the usual names on PATH)."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def aoti_package(module: nn.Module | StepFn, args: tuple[torch.Tensor, ...], path: Path) -> Path:
    """torch.export the traced graph, then AOTInductor-compile it into a self-contained ``.pt2``."""
    from torch._inductor import aoti_compile_and_package

    if cxx_compiler() is None:
        raise UserError("AOTInductor compiles C++: install g++ (or clang++) or set CXX, or use --backend onnxruntime")
    gm = module if isinstance(module, torch.fx.GraphModule) else trace(module, args)
    ep = torch.export.export(gm, args)
    try:
        out = aoti_compile_and_package(ep, package_path=str(path))
    except Exception as e:  # Inductor raises many types (CppCompileError, InductorError, ...)
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UserError(f"AOTInductor could not compile the step: {first}") from None
    return Path(out)


def build_step_package(step: nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> Path:
    return aoti_package(trace_step(step, args), args, path)


def build_decoder_package(vae: nn.Module, latents: torch.Tensor, path: Path) -> Path:
    def decode(z: torch.Tensor) -> tuple[torch.Tensor]:
        return (vae.decode(z).float().clamp(-1, 1),)

    with math_attention(vae), torch.no_grad():
        return aoti_package(decode, (latents,), path)


def load_package(path: Path, device: torch.device | None = None) -> StepFn:
    from torch._inductor import aoti_load_package

    try:
        if device is not None and device.type == "cuda":
            return aoti_load_package(str(path), device_index=device.index or 0)
        return aoti_load_package(str(path))
    except Exception as e:
        raise UserError(f"cannot load AOTInductor package {path.name}: {str(e).splitlines()[0][:300]}") from None


def jit_step(step: nn.Module, args: tuple[torch.Tensor, ...]) -> StepFn:
    """torch.compile of the traced step (compiles on the first call; static shapes)."""
    return torch.compile(trace_step(step, args), dynamic=False, fullgraph=True)


class CompiledEngine:
    backend = "compiled"

    def __init__(
        self,
        fn: StepFn,
        shapes: StepShapes,
        num_steps: int,
        manifest: dict[str, Any],
        decoder: StepFn | None = None,
    ):
        self.fn = fn
        self.shapes = shapes
        self.batch_size = shapes.batch_size
        self.memory_size = shapes.memory_size
        self.feat_dim = shapes.feat_dim
        self.shape = (shapes.channels, shapes.height, shapes.width)
        self.num_steps = num_steps
        self.manifest = manifest
        self.decoder = decoder

    @classmethod
    def load(cls, engine_dir: str | Path, manifest: dict[str, Any], device: str = "cpu") -> CompiledEngine:
        folder, dev = Path(engine_dir), torch.device(device)
        fn = load_package(folder / manifest["graphs"]["step"], dev)
        dec = manifest["graphs"].get("decoder")
        decoder = load_package(folder / dec, dev) if dec else None
        return cls(fn, StepShapes.from_dict(manifest["shapes"]), int(manifest["num_steps"]), manifest, decoder)

    @classmethod
    def jit(cls, step: nn.Module, shapes: StepShapes, example: tuple[torch.Tensor, ...]) -> CompiledEngine:
        manifest = {"backend": "compiled", "mode": "torch.compile", "step": step.cfg.to_dict()}
        return cls(jit_step(step, example), shapes, len(step.schedule), manifest)

    def step(
        self,
        x: torch.Tensor,
        i: torch.Tensor | int,
        y: torch.Tensor,
        noise: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        args = prepare_inputs(self.shapes, x, i, y, noise, memory, memory_mask)
        with torch.no_grad():
            return tuple(self.fn(*args))

    __call__ = step

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        if self.decoder is None:
            return x.float().clamp(-1, 1)
        dec = self.decoder
        with torch.no_grad():
            return run_in_batches(lambda z: dec(z.float().contiguous())[0], x, self.batch_size)
