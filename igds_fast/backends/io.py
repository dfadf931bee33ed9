"""The guided step's graph signature and the input checks every exported engine shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UserError
from ..models.labels import labels_for_wnids
from ..sampling.engine import check_step_index

STEP_INPUTS = ("x", "i", "y", "noise", "memory", "memory_mask")
STEP_OUTPUTS = ("x_prev", "feats", "log_q", "h2")
PLAIN_INPUTS = STEP_INPUTS[:4]  # the plain graph (the denoiser-only step) reads no memory


@dataclass(frozen=True)
class StepShapes:
    """Static shapes of one engine: batch B, denoiser space (C, H, W), memory rows M, features D."""

    batch_size: int
    channels: int
    height: int
    width: int
    memory_size: int
    feat_dim: int

    def as_dict(self) -> dict[str, int]:
        return {
            "batch_size": self.batch_size,
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "memory_size": self.memory_size,
            "feat_dim": self.feat_dim,
        }

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> StepShapes:
        return cls(**{k: int(d[k]) for k in cls.__dataclass_fields__})


def random_inputs(
    shapes: StepShapes, num_steps: int, labels: Sequence[int], seed: int = 0, i: int | None = None
) -> tuple[torch.Tensor, ...]:
    """Fresh random step inputs in the graph's dtypes (i int32 of shape [1], y int32 drawn from
    ``labels``, memory rows unit vectors like critic features, a random 0/1 mask)."""
    g = torch.Generator().manual_seed(seed)
    b, m, d = shapes.batch_size, shapes.memory_size, shapes.feat_dim
    chw = (shapes.channels, shapes.height, shapes.width)
    step = int(torch.randint(0, num_steps, (1,), generator=g)) if i is None else i
    pick = torch.randint(0, len(labels), (b,), generator=g)
    mem = torch.randn(m, d, generator=g)
    return (
        torch.randn(b, *chw, generator=g),
        torch.tensor([step], dtype=torch.int32),
        torch.tensor(labels, dtype=torch.int32)[pick],
        torch.randn(b, *chw, generator=g),
        mem / mem.norm(dim=1, keepdim=True),
        (torch.rand(b, m, generator=g) < 0.5).float(),
    )


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| (absolute when ref is 0); inf when anything is not finite."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if out.shape != ref.shape or not torch.isfinite(out).all() or not torch.isfinite(ref).all():
        return float("inf")
    den = float(torch.linalg.norm(ref))
    return float(torch.linalg.norm(out - ref)) / (den if den > 0 else 1.0)


def prepare_inputs(
    shapes: StepShapes,
    device: torch.device,
    x: torch.Tensor,
    i: torch.Tensor | int,
    y: torch.Tensor,
    noise: torch.Tensor,
    memory: torch.Tensor | None,
    memory_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, ...]:
    """Move to the engine's device, cast to the graph dtypes, and refuse shapes the static engine was
    not built for."""
    head = prepare_plain_inputs(shapes, device, x, i, y, noise)
    b, m, dev = shapes.batch_size, shapes.memory_size, device
    if memory is None or memory_mask is None:  # no earlier samples: an all-zero mask counts no pairs
        memory = torch.zeros(m, shapes.feat_dim, device=dev)
        memory_mask = torch.zeros(b, m, device=dev)
    if tuple(memory.shape) != (m, shapes.feat_dim) or tuple(memory_mask.shape) != (b, m):
        raise UserError(
            f"this engine takes memory ({m}, {shapes.feat_dim}) and mask ({b}, {m}), got "
            f"{tuple(memory.shape)} and {tuple(memory_mask.shape)}; export with --memory-size to match"
        )
    return head + (
        memory.to(dev, torch.float32).contiguous(),
        memory_mask.to(dev, torch.float32).contiguous(),
    )


def prepare_plain_inputs(
    shapes: StepShapes,
    device: torch.device,
    x: torch.Tensor,
    i: torch.Tensor | int,
    y: torch.Tensor,
    noise: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """``prepare_inputs`` of the first four inputs: what the plain graph (no critic, no memory) reads."""
    want = (shapes.batch_size, shapes.channels, shapes.height, shapes.width)
    if tuple(x.shape) != want or tuple(noise.shape) != want:
        raise UserError(f"this engine was built for inputs {want}, got {tuple(x.shape)}; export one for this batch")
    return (
        x.to(device, torch.float32).contiguous(),
        torch.as_tensor(i).reshape(1).to(device=device, dtype=torch.int32),
        y.to(device=device, dtype=torch.int32).reshape(shapes.batch_size),
        noise.to(device, torch.float32).contiguous(),
    )


class ExportedEngine:
    """What every exported engine shares: its id, device and static shapes from the manifest, input
    moves, checks and casts (``prepare_inputs``), the plain path, batch-padded decoding, and the
    class labels its manifest records. Subclasses run the graphs: ``_run`` (the step's six inputs ->
    its four outputs), ``_run_plain`` (the plain graph's four inputs -> the same four outputs; only
    when the engine has one) and ``_decode`` (one static batch of latents)."""

    backend = ""
    has_decoder = False

    def __init__(self, manifest: dict[str, Any], device: torch.device | str = "cpu"):
        self.manifest = manifest
        self.id: str | None = manifest.get("id")
        self.device = torch.device(device)
        self.shapes = StepShapes.from_dict(manifest["shapes"])
        self.batch_size = self.shapes.batch_size
        self.memory_size = self.shapes.memory_size
        self.feat_dim = self.shapes.feat_dim
        self.shape = (self.shapes.channels, self.shapes.height, self.shapes.width)
        self.num_steps = int(manifest["num_steps"])
        # Where the plain graph gives the full step's x_{t-1} (``GuidedStep.plain_steps``, recorded at
        # export); empty for an engine without one (exported before it existed, or nothing to skip).
        has_plain = "plain" in manifest.get("graphs", {})
        self.plain_steps = frozenset(int(k) for k in manifest.get("plain_steps", ())) if has_plain else frozenset()

    def step(
        self,
        x: torch.Tensor,
        i: torch.Tensor | int,
        y: torch.Tensor,
        noise: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        check_step_index(i, self.num_steps)
        return self._run(prepare_inputs(self.shapes, self.device, x, i, y, noise, memory, memory_mask))

    __call__ = step

    def plain(
        self,
        x: torch.Tensor,
        i: torch.Tensor | int,
        y: torch.Tensor,
        noise: torch.Tensor,
        *_memory: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        """The plain graph: valid at the indices in ``plain_steps`` only (``sampling.engine.plain_path``)."""
        check_step_index(i, self.num_steps)
        return self._run_plain(prepare_plain_inputs(self.shapes, self.device, x, i, y, noise))

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if not self.has_decoder:  # pixel space
            return x.float().clamp(-1, 1)
        return run_in_batches(self._decode, x, self.batch_size).to(self.device)

    def labels(self, wnids: list[str]) -> list[int]:
        """From the classes the manifest records: no need to load the weights."""
        if "class_wnids" not in self.manifest:
            raise UserError("this engine's manifest does not record the model's classes: re-export it")
        return labels_for_wnids(self.manifest["class_wnids"], int(self.manifest["num_classes"]), wnids)

    def clip_guard_bytes(self) -> int:
        return 0  # its runtime allocates the clip guard's memory itself

    def _run(self, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _run_plain(self, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def run_in_batches(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Apply a static-batch per-sample function (a decoder) to any number of rows: chunk, and pad
    the last chunk with zeros (rows are independent, so padding changes nothing) then drop it."""
    outs = []
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = torch.cat([chunk, chunk.new_zeros(batch_size - n, *chunk.shape[1:])])
        outs.append(fn(chunk)[:n])
    return torch.cat(outs)
