"""``igds-fast bench``: guided-step and end-to-end throughput of every backend, in one run.

For each backend: ms per guided step (median over repeats, device-synchronized, fresh random
inputs each repeat), img/s of a full N-step chain with decode and PNG encoding (as a distill run
does it), a per-stage split (eager only: exported engines run the step as one fused graph), peak
memory, FLOPs per step (counted from the configs, see ``dit_forward_flops``), achieved FLOP/s
against a peak measured in the same run, the error against the eager fp32 step, and ratios vs
``eager`` and ``eager-ref``. A backend that fails is recorded with its error; the run goes on.

Weights are random unless the shipped embedded model is present: timing does not depend on them.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import UserError
from .guidance.step import GuidedStep, StepConfig
from .models.critics import CriticConfig, NoiseCritic
from .models.dit import DiT, DiTConfig
from .models.vae import decode_images

SCHEMA = "igds-fast/bench-v1"
MODELS = ("embedded", "dit-s2", "dit-b2", "dit-xl2", "tiny")
ARCHS = {"dit-s2": "DiT-S/2", "dit-b2": "DiT-B/2", "dit-xl2": "DiT-XL/2"}
BACKENDS = ("eager-ref", "eager", "compiled", "compiled-cg", "aoti", "onnxruntime", "tensorrt")
DEFAULT_BACKENDS = ("eager-ref", "eager", "compiled", "onnxruntime", "tensorrt")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CRITIC_CLASSES = list(range(10))  # a 10-class subset (Imagenette/ImageWoof size); the head is tiny
StepFn = Callable[..., tuple[torch.Tensor, ...]]


@dataclass
class BenchConfig:
    model: str = "embedded"
    random_weights: bool = False
    resolution: int | None = None  # None: 32 for pixel models, 256 for latent DiTs
    batch_size: int = 8
    steps: int = 50
    backends: list[str] = field(default_factory=lambda: list(DEFAULT_BACKENDS))
    e2e_backends: list[str] | None = None  # None: every backend runs the full chain
    guidance: str = "igds"
    warmup: int = 2
    repeats: int = 5
    device: str = "cpu"
    dtype: str = "fp32"
    memory_size: int = 32
    compile_mode: str = "default"  # torch.compile mode of ``compiled``
    parity_inputs: int = 1
    peak_tflops: float | None = None  # None: measure a matmul in this dtype on this device
    threads: int | None = None  # torch and ORT intra-op threads (None: library defaults)
    png_workers: int = 2
    seed: int = 0

    def validate(self) -> BenchConfig:
        if self.model not in MODELS:
            raise UserError(f"unknown --model '{self.model}': use {', '.join(MODELS[:4])}")
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            raise UserError(f"unknown backend '{(unknown or [''])[0]}': use {', '.join(BACKENDS)}")
        if self.dtype not in DTYPES:
            raise UserError(f"unknown --dtype '{self.dtype}': use fp32, bf16 or fp16")
        if self.guidance not in ("igds", "off"):
            raise UserError(f"unknown --guidance '{self.guidance}': use igds or off")
        if min(self.batch_size, self.steps, self.repeats, self.memory_size) < 1 or self.warmup < 0:
            raise UserError("--batch-size, --steps, --repeats, --memory-size must be >= 1, --warmup >= 0")
        pixel = self.model in ("embedded", "tiny")
        if self.resolution is None:
            self.resolution = {"embedded": 32, "tiny": 16}.get(self.model, 256)
        if pixel and self.resolution != {"embedded": 32, "tiny": 16}[self.model]:
            raise UserError(f"--model {self.model} is a pixel model of fixed size; leave --resolution out")
        if not pixel and (self.resolution % 16 or self.resolution < 32):
            raise UserError(f"--resolution must be a multiple of 16 (latent R/8, patch 2), got {self.resolution}")
        return self

    @property
    def e2e(self) -> list[str]:
        return list(self.backends if self.e2e_backends is None else self.e2e_backends)


# ---- models ---------------------------------------------------------------------------------


@dataclass
class BenchModels:
    denoiser: nn.Module  # fp32; each backend casts its own copy
    critic: NoiseCritic | None
    codec: nn.Module  # PixelSpace or LatentVAE; what exporters see
    decode_note: str | None  # set when decoding is simulated (no diffusers)
    info: dict[str, Any]


def _perturb(module: nn.Module, names: tuple[str, ...], seed: int) -> None:
    """Give zero-initialised layers (adaLN, output) small random weights, so outputs depend on the
    inputs and parity errors mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(n in name for n in names):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def random_dit(cfg: DiTConfig, seed: int) -> DiT:
    dit = DiT(cfg).initialize(seed)
    _perturb(dit, ("adaLN_modulation", "final_layer"), seed + 1)
    return dit


