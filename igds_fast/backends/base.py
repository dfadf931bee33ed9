"""The StepEngine interface every backend implements.

An engine runs the guided step of ``igds_fast.guidance.step.GuidedStep`` (eager runs the module
itself; the others run what was exported from it) plus the decoder, for one static configuration.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class StepEngine(Protocol):
    backend: str  # eager | compiled | onnxruntime | tensorrt
    batch_size: int | None  # static batch of an exported engine; None = any batch
    memory_size: int  # rows M of the memory input (static for exported engines, >= 1)
    feat_dim: int  # critic feature size D (1 when guidance is off)
    shape: tuple[int, int, int]  # (C, H, W) of the denoiser space
    num_steps: int  # respaced schedule length N
    manifest: dict[str, Any]  # what the engine was built from (see backends.manifest)

    def step(
        self,
        x: torch.Tensor,
        i: torch.Tensor,
        y: torch.Tensor,
        noise: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t (B,C,H,W) f32, i 0-d int32, y (B,) int, noise (B,C,H,W), memory (M,D), mask (B,M))
        -> (x_{t-1}, features (B,D), log q (B,), H2 (B,))."""
        ...

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Denoiser space -> images in [-1, 1], (B, 3, H', W')."""
        ...
