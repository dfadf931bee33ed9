"""Native TensorRT (10.x Python API): build a plan from the exported ONNX, run it with execute_async_v3.

Precision: fp32 builds with TF32 off (parity with the eager step); fp16/bf16 take a graph already
typed by the exporter (denoiser in fp16/bf16, timestep embedding and critic gradient in fp32) and
build it as a STRONGLY_TYPED network, so TensorRT keeps those types instead of choosing its own;
fp8 needs Q/DQ nodes (from a quantizer such as NVIDIA ModelOpt), which this exporter does not write.
``tensorrt`` is imported only here, inside functions: the package stays importable without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import PRECISIONS
from ..errors import UserError
from .backend import Backend, ExportInputs, LoadOptions
from .io import PLAIN_INPUTS, STEP_INPUTS, STEP_OUTPUTS, ExportedEngine
from .onnxruntime import write_onnx


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise UserError("the tensorrt backend needs TensorRT 10+: pip install 'igds-fast[tensorrt]'") from None
    if int(trt.__version__.split(".")[0]) < 10:
        raise UserError(f"TensorRT {trt.__version__} is too old: this backend uses the TensorRT 10 API")
    if not torch.cuda.is_available():
        raise UserError("the tensorrt backend needs a CUDA GPU, and none is visible")
    return trt


def unavailable_reason() -> str | None:
    """Why TensorRT cannot run here (None when it can)."""
    try:
        import_tensorrt()
    except UserError as e:
        return str(e)
    return None


def _logger(trt: Any) -> Any:
    return trt.Logger(trt.Logger.WARNING)


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    precision: str = "fp32",
    timing_cache: Path | None = None,
    workspace_gib: float = 8.0,
    opt_level: int = 3,
) -> Path:
    """Parse the ONNX graph, build and serialize an engine; reuse and update the timing cache."""
    trt = import_tensorrt()
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}': use {', '.join(PRECISIONS)}")
    logger = _logger(trt)
    builder = trt.Builder(logger)
    typed = precision != "fp32"  # typed graphs keep their fp32 islands only in strongly typed mode
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external weights next to the file too
        errors = "; ".join(str(parser.get_error(k)) for k in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path.name}: {errors[:500]}")
    if precision == "fp8" and not _has_fp8_qdq(network, trt):
        raise UserError(
            "fp8 needs an ONNX graph with FP8 Q/DQ nodes (NVIDIA ModelOpt); this exporter writes none. "
            "Use --precision fp16 or bf16"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.builder_optimization_level = opt_level
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    _require_static(network)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"TensorRT could not build an engine from {onnx_path.name} (see the log above)")
    plan_path.write_bytes(bytes(plan))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return plan_path


def _require_static(network: Any) -> None:
    """Engines are static per (batch, memory) so they need no optimization profile; a dynamic dim
    means the graph was not exported by this project."""
    inputs = [network.get_input(k) for k in range(network.num_inputs)]
    dynamic = [t for t in inputs if any(d < 0 for d in t.shape)]
    if not dynamic:
        return
    raise UserError(
        f"input '{dynamic[0].name}' has a dynamic shape {tuple(dynamic[0].shape)}; export with static shapes"
    )


def _has_fp8_qdq(network: Any, trt: Any) -> bool:
    for k in range(network.num_layers):
        layer = network.get_layer(k)
        if layer.type in (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE):
            return True
    return False


def _torch_dtype(trt: Any, dt: Any) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.int8: torch.int8,
        trt.bool: torch.bool,
    }
    return table[dt]


class TrtRunner:
    """One deserialized plan with its IO buffers allocated once and reused; optional CUDA graph."""

    def __init__(self, plan_path: Path, device: torch.device, cuda_graph: bool = False):
        trt = import_tensorrt()
        self.device = device
        self.runtime = trt.Runtime(_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise UserError(
                f"{plan_path.name} does not deserialize: built by another TensorRT version or GPU? rebuild it"
            )
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=device)
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        for k in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(k)
            shape = tuple(self.engine.get_tensor_shape(name))
            buf = torch.empty(shape, dtype=_torch_dtype(trt, self.engine.get_tensor_dtype(name)), device=device)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs)[name] = buf
            self.context.set_tensor_address(name, buf.data_ptr())
        self.graph: torch.cuda.CUDAGraph | None = None
        self.use_graph = cuda_graph
        self.capture_error: str | None = None

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def _capture(self) -> None:
        """Capture one execution as a CUDA graph; on failure keep running without one (the graph
        is kept only once capture succeeded, so a failed capture never replays an empty graph)."""
        self._enqueue()  # TensorRT must run once before capture
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                self._enqueue()
        except Exception as e:  # capture is an optimisation: plain execution stays correct
            self.use_graph = False
            self.capture_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            return
        self.graph = graph

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        with torch.cuda.stream(self.stream):
            for name, buf in self.inputs.items():  # an unused graph input may have been dropped
                buf.copy_(feeds[name], non_blocking=True)
            if self.use_graph and self.graph is None:
                self._capture()
            if self.graph is not None:
                self.graph.replay()
            else:
                self._enqueue()
            outs = {k: v.clone() for k, v in self.outputs.items()}
        caller.wait_stream(self.stream)
        for t in outs.values():  # made on our stream, used on the caller's: keep the allocator honest
            t.record_stream(caller)
        return outs


class TrtEngine(ExportedEngine):
    backend = "tensorrt"

    def __init__(self, engine_dir: str | Path, manifest: dict[str, Any], options: LoadOptions = LoadOptions()):
        dev = torch.device(options.device if options.device != "cpu" else "cuda")
        super().__init__(manifest, dev)
        folder = Path(engine_dir)
        graphs = manifest["graphs"]
        self.runner = TrtRunner(folder / graphs["step"], dev, options.cuda_graph)
        self.plain_runner = TrtRunner(folder / graphs["plain"], dev, options.cuda_graph) if "plain" in graphs else None
        dec = graphs.get("decoder")
        self.decoder = TrtRunner(folder / dec, dev, options.cuda_graph) if dec else None
        self.has_decoder = self.decoder is not None

    def _run(self, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        outs = self.runner(dict(zip(STEP_INPUTS, args, strict=True)))
        return tuple(outs[name] for name in STEP_OUTPUTS)

    def _run_plain(self, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        assert self.plain_runner is not None  # plain_steps is empty without it
        outs = self.plain_runner(dict(zip(PLAIN_INPUTS, args, strict=True)))
        return tuple(outs[name] for name in STEP_OUTPUTS)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder({"latents": z.float()})["images"]


def write_plans(inputs: ExportInputs) -> dict[str, Any]:
    """The ONNX graphs (kept, for other runtimes), then a TensorRT plan of each."""
    import_tensorrt()  # fail before minutes of export
    onnx = write_onnx(inputs)
    folder, cache = inputs.folder, inputs.folder / "timing.cache"
    graphs: dict[str, Any] = {"onnx": {part: onnx.get(part) for part in ("step", "plain", "decoder")}}
    for part, name in onnx.items():
        plan = folder / (Path(name).stem + ".plan")
        graphs[part] = build_plan(folder / name, plan, inputs.precision, cache).name
    return graphs


BACKEND = Backend(
    name="tensorrt",
    summary="native TensorRT 10 plans of the exported graphs, strongly typed fp16/bf16, CUDA graphs",
    precisions=("fp32", "fp16", "bf16", "fp8"),
    unavailable=unavailable_reason,
    describe=lambda: "native TensorRT plans, CUDA graphs",
    write=write_plans,
    load=lambda folder, manifest, options: TrtEngine(folder, manifest, options),
    onnx=True,
    export_device=lambda: "cuda",  # TensorRT builds and runs on the GPU only
)
