"""ONNX Runtime engine: the exported step graph in an InferenceSession (CPU, CUDA or TensorRT EP)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from . import onnx_export as ox
from .backend import Backend, ExportInputs, LoadOptions
from .io import PLAIN_INPUTS, STEP_INPUTS, ExportedEngine

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
    choice: str, cache_dir: Path, device_id: int = 0, stream: int | None = None
) -> list[str | tuple[str, dict[str, Any]]]:
    """``auto``: CUDA when available, else CPU; ``tensorrt``: TensorRT EP, CUDA and CPU as fallbacks.

    ``stream``: the CUDA stream (a ``cudaStream_t`` as int) ORT computes on. Passing torch's stream
    makes ORT's kernels run in order with torch's work on that stream (IO binding hands ORT raw
    pointers of tensors torch may still be writing). Reduced precision is the typed graph's own
    (the exporter writes fp16/bf16 where it belongs): TensorRT EP's fp16/bf16 flags would also
    lower the fp32 critic gradient, whose tiny kernel values flush to 0 in fp16.
    """
    have = set(available_providers())
    if choice == "auto":
        choice = "cuda" if PROVIDERS["cuda"] in have else "cpu"
    if choice not in PROVIDERS:
        raise UserError(f"unknown provider '{choice}': use auto, cpu, cuda or tensorrt")
    if PROVIDERS[choice] not in have:
        raise UserError(
            f"onnxruntime here has no {PROVIDERS[choice]} (it has {', '.join(sorted(have))}); "
            "for cuda/tensorrt replace the CPU build: pip uninstall -y onnxruntime && pip install onnxruntime-gpu"
        )
    cuda_opts: dict[str, Any] = {"device_id": device_id}
    if stream is not None:
        cuda_opts |= {"has_user_compute_stream": "1", "user_compute_stream": str(stream)}
    if choice == "cpu":
        return ["CPUExecutionProvider"]
    if choice == "cuda":
        return [("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]
    cache_dir.mkdir(parents=True, exist_ok=True)
    trt_opts = {
        "device_id": device_id,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
    }
    if stream is not None:
        trt_opts |= {"has_user_compute_stream": "1", "user_compute_stream": str(stream)}
    return [("TensorrtExecutionProvider", trt_opts), ("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]


def check_providers(asked: list[str | tuple[str, dict[str, Any]]], used: list[str], name: str) -> None:
    """ORT falls back to a later provider with only a warning (an option an older build does not
    know, a missing CUDA library): refuse a session whose first provider is not the one asked for."""
    want = asked[0] if isinstance(asked[0], str) else asked[0][0]
    if not used or used[0] != want:
        raise UserError(
            f"onnxruntime opened {name} with {', '.join(used) or 'no provider'} instead of {want}: "
            "check the onnxruntime-gpu install (CUDA/cuDNN/TensorRT libraries), or pass --providers cpu"
        )


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
        session = ort.InferenceSession(str(path), sess_options=session_options(threads), providers=providers)
    except Exception as e:  # ORT raises its own exception types for bad graphs and missing EPs
        raise UserError(f"onnxruntime cannot open {path.name}: {str(e).splitlines()[0][:300]}") from None
    check_providers(providers, session.get_providers(), path.name)
    return session


_NP = {torch.float32: np.float32, torch.float16: np.float16, torch.int32: np.int32, torch.int64: np.int64}


@dataclass(frozen=True)
class Graph:
    """An open session with what every run needs of it, read once."""

    session: Any
    inputs: frozenset[str]  # the inputs the exporter kept (a graph without guidance may not read memory)
    outputs: tuple[Any, ...]  # output metadata: names and static shapes

    @classmethod
    def open(cls, path: Path, providers: list, threads: int | None) -> Graph:
        session = open_session(path, providers, threads)
        return cls(session, frozenset(i.name for i in session.get_inputs()), tuple(session.get_outputs()))


class OrtEngine(ExportedEngine):
    """On CUDA, inputs and outputs stay in GPU memory (IO binding) and ORT computes on torch's
    current stream of the device at load time; on CPU, tensors are shared with numpy (no copy)."""

    backend = "onnxruntime"

    def __init__(self, engine_dir: str | Path, manifest: dict[str, Any], options: LoadOptions = LoadOptions()):
        device = torch.device(options.device)
        if device.type == "cuda" and options.providers == "cpu":
            raise UserError("--providers cpu cannot run an engine on --device cuda; use --providers cuda or tensorrt")
        if device.type == "cpu" and options.providers in ("cuda", "tensorrt"):
            raise UserError(f"--providers {options.providers} needs --device cuda (inputs and outputs live there)")
        super().__init__(manifest, device)
        folder = Path(engine_dir)
        # ORT computes on torch's current stream of the device at load time (user_compute_stream),
        # so its kernels queue behind torch's copies of the inputs; see _run_bound for other streams.
        self.stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        choice = options.providers if device.type == "cuda" else "cpu"
        plist = provider_list(
            choice,
            folder / "ort_trt_cache",
            device_id=device.index or 0,
            stream=self.stream.cuda_stream if self.stream is not None else None,
        )
        graphs = manifest["graphs"]
        self.graph = Graph.open(folder / graphs["step"], plist, options.threads)
        self.plain_graph = Graph.open(folder / graphs["plain"], plist, options.threads) if "plain" in graphs else None
        dec = graphs.get("decoder")
        self.decoder = Graph.open(folder / dec, plist, options.threads) if dec else None
        self.has_decoder = self.decoder is not None
        self.on_cuda = self.graph.session.get_providers()[0] != "CPUExecutionProvider"
        if device.type != "cuda" and self.on_cuda:
            raise UserError("an onnxruntime engine on a GPU provider needs --device cuda")

    def _run(self, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return self._run_graph(self.graph, dict(zip(STEP_INPUTS, args, strict=True)))

    def _run_plain(self, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        assert self.plain_graph is not None  # plain_steps is empty without it
        return self._run_graph(self.plain_graph, dict(zip(PLAIN_INPUTS, args, strict=True)))

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        assert self.decoder is not None
        return self._run_graph(self.decoder, {"latents": z.detach().float().contiguous()})[0]

    def _run_graph(self, graph: Graph, named: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if self.on_cuda:
            return self._run_bound(graph, named)
        outs = graph.session.run(None, {k: v.numpy() for k, v in named.items() if k in graph.inputs})
        return tuple(torch.from_numpy(o) for o in outs)

    def _run_bound(self, graph: Graph, args: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """IO binding: ORT reads and writes our CUDA tensors in place (no host round trip per step)."""
        dev = self.device
        if torch.cuda.current_stream(dev) != self.stream:
            # ORT computes on the stream it was opened with; make it wait for work queued elsewhere.
            torch.cuda.current_stream(dev).synchronize()
        binding = graph.session.io_binding()
        for name, t in args.items():
            if name in graph.inputs:
                binding.bind_input(name, "cuda", dev.index or 0, _NP[t.dtype], list(t.shape), t.data_ptr())
        outs = []
        for meta in graph.outputs:
            t = torch.empty(meta.shape, dtype=torch.float32, device=dev)
            binding.bind_output(meta.name, "cuda", dev.index or 0, np.float32, list(t.shape), t.data_ptr())
            outs.append(t)
        graph.session.run_with_iobinding(binding)
        return tuple(outs)


def write_onnx(inputs: ExportInputs) -> dict[str, Any]:
    """The fused step graph, the plain graph where the step has plain indices, and, for latent models,
    the decoder graph."""
    ox.export_step(inputs.step, inputs.args, inputs.folder / "step.onnx", inputs.opset)
    graphs: dict[str, Any] = {"step": "step.onnx"}
    if inputs.step.plain_steps:
        graphs["plain"] = ox.export_plain(inputs.step, inputs.args, inputs.folder / "plain.onnx", inputs.opset).name
    if inputs.latents is not None:
        graphs["decoder"] = ox.export_decoder(
            inputs.codec, inputs.latents, inputs.folder / "decoder.onnx", inputs.opset
        ).name
    return graphs


def _unavailable() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed"
    return None


def _export_device() -> str:
    """CUDA when a GPU is visible and this onnxruntime has the CUDA EP (--verify runs the engine
    where it was built), else the CPU."""
    if not torch.cuda.is_available() or _unavailable():
        return "cpu"
    return "cuda" if PROVIDERS["cuda"] in available_providers() else "cpu"


def _describe() -> str:
    return "providers: " + ", ".join(p.removesuffix("ExecutionProvider") for p in available_providers())


BACKEND = Backend(
    name="onnxruntime",
    summary="one fused ONNX graph in ONNX Runtime (CPU, CUDA or TensorRT execution provider)",
    precisions=("fp32", "fp16"),  # ORT has no bf16 kernels for this graph's convolutions
    unavailable=_unavailable,
    describe=_describe,
    write=write_onnx,
    load=lambda folder, manifest, options: OrtEngine(folder, manifest, options),
    onnx=True,
    export_device=_export_device,
)
