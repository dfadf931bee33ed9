"""ONNX Runtime engine: the exported step graph in an InferenceSession (CPU, CUDA or TensorRT EP)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from .io import STEP_INPUTS, ExportedEngine

# What --providers accepts, in the order "auto" prefers them. TensorRT EP is opt-in: its first
# run builds an engine (minutes for a DiT), so nobody should get it by accident.
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def provider_list(
    choice: str, cache_dir: Path, precision: str = "fp32", device_id: int = 0
) -> list[str | tuple[str, dict[str, Any]]]:
    """``auto``: CUDA when available, else CPU; ``tensorrt``: TensorRT EP, CUDA and CPU as fallbacks."""
    have = set(available_providers())
    if choice == "auto":
        choice = "cuda" if PROVIDERS["cuda"] in have else "cpu"
    if choice not in PROVIDERS:
        raise UserError(f"unknown provider '{choice}': use auto, cpu, cuda or tensorrt")
    if PROVIDERS[choice] not in have:
        raise UserError(
            f"onnxruntime here has no {PROVIDERS[choice]} (it has {', '.join(sorted(have))}); "
            "install onnxruntime-gpu for cuda/tensorrt"
        )
    cuda = ("CUDAExecutionProvider", {"device_id": device_id})
    if choice == "cpu":
        return ["CPUExecutionProvider"]
    if choice == "cuda":
        return [cuda, "CPUExecutionProvider"]
    cache_dir.mkdir(parents=True, exist_ok=True)
    trt_opts = {
        "device_id": device_id,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
        "trt_fp16_enable": precision == "fp16",
        "trt_bf16_enable": precision == "bf16",
    }
    return [("TensorrtExecutionProvider", trt_opts), cuda, "CPUExecutionProvider"]


def session_options(threads: int | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Default: every physical core for intra-op work; one graph runs at a time, so no inter-op pool.
    so.intra_op_num_threads = threads if threads is not None else int(os.environ.get("IGDS_ORT_THREADS", "0"))
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def open_session(path: Path, providers: list, threads: int | None = None) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=providers)
    except Exception as e:  # ORT raises its own exception types for bad graphs and missing EPs
        raise UserError(f"onnxruntime cannot open {path.name}: {str(e).splitlines()[0][:300]}") from None


_NP = {torch.float32: np.float32, torch.float16: np.float16, torch.int32: np.int32, torch.int64: np.int64}


class OrtEngine(ExportedEngine):
    backend = "onnxruntime"

    def __init__(
        self,
        engine_dir: str | Path,
        manifest: dict[str, Any],
        providers: str = "auto",
        threads: int | None = None,
    ):
        super().__init__(manifest)
        folder = Path(engine_dir)
        plist = provider_list(providers, folder / "ort_trt_cache", manifest["precision"])
        self.session = open_session(folder / manifest["graphs"]["step"], plist, threads)
        dec = manifest["graphs"].get("decoder")
        self.decoder = open_session(folder / dec, plist, threads) if dec else None
        self.has_decoder = self.decoder is not None
        self.on_cuda = self.session.get_providers()[0] != "CPUExecutionProvider"
        # Inputs the exporter kept (a graph without guidance may not read memory at all).
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def _run(self, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        named = dict(zip(STEP_INPUTS, args, strict=True))
        if self.on_cuda and args[0].is_cuda:
            return self._run_bound(named)
        outs = self.session.run(self.outputs, {k: named[k].cpu().numpy() for k in self.inputs})
        return tuple(torch.from_numpy(o).to(args[0].device) for o in outs)

    def _run_bound(self, args: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """IO binding: inputs and outputs stay in CUDA memory (no host round trip per step)."""
        dev = args["x"].device
        binding = self.session.io_binding()
        for name in self.inputs:
            t = args[name]
            binding.bind_input(name, "cuda", dev.index or 0, _NP[t.dtype], list(t.shape), t.data_ptr())
        outs = []
        for meta in self.session.get_outputs():
            t = torch.empty(meta.shape, dtype=torch.float32, device=dev)
            binding.bind_output(meta.name, "cuda", dev.index or 0, np.float32, list(t.shape), t.data_ptr())
            outs.append(t)
        self.session.run_with_iobinding(binding)
        return tuple(outs)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        (images,) = self.decoder.run(None, {"latents": z.detach().float().cpu().numpy()})
        return torch.from_numpy(images)
