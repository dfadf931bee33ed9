"""Compiled engines: torch.compile of the traced step in-process, or an AOTInductor package.

Both compile the make_fx graph of the GuidedStep with its critic gradient as plain ops, as the
ONNX exporter does, except that the denoiser's (and the decoder's) attention stays the fused
``scaled_dot_product_attention`` op: neither is differentiated, so Inductor may run its fused
kernel (the ONNX graph spells attention out). The ``.pt2`` package holds compiled code and
weights: it loads in a fresh process with ``aoti_load_package`` and never recompiles.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..models.vae import decode_images
from .backend import Backend, ExportInputs, LoadOptions
from .io import PLAIN_INPUTS, ExportedEngine, StepShapes
from .onnx_export import trace, trace_plain, trace_step

StepFn = Callable[..., Any]


def cxx_compiler() -> str | None:
    """The C++ compiler Inductor will call (its CXX override, else the usual names on PATH)."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cuda_toolkit() -> str | None:
    """The CUDA toolkit folder AOTInductor compiles a CUDA package against, by torch's own rule
    (``torch.utils.cpp_extension.CUDA_HOME``: $CUDA_HOME or $CUDA_PATH, else the folder above nvcc on
    PATH, else /usr/local/cuda); None when there is none, or torch has no CUDA."""
    from torch.utils import cpp_extension  # imports setuptools: checked by build_unavailable first

    return cpp_extension.CUDA_HOME


def build_unavailable(device: torch.device | str) -> str | None:
    """Why an AOTInductor package cannot be built for ``device`` here, or None; asked before any
    tracing. Every build runs a C++ compiler through ``torch.utils.cpp_extension`` (which imports
    setuptools); a CUDA build also reads the CUDA toolkit's headers (loading a built package needs
    neither)."""
    if cxx_compiler() is None:
        return "AOTInductor compiles C++: install g++ (or clang++) or set CXX, or use --backend onnxruntime"
    if importlib.util.find_spec("setuptools") is None:
        return "AOTInductor builds through torch.utils.cpp_extension, which imports setuptools: it is not installed"
    if torch.device(device).type != "cuda":
        return None
    if torch.version.cuda is None:
        return "this torch has no CUDA: AOTInductor cannot build a CUDA package"
    home = cuda_toolkit()
    if home is None:
        return (
            "AOTInductor builds a CUDA package against the CUDA toolkit: none found (no $CUDA_HOME or "
            "$CUDA_PATH, no nvcc on PATH, no /usr/local/cuda); set CUDA_HOME, or use --device cpu"
        )
    if home != "/usr" and not (Path(home) / "include" / "cuda_runtime_api.h").is_file():
        return f"the CUDA toolkit at {home} has no include/cuda_runtime_api.h: AOTInductor cannot build a CUDA package"
    return None


def aoti_package(module: nn.Module | StepFn, args: tuple[torch.Tensor, ...], path: Path) -> Path:
    """torch.export the traced graph, then AOTInductor-compile it into a self-contained ``.pt2``."""
    from torch._inductor import aoti_compile_and_package

    reason = build_unavailable(args[0].device)
    if reason:
        raise UserError(reason)
    gm = module if isinstance(module, torch.fx.GraphModule) else trace(module, args, keep_sdpa=True)
    ep = torch.export.export(gm, args)
    try:
        out = aoti_compile_and_package(ep, package_path=str(path))
    except Exception as e:  # Inductor raises many types (CppCompileError, InductorError, ...)
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UserError(f"AOTInductor could not compile the step: {first}") from None
    return Path(out)


