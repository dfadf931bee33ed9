"""What a bench run measures: the model, shapes, variants and how long to time them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..backends.registry import BACKENDS
from ..config import DTYPES
from ..errors import UserError

SCHEMA = "igds-fast/bench-v2"
MODELS = ("embedded", "dit-s2", "dit-b2", "dit-xl2", "tiny")
ARCHS = {"dit-s2": "DiT-S/2", "dit-b2": "DiT-B/2", "dit-xl2": "DiT-XL/2"}
# Models of a fixed size (--resolution refused): the test-size pixel model, and the embedded default
# (pixel or latent: its image size is the shipped model's, filled in by ``build_models``).
FIXED_SIZES: dict[str, int | None] = {"embedded": None, "tiny": 16}
# What the bench runs, besides every backend of the table (backends.registry.BACKENDS):
#   eager-ref         the reference workflow as users run it (MinimaxDiffusion's sample.py): batch 1, fp32,
#                     TF32 matmuls on, decode per image
#   torch-compile     torch.compile of the traced step in-process; -cg: with CUDA graphs (reduce-overhead)
# and "compiled" is the table's backend: the AOTInductor package ``igds-fast export`` builds.
# A row may name its own precision: "onnxruntime@fp16" (ORT builds no bf16) next to "eager" in --dtype.
EXTRA_VARIANTS = ("eager-ref", "torch-compile", "torch-compile-cg")
DEFAULT_BACKENDS = ("eager-ref", "eager", "torch-compile", "onnxruntime", "tensorrt")
ATTENTION = ("sdpa", "math")  # the denoiser's attention in the eager rows (exported graphs choose their own)


def variant_names() -> tuple[str, ...]:
    return (EXTRA_VARIANTS[0], *BACKENDS, *EXTRA_VARIANTS[1:])


def split_row(name: str) -> tuple[str, str | None]:
    """'onnxruntime@fp16' -> ('onnxruntime', 'fp16'); 'eager' -> ('eager', None): the run's --dtype."""
    variant, _, dtype = name.partition("@")
    return variant, dtype or None


@dataclass
class BenchConfig:
    model: str = "embedded"
    random_weights: bool = False
    resolution: int | None = None  # None: the fixed size of embedded/tiny, 256 for the DiT sizes
    batch_size: int = 8
    steps: int = 50
    backends: list[str] = field(default_factory=lambda: list(DEFAULT_BACKENDS))
    e2e_backends: list[str] | None = None  # None: every backend runs the full chain
    guidance: str = "igds"
    clip_guard: float | None = None  # None: the step's default (config.CLIP_GUARD)
    warmup: int = 2
    repeats: int = 5
    device: str = "cpu"
    dtype: str = "fp32"
    memory_size: int = 32
    parity_inputs: int = 1
    peak_tflops: float | None = None  # None: measure a matmul in this dtype on this device
    threads: int | None = None  # torch and ORT intra-op threads (None: library defaults)
    png_workers: int = 2
    seed: int = 0
    attention: str = "sdpa"
    ref_images: int | None = None  # eager-ref's end-to-end chain on this many images (None: the batch)

    def row_dtype(self, name: str) -> str:
        """The precision a row runs in: its own ('name@fp16'), else --dtype; eager-ref is always fp32."""
        variant, dtype = split_row(name)
        return "fp32" if variant == "eager-ref" else dtype or self.dtype

    def validate(self) -> BenchConfig:
        if self.model not in MODELS:
            raise UserError(f"unknown --model '{self.model}': use {', '.join(MODELS[:4])}")
        names = variant_names()
        unknown = [b for b in self.backends if split_row(b)[0] not in names]
        if unknown or not self.backends:
            raise UserError(
                f"unknown backend '{(unknown or [''])[0]}': use {', '.join(names)} (optionally @fp32/@bf16/@fp16)"
            )
        bad_dtype = [b for b in self.backends if split_row(b)[1] not in (None, *DTYPES)]
        if bad_dtype:
            raise UserError(f"unknown precision in '{bad_dtype[0]}': use name@fp32, name@bf16 or name@fp16")
        if len(set(self.backends)) != len(self.backends):
            raise UserError("--backends names a row twice")
        if self.dtype not in DTYPES:
            raise UserError(f"unknown --dtype '{self.dtype}': use fp32, bf16 or fp16")
        if self.ref_images is not None and self.ref_images < 1:
            raise UserError("--ref-images must be >= 1")
        if self.attention not in ATTENTION:
            raise UserError(f"unknown --attention '{self.attention}': use sdpa or math")
        if self.guidance not in ("igds", "off"):
            raise UserError(f"unknown --guidance '{self.guidance}': use igds or off")
        if min(self.batch_size, self.steps, self.repeats, self.memory_size) < 1 or self.warmup < 0:
            raise UserError("--batch-size, --steps, --repeats, --memory-size must be >= 1, --warmup >= 0")
        if self.parity_inputs < 1:
            raise UserError(f"--parity-inputs must be >= 1, got {self.parity_inputs}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be >= 1, got {self.threads}")
        if self.peak_tflops is not None and not (math.isfinite(self.peak_tflops) and self.peak_tflops > 0):
            raise UserError(f"--peak-tflops must be a positive number, got {self.peak_tflops}")
        fixed = self.model in FIXED_SIZES
        if fixed and self.resolution is not None and self.resolution != FIXED_SIZES[self.model]:
            raise UserError(f"--model {self.model} has a fixed image size; leave --resolution out")
        if fixed:
            self.resolution = FIXED_SIZES[self.model]
        elif self.resolution is None:
            self.resolution = 256
        elif self.resolution % 16 or self.resolution < 32:
            raise UserError(f"--resolution must be a multiple of 16 (latent R/8, patch 2), got {self.resolution}")
        return self

    @property
    def e2e(self) -> list[str]:
        return list(self.backends if self.e2e_backends is None else self.e2e_backends)
