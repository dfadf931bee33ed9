"""The StepEngine interface: what the sampling loop runs, and what every backend implements.

An engine runs the guided step of ``igds_fast.guidance.step.GuidedStep`` (eager runs the module
itself; the others run what was exported from it) plus the decoder, for one static configuration,
on one device. It moves its inputs to that device itself, so callers may hand it CPU tensors.
It also answers what a job checks before sampling: the denoiser's labels of its classes, and the
memory the clip guard keeps where the engine computes. Optionally it also offers a plain step
(``plain_steps``, ``plain``: the denoiser alone, where the full step adds exactly nothing), which
``plain_path`` hands to ``run_chain``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from ..errors import UserError


@runtime_checkable
class StepEngine(Protocol):
    backend: str  # a name of the backend table (backends.registry)
    device: torch.device  # where the engine computes; step/decode outputs live here
    batch_size: int | None  # static batch of an exported engine; None = any batch
    memory_size: int  # rows M of the memory input (static for exported engines, >= 1)
    feat_dim: int  # critic feature size D (1 when guidance is off)
    shape: tuple[int, int, int]  # (C, H, W) of the denoiser space
    num_steps: int  # respaced schedule length N
    id: str | None  # the engine manifest's id (None for eager: no engine folder)
    manifest: dict[str, Any]  # what the engine was built from (see backends.engine_manifest)

    def step(
        self,
        x: torch.Tensor,
        i: torch.Tensor,
        y: torch.Tensor,
        noise: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t (B,C,H,W) f32, i int (1 element), y (B,) int, noise (B,C,H,W), memory (M,D), mask (B,M))
        -> (x_{t-1}, features (B,D), log q (B,), H2 (B,)), all on ``device``."""
        ...

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Denoiser space -> images in [-1, 1], (B, 3, H', W'), on ``device``."""
        ...

    def labels(self, wnids: list[str]) -> list[int]:
        """The denoiser's class label of each of ``wnids``; a UserError names a class it lacks."""
        ...

    def clip_guard_bytes(self) -> int:
        """Per image, the activations the clip guard keeps at each guided step to differentiate the
        decoder, in memory the caller must check before sampling (``jobs.limits``); 0 without a clip
        guard, or for an engine that allocated its memory when it was built."""
        ...


def plain_path(engine: Any) -> tuple[Any, frozenset[int]]:
    """An engine's cheaper step for the indices where guidance adds nothing (``GuidedStep.plain_steps``):
    (its ``plain`` step, those indices); (None, empty) for engines without one (an exported engine
    without a plain graph: built before it existed, or a step with no plain indices)."""
    steps = getattr(engine, "plain_steps", frozenset())
    return (engine.plain, steps) if steps else (None, frozenset())


def check_step_index(i: torch.Tensor | int, num_steps: int) -> None:
    """Refuse a step index outside the engine's schedule. Reads the index only when it is on the
    host: an index already on a GPU is not synchronised on every step just to check it."""
    t = torch.as_tensor(i)
    if t.device.type != "cpu":
        return
    v = int(t.reshape(-1)[0])
    if not 0 <= v < num_steps:
        raise UserError(f"step index {v} is outside this engine's schedule of {num_steps} steps")