def build_step_package(step: nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> Path:
    return aoti_package(trace_step(step, args, attention="sdpa"), args, path)


def build_plain_package(step: nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> Path:
    plain_args = args[: len(PLAIN_INPUTS)]
    return aoti_package(trace_plain(step, plain_args, attention="sdpa"), plain_args, path)


def build_decoder_package(vae: nn.Module, latents: torch.Tensor, path: Path) -> Path:
    def decode(z: torch.Tensor) -> tuple[torch.Tensor]:
        return (decode_images(vae, z),)

    with torch.no_grad():
        return aoti_package(decode, (latents,), path)


def load_package(path: Path, device: torch.device | None = None) -> StepFn:
    from torch._inductor import aoti_load_package

    try:
        if device is not None and device.type == "cuda":
            return aoti_load_package(str(path), device_index=device.index or 0)
        return aoti_load_package(str(path))
    except Exception as e:
        raise UserError(f"cannot load AOTInductor package {path.name}: {str(e).splitlines()[0][:300]}") from None


def jit_step(step: nn.Module, args: tuple[torch.Tensor, ...], mode: str | None = None, plain: bool = False) -> StepFn:
    """torch.compile of the traced step, or with ``plain`` of the plain step (compiles on the first
    call; static shapes; fused denoiser attention). ``mode`` "reduce-overhead" replays CUDA graphs."""
    gm = trace_plain(step, args, attention="sdpa") if plain else trace_step(step, args, attention="sdpa")
    return torch.compile(gm, mode=mode, dynamic=False, fullgraph=True)


class CompiledEngine(ExportedEngine):
    backend = "compiled"

    def __init__(
        self,
        fn: StepFn,
        manifest: dict[str, Any],
        decoder: StepFn | None = None,
        device: torch.device | str = "cpu",
        plain_fn: StepFn | None = None,
    ):
        super().__init__(manifest, device)
        self.fn = fn
        self.plain_fn = plain_fn  # present exactly when the manifest lists graphs.plain (load, jit)
        self.decoder = decoder
        self.has_decoder = decoder is not None

    @classmethod
    def load(
        cls, engine_dir: str | Path, manifest: dict[str, Any], options: LoadOptions = LoadOptions()
    ) -> CompiledEngine:
        folder, dev = Path(engine_dir), torch.device(options.device)
        built_on = manifest.get("device", "cpu")
        if torch.device(built_on).type != dev.type:
            raise UserError(
                f"this AOTInductor engine was compiled for {built_on}, not {dev.type}; "
                f"re-export it with --device {dev.type}"
            )
        graphs = manifest["graphs"]
        fn = load_package(folder / graphs["step"], dev)
        plain = load_package(folder / graphs["plain"], dev) if "plain" in graphs else None
        dec = graphs.get("decoder")
        return cls(fn, manifest, load_package(folder / dec, dev) if dec else None, dev, plain)

    @classmethod
    def jit(
        cls, step: nn.Module, shapes: StepShapes, example: tuple[torch.Tensor, ...], mode: str | None = None
    ) -> CompiledEngine:
        """torch.compile of the traced step in this process (no engine folder: benchmarks, tests)."""
        manifest: dict[str, Any] = {
            "backend": "compiled",
            "mode": f"torch.compile {mode or 'default'}",
            "step": step.cfg.to_dict(),
            "shapes": shapes.as_dict(),
            "num_steps": len(step.schedule),
            "graphs": {"step": "in-process"},
        }
        plain = None
        if step.plain_steps:  # as an exported engine: the plain step compiled too
            plain = jit_step(step, example[: len(PLAIN_INPUTS)], mode, plain=True)
            manifest |= {
                "graphs": {"step": "in-process", "plain": "in-process"},
                "plain_steps": sorted(step.plain_steps),
            }
        return cls(jit_step(step, example, mode), manifest, device=example[0].device, plain_fn=plain)

    def _run(self, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return tuple(self.fn(*args))

    def _run_plain(self, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        assert self.plain_fn is not None  # plain_steps is empty without it
        with torch.no_grad():
            return tuple(self.plain_fn(*args))

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.decoder(z.float().contiguous())[0]


def write_packages(inputs: ExportInputs) -> dict[str, Any]:
    """AOTInductor packages of the traced step, of the plain step where the step has plain indices,
    and, for latent models, of the decoder."""
    graphs: dict[str, Any] = {"step": build_step_package(inputs.step, inputs.args, inputs.folder / "step.pt2").name}
    if inputs.step.plain_steps:
        graphs["plain"] = build_plain_package(inputs.step, inputs.args, inputs.folder / "plain.pt2").name
    if inputs.latents is not None:
        graphs["decoder"] = build_decoder_package(inputs.codec, inputs.latents, inputs.folder / "decoder.pt2").name
    return graphs


def _unavailable() -> str | None:
    return None if cxx_compiler() else "no C++ compiler (g++/clang++) on PATH: AOTInductor cannot build"


BACKEND = Backend(
    name="compiled",
    summary="torch.compile / an AOTInductor .pt2 package of the traced step (reloads without recompiling)",
    precisions=("fp32", "fp16", "bf16"),
    unavailable=_unavailable,
    describe=lambda: f"torch.compile + AOTInductor .pt2 via {cxx_compiler()}",
    write=write_packages,
    load=CompiledEngine.load,
)
