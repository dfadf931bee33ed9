"""The reference engine: the GuidedStep module itself and the codec, in PyTorch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..guidance.step import GuidedStep
from ..models.vae import decode_images


class EagerEngine:
    backend = "eager"

    def __init__(
        self, step: GuidedStep, codec: nn.Module, memory_size: int = 1, manifest: dict[str, Any] | None = None
    ):
        self.module = step
        self.codec = codec
        self.device = step.tab_timestep.device  # where the step's inputs must live
        self.batch_size: int | None = None
        self.memory_size = memory_size
        self.feat_dim = step.feat_dim
        d = step.denoiser
        self.shape = (int(d.in_channels), int(d.input_size), int(d.input_size))
        self.num_steps = len(step.schedule)
        self.manifest = manifest or {"backend": "eager", "step": step.cfg.to_dict()}

    def step(
        self,
        x: torch.Tensor,
        i: torch.Tensor,
        y: torch.Tensor,
        noise: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.module(x, torch.as_tensor(i), y, noise, memory, memory_mask)

    __call__ = step

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return decode_images(self.codec, x)