def random_critic(cfg: CriticConfig, seed: int) -> NoiseCritic:
    torch.manual_seed(seed)
    critic = NoiseCritic(cfg)
    _perturb(critic, (".ada.",), seed + 1)
    return critic


def random_vae(seed: int) -> nn.Module | None:
    """sd-vae-ft-mse's architecture with random weights, or None without diffusers."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        return None
    from .models.vae import LatentVAE

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=256,
        scaling_factor=0.18215,
    )
    return LatentVAE(vae.eval()).eval()


def _shipped_embedded() -> tuple[nn.Module, NoiseCritic] | None:
    from .models.critics import load_critic
    from .models.embedded import CRITIC_FILE, DENOISER_FILE, embedded_path
    from .models.loading import load_denoiser

    try:
        return load_denoiser(embedded_path(DENOISER_FILE)), load_critic(embedded_path(CRITIC_FILE))
    except UserError:
        return None


def build_models(cfg: BenchConfig) -> BenchModels:
    from .models.vae import PixelSpace

    info: dict[str, Any] = {"model": cfg.model}
    if cfg.model in ("embedded", "tiny"):
        shipped = _shipped_embedded() if cfg.model == "embedded" and not cfg.random_weights else None
        if shipped is not None:
            den, critic = shipped
            info["weights"] = "shipped embedded model"
        else:
            tiny = cfg.model == "tiny"
            den = random_dit(
                DiTConfig(
                    input_size=16 if tiny else 32,
                    patch_size=4,
                    in_channels=3,
                    hidden_size=64 if tiny else 256,
                    depth=2 if tiny else 8,
                    num_heads=2 if tiny else 4,
                    num_classes=10,
                ),
                cfg.seed,
            )
            critic = random_critic(
                CriticConfig(
                    in_channels=3,
                    input_size=16 if tiny else 32,
                    patch_size=4,
                    width=64 if tiny else 128,
                    depth=1 if tiny else 3,
                    heads=2 if tiny else 4,
                    class_ids=CRITIC_CLASSES,
                ),
                cfg.seed + 7,
            )
            info["weights"] = (
                "random (test-size model)"
                if tiny
                else "random: stand-in of the embedded model's config (the embedded model is not built here "
                "or --random-weights was given)"
            )
        codec, decode_note = PixelSpace(), None
    else:
        latent = cfg.resolution // 8
        den = random_dit(
            DiTConfig.from_arch(ARCHS[cfg.model], input_size=latent, in_channels=4, num_classes=1000),
            cfg.seed,
        )
        critic = random_critic(
            CriticConfig(
                in_channels=4,
                input_size=latent,
                patch_size=2,
                width=256,
                depth=4,
                heads=4,
                class_ids=CRITIC_CLASSES,
            ),
            cfg.seed + 7,
        )
        info["weights"] = "random (timing does not depend on weights)"
        vae = random_vae(cfg.seed + 11)
        codec = vae if vae is not None else PixelSpace()
        decode_note = None if vae is not None else "diffusers is not installed: decode simulated (zeros)"
        info["vae"] = (
            "diffusers AutoencoderKL, sd-vae-ft-mse config, random weights" if vae is not None else decode_note
        )
    den = den.float().eval().requires_grad_(False)
    critic = critic.float().eval().requires_grad_(False) if cfg.guidance == "igds" else None
    info["denoiser_config"] = den.config.to_dict() if hasattr(den.config, "to_dict") else str(den.config)
    info["denoiser_params"] = sum(p.numel() for p in den.parameters())
    if critic is not None:
        info["critic_config"] = asdict(critic.config)
        info["critic_params"] = sum(p.numel() for p in critic.parameters())
    return BenchModels(den, critic, codec, decode_note, info)


# ---- FLOPs ----------------------------------------------------------------------------------


def dit_forward_flops(c: DiTConfig) -> int:
    """FLOPs (2 per multiply-add) of one DiT forward for one image: every linear layer, the two
    attention matmuls and the scaling of the attention scores; norms, activations, softmax and
    the label lookup are left out (< 0.5%).

    N = (input/patch)^2 tokens, hidden d, MLP width m = 4d, depth L, h heads:
        MACs = L (N (4d^2 + 2dm) + 2 N^2 d + h N^2 + 6d^2)   qkv, proj, MLP, QK^T, AV, score scale, adaLN
             + N C p^2 d + N d p^2 C_out + 2d^2               patchify, final linear and adaLN
             + 256 d + d^2                                    timestep MLP
    DiT-XL/2 at 256 px (N = 256, d = 1152, L = 28, h = 16): 118.65 GMAC = 237.3 GFLOP (the DiT
    paper's "119 Gflops"); without the score scaling it would be 237.24.
    """
    n = (c.input_size // c.patch_size) ** 2
    d, m = c.hidden_size, int(c.hidden_size * c.mlp_ratio)
    block = n * (4 * d * d + 2 * d * m) + 2 * n * n * d + c.num_heads * n * n + 6 * d * d
    head = n * c.in_channels * c.patch_size**2 * d + n * d * c.patch_size**2 * c.out_channels + 2 * d * d
    return 2 * (c.depth * block + head + c.freq_dim * d + d * d)


def counted_flops(fn: Callable[[], Any]) -> int:
    """FLOPs torch's own counter sees in ``fn`` (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def decoder_flops(codec: nn.Module, shape: tuple[int, int, int]) -> int:
    """Per-image decode FLOPs, counted on the meta device (no real compute)."""
    if not any(True for _ in codec.parameters()):
        return 0
    meta = copy.deepcopy(codec).to("meta")
    z = torch.zeros(1, *shape, device="meta")
    try:
        return counted_flops(lambda: meta.decode(z))
    except Exception:  # some diffusers ops refuse meta tensors: count for real on one image
        return counted_flops(lambda: codec.decode(torch.zeros(1, *shape)))


def step_flops(models: BenchModels, cfg: BenchConfig, step_cfg: StepConfig) -> dict[str, Any]:
    den, critic = models.denoiser, models.critic
    if isinstance(den, DiT):
        fwd, how = dit_forward_flops(den.config), "formula (dit_forward_flops)"
    else:
        x = torch.zeros(1, den.in_channels, den.input_size, den.input_size)
        fwd, how = counted_flops(lambda: den(x, torch.zeros(1), torch.zeros(1, dtype=torch.long))), "counted"
    passes = 1 if step_cfg.cfg_scale == 1.0 else 2
    crit = critic.flops_per_image() if critic is not None else 0
    b = cfg.batch_size
    out = {
        "denoiser_forward_per_image": fwd,
        "denoiser_method": how,
        "denoiser_cfg_per_image": passes * fwd,
        "critic_forward_per_image": crit,
        # forward + input-gradient ~ 3 forwards (the backward of a matmul costs two)
        "critic_grad_per_image": 3 * crit,
        "per_step": b * (passes * fwd + 3 * crit),
        "critic_vs_denoiser_cfg": 3 * crit / (passes * fwd),
    }
    if critic is not None and den.in_channels == 4:
        xl = dit_forward_flops(DiTConfig.from_arch("DiT-XL/2", input_size=den.input_size, in_channels=4))
        out["critic_vs_dit_xl2_cfg"] = 3 * crit / (2 * xl)
    return out


def measure_peak(device: torch.device, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """FLOP/s of a large square matmul in ``dtype`` on ``device``: the practical ceiling here."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or reps < 3:
        a @ b
        reps += 1
        if device.type == "cuda" and reps % 10 == 0:
            _sync(device)
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


# ---- timing ---------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_median(
    fn: Callable[..., Any], make_args: Callable[[int], tuple], device: torch.device, warmup: int, repeats: int
) -> list[float]:
    """Seconds per call, ``repeats`` times, each on fresh inputs made before the timer starts."""
    for k in range(warmup):
        fn(*make_args(k))
    times = []
    for k in range(repeats):
        args = make_args(warmup + k)
        _sync(device)
        t0 = time.perf_counter()
        fn(*args)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


@contextlib.contextmanager
def peak_memory(device: torch.device, into: dict[str, Any]) -> Iterator[None]:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield
    finally:
        if device.type == "cuda":
            into["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(device))
            into["peak_mem_kind"] = "torch.cuda.max_memory_allocated during this backend"
        else:
            import resource

            into["peak_mem_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
            into["peak_mem_kind"] = "process RSS high-water mark so far (cumulative over backends)"


# ---- backends -------------------------------------------------------------------------------


@dataclass
class Runner:
    step: StepFn  # (x, i, y, noise, memory, mask) -> (x_prev, feats, log_q, h2)
    decode: Callable[[torch.Tensor], torch.Tensor]
    precision: str
    notes: list[str] = field(default_factory=list)
    stages: dict[str, tuple[Callable[..., Any], Callable[[int], tuple]]] | None = None


class Skipped(Exception):
    """A backend that cannot run here (not a failure): the message says why."""


class BenchContext:
    """Everything the backends share: models, shapes, fp32/dtype steps, input factories."""

    def __init__(self, cfg: BenchConfig, models: BenchModels, tmp: Path):
        from .backends.io import StepShapes

        self.cfg, self.models, self.tmp = cfg, models, tmp
        self.device = torch.device(cfg.device)
        self.step_cfg = StepConfig(steps=str(cfg.steps), guidance=cfg.guidance, beta=0.5)
        self._steps: dict[str, GuidedStep] = {}
        d = models.denoiser
        feat = models.critic.config.feat_dim if models.critic is not None else 1
        self.shapes = StepShapes(
            cfg.batch_size, int(d.in_channels), int(d.input_size), int(d.input_size), cfg.memory_size, feat
        )
        self.labels = list(models.critic.config.class_ids) if models.critic is not None else CRITIC_CLASSES

    def step(self, dtype: str) -> GuidedStep:
        if dtype not in self._steps:
            den = copy.deepcopy(self.models.denoiser).to(DTYPES[dtype])
            self._steps[dtype] = GuidedStep(den, self.step_cfg, self.models.critic).to(self.device).eval()
        return self._steps[dtype]

    def inputs(self, seed: int) -> tuple[torch.Tensor, ...]:
        from .backends.io import random_inputs

        args = random_inputs(self.shapes, self.cfg.steps, self.labels, seed=self.cfg.seed * 7919 + seed)
        return tuple(a.to(self.device) for a in args)

    def eager_decode(self, dtype: str) -> Callable[[torch.Tensor], torch.Tensor]:
        codec = self.models.codec.to(self.device)
        if self.models.decode_note is not None:
            r = self.cfg.resolution
            return lambda x: torch.zeros(x.shape[0], 3, r, r, device=x.device)
        if self.device.type == "cuda" and any(True for _ in codec.parameters()):
            codec = copy.deepcopy(codec).to(DTYPES[dtype])  # on CPU the VAE stays fp32 (no fast bf16 convs)
        dt = next(codec.parameters()).dtype if any(True for _ in codec.parameters()) else torch.float32

        def decode(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return decode_images(codec, x.to(dt))

        return decode


def _no_grad(fn: StepFn) -> StepFn:
    def run(*a: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return tuple(fn(*a))

    return run


def eager_ref(ctx: BenchContext) -> Runner:
    """What users run today: fp32, one sample at a time, guidance by autograd (MinimaxDiffusion's
    sample.py loops like this); the GuidedStep at batch 1, so the definition is the same."""
    step = ctx.step("fp32")

    def run(
        x: Tensor,
        i: Tensor,
        y: Tensor,
        noise: Tensor,
        memory: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        outs = [
            step(
                x[b : b + 1],
                i,
                y[b : b + 1],
                noise[b : b + 1],
                memory,
                None if mask is None else mask[b : b + 1],
            )
            for b in range(x.shape[0])
        ]
        return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))

    return Runner(_no_grad(run), ctx.eager_decode("fp32"), "fp32", ["batch 1 loop over the batch, fp32"])


def eager(ctx: BenchContext) -> Runner:
    from .backends.eager import EagerEngine

    step = ctx.step(ctx.cfg.dtype)
    engine = EagerEngine(step, ctx.models.codec, memory_size=ctx.cfg.memory_size)
    return Runner(engine.step, ctx.eager_decode(ctx.cfg.dtype), ctx.cfg.dtype, stages=stage_fns(ctx, step))


def stage_fns(ctx: BenchContext, step: GuidedStep) -> dict[str, tuple[Callable[..., Any], Callable[[int], tuple]]]:
    """The GuidedStep's three parts as separately timed calls (same ops as ``GuidedStep.forward``)."""
    from .diffusion.updates import ddim_update, ddpm_update

    def denoiser_cfg(x: Tensor, i: Tensor, y: Tensor, *_: Tensor) -> tuple[Tensor, Tensor | None]:
        with torch.no_grad():
            return step.eps(x.float(), i.long().reshape(()), y.long())

    def critic_grad(x: Tensor, i: Tensor, y: Tensor, _noise: Tensor, memory: Tensor, mask: Tensor) -> Any:
        t = step.tab_timestep[i.long().reshape(())].expand(x.shape[0])
        with torch.enable_grad():
            return torch.func.grad(step.objective, has_aux=True)(x.float(), t, y.long(), memory, mask)

    def update(x: Tensor, i: Tensor, eps: Tensor, var: Tensor, noise: Tensor) -> Tensor:
        i = i.long().reshape(())
        if step.cfg.sampler == "ddim":
            return ddim_update(x, eps, i, noise, step.tables, step.cfg.eta)
        return ddpm_update(x, eps, var if step.learn_sigma else None, i, noise, step.tables)

    def update_args(k: int) -> tuple:
        x, i, _, noise, _, _ = ctx.inputs(k)
        return x, i, torch.randn_like(x), torch.rand_like(x) * 2 - 1, noise

    out = {"denoiser_cfg": (denoiser_cfg, ctx.inputs), "update": (update, update_args)}
    if step.critic is not None:
        out["critic_grad"] = (critic_grad, ctx.inputs)
    return out


def compiled_manifest(ctx: BenchContext, mode: str) -> dict[str, Any]:
    return {"backend": "compiled", "mode": mode, "shapes": ctx.shapes.as_dict(), "num_steps": ctx.cfg.steps}


def compiled(ctx: BenchContext, mode: str) -> Runner:
    """torch.compile of the traced step (the graph every exporter writes); compiles on first call."""
    from .backends.compiled import CompiledEngine
    from .backends.onnx_export import trace_step

    if mode == "reduce-overhead" and ctx.device.type != "cuda":
        raise Skipped("CUDA graphs (mode reduce-overhead) need --device cuda")
    step = ctx.step(ctx.cfg.dtype)
    gm = trace_step(step, ctx.inputs(0))
    fn = torch.compile(gm, mode=None if mode == "default" else mode, dynamic=False, fullgraph=True)
    engine = CompiledEngine(fn, compiled_manifest(ctx, mode))
    notes = [f"torch.compile mode={mode} of the make_fx graph; fused step only", "decode: eager codec"]
    return Runner(engine.step, ctx.eager_decode(ctx.cfg.dtype), ctx.cfg.dtype, notes)


def aoti(ctx: BenchContext) -> Runner:
    from .backends.compiled import CompiledEngine, build_step_package, load_package

    step = ctx.step(ctx.cfg.dtype)
    path = build_step_package(step, ctx.inputs(0), ctx.tmp / "step.pt2")
    fn = load_package(path, ctx.device)
    engine = CompiledEngine(fn, compiled_manifest(ctx, "aoti"))
    notes = ["AOTInductor .pt2 of the make_fx graph; fused step only", "decode: eager codec"]
    return Runner(engine.step, ctx.eager_decode(ctx.cfg.dtype), ctx.cfg.dtype, notes)


def exported(ctx: BenchContext, backend: str) -> Runner:
    """Export with the same code as ``igds-fast export`` (backends.build), open with load_engine."""
    from .backends.build import ExportSpec, write_graphs
    from .backends.manifest import build_manifest, write_manifest
    from .backends.registry import load_engine
    from .models.vae import PixelSpace

    if backend == "tensorrt":
        from .backends.tensorrt import unavailable_reason

        reason = unavailable_reason()
        if reason:
            raise Skipped(reason)
    precision = ctx.cfg.dtype
    if backend == "onnxruntime" and precision == "bf16":
        raise Skipped("onnxruntime has no bf16 kernels for this graph; run it with --dtype fp32 or fp16")
    step = ctx.step(precision)
    folder = ctx.tmp / backend
    folder.mkdir()
    codec = PixelSpace() if ctx.models.decode_note else ctx.models.codec
    spec = ExportSpec(
        denoiser=Path("random"),
        vae=None,
        critics=None,
        cfg=ctx.step_cfg,
        batch_size=ctx.cfg.batch_size,
        memory_size=ctx.cfg.memory_size,
        precision=precision,
        backend=backend,
        out=folder,
        device=ctx.cfg.device,
    )
    graphs = write_graphs(spec, step, codec.to(ctx.device), ctx.shapes, folder)
    manifest = build_manifest(
        backend=backend,
        precision=precision,
        step_config=ctx.step_cfg.to_dict(),
        models={},
        model_paths={},
        shapes=ctx.shapes.as_dict(),
        graphs=graphs,
        extra={"num_steps": ctx.cfg.steps, "labels": ctx.labels, "opset": spec.graph_opset},
    )
    write_manifest(folder, manifest)
    engine = load_engine(folder, device=ctx.cfg.device, threads=ctx.cfg.threads, verify_hashes=False)
    notes = ["fused step only (one graph): no per-stage split"]
    if backend == "onnxruntime":
        notes.append("providers: " + ", ".join(engine.session.get_providers()))
    decode = engine.decode
    if ctx.models.decode_note:
        decode = ctx.eager_decode(precision)
    return Runner(engine.step, decode, precision, notes)


def make_runner(ctx: BenchContext, name: str) -> Runner:
    if name == "eager-ref":
        return eager_ref(ctx)
    if name == "eager":
        return eager(ctx)
    if name == "compiled":
        return compiled(ctx, ctx.cfg.compile_mode)
    if name == "compiled-cg":
        return compiled(ctx, "reduce-overhead")
    if name == "aoti":
        return aoti(ctx)
    return exported(ctx, name)


# ---- one backend ----------------------------------------------------------------------------


def run_chain_e2e(ctx: BenchContext, runner: Runner, seed: int) -> dict[str, float]:
    """One batch through all N steps, decode, uint8, PNG on a thread pool: what a distill run does."""
    from concurrent.futures import ThreadPoolExecutor

    from .models.vae import to_uint8

    try:
        from .imageio import encode_image
    except ImportError:  # Pillow missing (bare GPU machines)
        encode_image = None
    cfg, dev, s = ctx.cfg, ctx.device, ctx.shapes
    x, _, y, _, _, _ = ctx.inputs(seed)
    _sync(dev)
    t0 = time.perf_counter()
    for i in reversed(range(cfg.steps)):
        i_t = torch.tensor(i, dtype=torch.int32, device=dev)
        x = runner.step(x, i_t, y, torch.randn(s.batch_size, s.channels, s.height, s.width, device=dev))[0]
    _sync(dev)
    t1 = time.perf_counter()
    images = to_uint8(runner.decode(x)).cpu().numpy()
    t2 = time.perf_counter()
    if encode_image is not None:
        with ThreadPoolExecutor(max_workers=cfg.png_workers) as pool:
            sizes = [len(b) for b in pool.map(lambda im: encode_image(im, "png"), images)]
    t3 = time.perf_counter()
    out = {
        "steps": cfg.steps,
        "chain_s": t1 - t0,
        "decode_s": t2 - t1,
        "png_s": t3 - t2,
        "total_s": t3 - t0,
        "img_s": cfg.batch_size / (t3 - t0),
    }
    if encode_image is None:
        out["png_note"] = "Pillow is not installed: PNG encoding skipped"
    else:
        out["png_bytes_mean"] = statistics.mean(sizes)
    return out


def parity(ctx: BenchContext, runner: Runner, n: int) -> dict[str, float]:
    """Largest relative error of each output against the eager fp32 GuidedStep, fresh inputs."""
    from .backends.io import STEP_OUTPUTS, rel_error

    ref_step = ctx.step("fp32")
    worst: dict[str, float] = {}
    for k in range(n):
        args = ctx.inputs(10_000 + k)
        with torch.no_grad():
            ref = ref_step(*args)
        out = runner.step(*args)
        for name, o, r in zip(STEP_OUTPUTS, out, ref, strict=True):
            worst[name] = max(worst.get(name, 0.0), rel_error(o, r))
    return worst


def bench_backend(ctx: BenchContext, name: str, flops: dict[str, Any], peak: float) -> dict[str, Any]:
    cfg, dev = ctx.cfg, ctx.device
    row: dict[str, Any] = {"status": "ok"}
    try:
        with peak_memory(dev, row):
            t0 = time.perf_counter()
            runner = make_runner(ctx, name)
            runner.step(*ctx.inputs(0))  # compiles lazily-compiled backends
            _sync(dev)
            row["build_s"] = time.perf_counter() - t0
            row["precision"] = runner.precision
            row["notes"] = runner.notes
            times = time_median(runner.step, ctx.inputs, dev, cfg.warmup, cfg.repeats)
            row["step_ms"] = 1e3 * statistics.median(times)
            row["step_ms_all"] = [1e3 * t for t in times]
            row["step_ms_per_image"] = row["step_ms"] / cfg.batch_size
            row["step_tflops"] = flops["per_step"] / (row["step_ms"] / 1e3) / 1e12
            row["peak_fraction"] = row["step_tflops"] * 1e12 / peak
            if runner.stages is not None:
                row["stages_ms"] = {
                    k: 1e3 * statistics.median(time_median(fn, make, dev, 1, cfg.repeats))
                    for k, (fn, make) in runner.stages.items()
                }
            else:
                row["stages_ms"] = None
            row["max_rel_error_vs_eager_fp32"] = parity(ctx, runner, cfg.parity_inputs)
            if name in cfg.e2e:
                e2e = run_chain_e2e(ctx, runner, seed=20_000)
                work = cfg.steps * flops["per_step"] + cfg.batch_size * flops.get("decode_per_image", 0)
                e2e["tflops"] = work / e2e["total_s"] / 1e12
                row["e2e"] = e2e
    except Skipped as e:
        return {"status": "skipped", "reason": str(e)}
    except Exception as e:  # a failing backend is a result, not a crash
        msg = str(e).strip().splitlines()[0][:500] if str(e).strip() else ""
        row.update(status="error", error=f"{type(e).__name__}: {msg}")
    return row


def add_ratios(results: dict[str, dict[str, Any]]) -> None:
    """Speedups against eager and eager-ref, from numbers measured in this run."""
    for base in ("eager", "eager-ref"):
        ref = results.get(base, {})
        for row in results.values():
            if row.get("status") != "ok" or ref.get("status") != "ok":
                continue
            key = base.replace("-", "_")
            row[f"step_speedup_vs_{key}"] = ref["step_ms"] / row["step_ms"]
            if "e2e" in row and "e2e" in ref:
                row[f"e2e_speedup_vs_{key}"] = row["e2e"]["img_s"] / ref["e2e"]["img_s"]


# ---- the run --------------------------------------------------------------------------------


def machine_facts(device: torch.device) -> dict[str, Any]:
    from .backends.doctor import cpu_model

    out: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
        "cuda": torch.version.cuda,
        "driver": None,
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["gpu_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
        with contextlib.suppress(Exception):
            import subprocess

            q = [
                "nvidia-smi",
                "--query-gpu=driver_version",
                "--format=csv,noheader",
                f"--id={device.index or 0}",
            ]
            out["driver"] = subprocess.run(q, capture_output=True, text=True, timeout=10).stdout.strip() or None
    return out


def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    from . import __version__

    def v(*dists: str) -> str | None:
        for d in dists:
            with contextlib.suppress(md.PackageNotFoundError):
                return md.version(d)
        return None

    return {
        "igds_fast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": v("onnxruntime", "onnxruntime-gpu"),
        "onnx": v("onnx"),
        "tensorrt": v("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
        "diffusers": v("diffusers"),
    }


def run_bench(
    cfg: BenchConfig,
    command: str | None = None,
    json_path: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every backend of ``cfg``; the JSON (when asked) is rewritten after each backend, so a
    run killed by a time limit still leaves what it measured."""
    from .pipeline import resolve_device

    cfg.validate()
    dev = resolve_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    models = build_models(cfg)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_facts(dev),
        "versions": versions(),
        "config": asdict(cfg),
        "models": models.info,
        "flops": None,
        "peak": None,
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="igds-bench-") as tmp:
        ctx = BenchContext(cfg, models, Path(tmp))
        flops = step_flops(models, cfg, ctx.step_cfg)
        if models.decode_note is None:
            chw = (ctx.shapes.channels, ctx.shapes.height, ctx.shapes.width)
            flops["decode_per_image"] = decoder_flops(models.codec, chw)
        result["flops"] = flops
        if cfg.peak_tflops is not None:
            peak, how = cfg.peak_tflops * 1e12, "given (--peak-tflops)"
        else:
            peak, how = (
                measure_peak(dev, DTYPES[cfg.dtype]),
                f"measured: square matmul, {cfg.dtype}, this device",
            )
        result["peak"] = {"tflops": peak / 1e12, "how": how}
        for name in cfg.backends:
            log(f"bench: {name} ...")
            sub = Path(tmp) / name.replace("-", "_")
            sub.mkdir()
            ctx.tmp = sub
            row = bench_backend(ctx, name, flops, peak)
            result["results"][name] = row
            add_ratios(result["results"])
            log(f"bench: {name}: " + summary(row))
            if json_path is not None:
                write_json(result, json_path)
    return result


def summary(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row.get('reason') or row.get('error')}"
    text = f"{row['step_ms']:.1f} ms/step, {row['step_tflops']:.3f} TFLOP/s"
    if "e2e" in row:
        text += f", {row['e2e']['img_s']:.2f} img/s end to end"
    return text


def write_json(result: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    return path
