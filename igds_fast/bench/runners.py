"""What the bench runs per row: an engine (every backend through the same code users run: the
eager pipeline, or ``export_engine`` + ``load_engine``) and, for eager, the step's parts timed
separately (``GuidedStep.eps``, ``.guidance_grad``, ``.update``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..backends.backend import LoadOptions
from ..backends.build import ExportSpec, export_engine, step_shapes
from ..backends.compiled import CompiledEngine, build_unavailable
from ..backends.eager import EagerEngine
from ..backends.io import random_inputs
from ..backends.onnxruntime import PROVIDERS, available_providers
from ..backends.registry import BACKENDS, load_engine
from ..config import StepConfig, step_config
from ..guidance.step import GuidedStep, step_index
from ..sampling.engine import StepEngine
from ..sampling.pipeline import Pipeline
from .config import BenchConfig, split_row
from .models import CRITIC_CLASSES, BenchModels, pipeline_of

Stages = dict[str, tuple[Callable[..., Any], Callable[[int], tuple]]]


class Skipped(Exception):
    """A variant that cannot run here (not a failure): the message says why."""


@dataclass
class Runner:
    engine: StepEngine
    precision: str
    notes: list[str] = field(default_factory=list)
    stages: Stages | None = None


class BenchContext:
    """What every row shares: models and their files, the step config, eager pipelines per dtype,
    and fresh random step inputs."""

    def __init__(self, cfg: BenchConfig, models: BenchModels, tmp: Path):
        self.cfg, self.models, self.tmp = cfg, models, tmp
        self.device = torch.device(cfg.device)
        # beta > 0 so that the entropy term's gradient is part of what is timed
        options = {"steps": str(cfg.steps), "guidance": cfg.guidance, "beta": 0.5, "clip_guard": cfg.clip_guard}
        self.step_cfg: StepConfig = step_config(options)
        self._pipes: dict[str, Pipeline] = {}
        self.labels = list(models.critic.config.class_ids) if models.critic is not None else CRITIC_CLASSES
        self.shapes = step_shapes(self.pipeline("fp32").step, cfg.batch_size, cfg.memory_size)

    def pipeline(self, dtype: str) -> Pipeline:
        """The eager pipeline in ``dtype`` (from the in-memory models), its denoiser's attention as
        ``--attention`` says."""
        if dtype not in self._pipes:
            pipe = pipeline_of(self.models, self.step_cfg, self.device, dtype)
            if hasattr(pipe.step.denoiser, "set_attention"):
                pipe.step.denoiser.set_attention(self.cfg.attention)
            self._pipes[dtype] = pipe
        return self._pipes[dtype]

    def release_pipelines(self, keep: set[str]) -> None:
        """Drop the eager pipelines of precisions no later row uses (fp32, the parity reference, is
        kept by the caller's ``keep``): their copies of the weights leave the device."""
        for dtype in [d for d in self._pipes if d not in keep]:
            del self._pipes[dtype]

    def inputs(self, seed: int, i: int | None = None) -> tuple[torch.Tensor, ...]:
        args = random_inputs(self.shapes, self.cfg.steps, self.labels, seed=self.cfg.seed * 7919 + seed, i=i)
        return tuple(a.to(self.device) for a in args)


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for fp32 matmuls and cuDNN convolutions, both set explicitly (torch's defaults differ:
    matmuls off, cuDNN on). On: the reference workflow as PyTorch users run fp32 on Ampere+
    (MinimaxDiffusion's sample.py sets it). Off: the fp32 reference every row's error is measured against."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def step_label(step: GuidedStep) -> str:
    """What a row's step runs, in one line: schedule, where guidance acts (how many of the steps), the
    clip guard, classifier-free guidance; e.g. "50 steps (ddpm), guided at t <= 300 (15 of 50 steps),
    clip guard 0.5, CFG 4 on 3 channels"."""
    cfg, n = step.cfg, len(step.schedule)
    if step.critic is None:
        guided = "no guidance (denoiser only)"
    else:
        k = int((step.guide_on > 0).sum())
        where = f"t <= {cfg.window_hi}" if cfg.window_lo == 0 else f"{cfg.window_lo} <= t <= {cfg.window_hi}"
        if cfg.window_lo == 0 and cfg.window_hi >= 999:
            where = "every t"
        guided = f"guided at {where} ({k} of {n} steps), clip guard {cfg.clip_guard:g}"
    channels = "all" if cfg.cfg_channels is None else cfg.cfg_channels
    return f"{n} steps ({cfg.sampler}), {guided}, CFG {cfg.cfg_scale:g} on {channels} channels"


def unavailable_on(name: str, device: torch.device | str) -> str | None:
    """Why the exported backend ``name`` cannot be built and run on ``device`` here, or None: its
    row's own reason (a missing package or compiler), then what the device adds: ONNX Runtime's CUDA
    provider, AOTInductor's CUDA toolkit. Asked before any export work."""
    reason = BACKENDS[name].unavailable()
    if reason:
        return reason
    if name == "compiled":
        return build_unavailable(device)
    if name == "onnxruntime" and torch.device(device).type == "cuda":
        have = available_providers()
        if PROVIDERS["cuda"] not in have:
            return (
                f"onnxruntime here has no {PROVIDERS['cuda']} (it has {', '.join(have)}: a CPU-only build); "
                "--device cuda needs the CUDA build in its place "
                "(pip uninstall -y onnxruntime && pip install onnxruntime-gpu)"
            )
    return None


class ReferenceEngine(EagerEngine):
    """The reference workflow as it is run: one image at a time, fp32 with TF32 matmuls, decode
    per image; the same GuidedStep, so the definition is the one every engine is checked against."""

    backend = "eager-ref"
    plain_steps: frozenset[int] = frozenset()  # the reference workflow runs the full step at every index

    def step(
        self,
        x: torch.Tensor,
        i: torch.Tensor | int,
        y: torch.Tensor,
        noise: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        with tf32(True):
            outs = [
                super(ReferenceEngine, self).step(
                    x[b : b + 1],
                    i,
                    y[b : b + 1],
                    noise[b : b + 1],
                    memory,
                    None if memory_mask is None else memory_mask[b : b + 1],
                )
                for b in range(x.shape[0])
            ]
        return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))

    __call__ = step

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        with tf32(True):
            return torch.cat([super(ReferenceEngine, self).decode(x[b : b + 1]) for b in range(x.shape[0])])


def stage_fns(ctx: BenchContext, step: GuidedStep) -> Stages:
    """The GuidedStep's parts as separately timed calls: the very methods ``forward`` composes."""

    def denoiser_cfg(x: Tensor, i: Tensor, y: Tensor, *_: Tensor) -> tuple[Tensor, Tensor | None]:
        with torch.no_grad():
            return step.eps(x.float(), step_index(i), y.long())

    def critic_grad(x: Tensor, i: Tensor, y: Tensor, noise: Tensor, memory: Tensor, mask: Tensor) -> tuple:
        return step.guidance_grad(x.float(), step_index(i), y.long(), noise, memory, mask)  # noise stands in for eps

    def update(x: Tensor, i: Tensor, eps: Tensor, var: Tensor, noise: Tensor) -> Tensor:
        with torch.no_grad():
            return step.update(x, eps, var, step_index(i), noise)

    def update_args(k: int) -> tuple:
        x, i, _, noise, _, _ = ctx.inputs(k)
        return x, i, torch.randn_like(x), torch.rand_like(x) * 2 - 1, noise

    out: Stages = {"denoiser_cfg": (denoiser_cfg, ctx.inputs), "update": (update, update_args)}
    if step.critic is not None:
        out["critic_grad"] = (critic_grad, ctx.inputs)
    return out


def eager_ref(ctx: BenchContext) -> Runner:
    pipe = ctx.pipeline("fp32")
    engine = ReferenceEngine(pipe.step, pipe.vae, memory_size=ctx.cfg.memory_size)
    notes = ["batch 1 loop over the batch, fp32 with TF32 matmuls, decode per image"]
    return Runner(engine, "fp32", notes + [f"denoiser attention: {ctx.cfg.attention}"])


def eager(ctx: BenchContext, dtype: str) -> Runner:
    pipe = ctx.pipeline(dtype)
    engine = EagerEngine(pipe.step, pipe.vae, memory_size=ctx.cfg.memory_size)
    return Runner(engine, dtype, [f"denoiser attention: {ctx.cfg.attention}"], stages=stage_fns(ctx, pipe.step))


def torch_compile(ctx: BenchContext, mode: str | None, dtype: str) -> Runner:
    """torch.compile of the traced step (fused denoiser attention, as AOTInductor); compiles on first call."""
    if mode == "reduce-overhead" and ctx.device.type != "cuda":
        raise Skipped("CUDA graphs (mode reduce-overhead) need --device cuda")
    pipe = ctx.pipeline(dtype)
    engine = CompiledEngine.jit(pipe.step, ctx.shapes, ctx.inputs(0), mode)
    eager_codec = EagerEngine(pipe.step, pipe.vae)
    engine.decode = eager_codec.decode  # the fused step only; decode stays eager
    notes = [
        f"torch.compile mode={mode or 'default'} of the make_fx graph; fused step only",
        "denoiser attention: fused sdpa",
        "decode: eager codec",
    ]
    return Runner(engine, dtype, notes)


def exported(ctx: BenchContext, name: str, precision: str | None = None) -> Runner:
    """Built by ``export_engine`` and opened by ``load_engine``: exactly what a user runs."""
    row = BACKENDS[name]
    reason = unavailable_on(name, ctx.device)
    if reason:
        raise Skipped(reason)
    precision = precision or ctx.cfg.dtype
    if precision not in row.precisions:
        raise Skipped(f"{name} does not build {precision} (it builds {', '.join(row.precisions)})")
    p = ctx.models.paths
    spec = ExportSpec(
        denoiser=Path(p["denoiser"]),
        vae=p["vae"],
        critics=Path(p["critics"]) if p["critics"] else None,
        cfg=ctx.step_cfg,
        batch_size=ctx.cfg.batch_size,
        memory_size=ctx.cfg.memory_size,
        precision=precision,
        backend=name,
        out=ctx.tmp / "engine",
        device=ctx.cfg.device,
    )
    export_engine(spec)
    engine = load_engine(spec.out, options=LoadOptions(device=ctx.cfg.device, threads=ctx.cfg.threads))
    notes = ["fused step only (one graph): no per-stage split", "built by export_engine, opened by load_engine"]
    notes.append("denoiser attention: " + ("spelled out (ONNX graph)" if row.onnx else "fused sdpa"))
    if name == "onnxruntime":
        notes.append("providers: " + ", ".join(engine.graph.session.get_providers()))
    return Runner(engine, precision, notes)


def make_runner(ctx: BenchContext, name: str) -> Runner:
    """The row ``name`` ('eager', 'onnxruntime@fp16', ...) in its precision (``BenchConfig.row_dtype``)."""
    variant, dtype = split_row(name)[0], ctx.cfg.row_dtype(name)
    if variant == "eager-ref":
        return eager_ref(ctx)
    if variant == "eager":
        return eager(ctx, dtype)
    if variant == "torch-compile":
        return torch_compile(ctx, None, dtype)
    if variant == "torch-compile-cg":
        return torch_compile(ctx, "reduce-overhead", dtype)
    return exported(ctx, variant, dtype)
