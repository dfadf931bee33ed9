"""The reference engine: the GuidedStep module itself and the codec, in PyTorch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..guidance.step import GuidedStep
from ..models.flops import decoder_grad_bytes
from ..models.labels import class_labels
from ..models.vae import decode_images
from ..sampling.engine import check_step_index
from .backend import Backend


class EagerEngine:
    backend = "eager"
    id = None  # no engine folder behind it

    def __init__(
        self, step: GuidedStep, codec: nn.Module, memory_size: int = 1, manifest: dict[str, Any] | None = None
    ):
        self.module = step
        self.codec = codec
        self.device = step.tab_timestep.device  # where the step's weights, and so its inputs, live
        self.batch_size: int | None = None
        self.memory_size = memory_size
        self.feat_dim = step.feat_dim
        self.shape = step.shape
        self.num_steps = len(step.schedule)
        self.manifest = manifest or {"backend": "eager", "step": step.cfg.to_dict()}

    def step(
        self,
        x: torch.Tensor,
        i: torch.Tensor | int,
        y: torch.Tensor,
        noise: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        check_step_index(i, self.num_steps)
        dev = self.device
        mem = None if memory is None else memory.to(dev)
        mask = None if memory_mask is None else memory_mask.to(dev)
        with torch.no_grad():
            return self.module(x.to(dev), torch.as_tensor(i).to(dev), y.to(dev), noise.to(dev), mem, mask)

    __call__ = step

    @property
    def plain_steps(self) -> frozenset[int]:
        """Where ``run_chain`` calls ``plain``: the same x_{t-1}, no critic work."""
        return self.module.plain_steps

    def plain(
        self,
        x: torch.Tensor,
        i: torch.Tensor | int,
        y: torch.Tensor,
        noise: torch.Tensor,
        *_memory: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``GuidedStep.plain``: valid at the indices in ``plain_steps`` only."""
        dev = self.device
        with torch.no_grad():
            return self.module.plain(x.to(dev), torch.as_tensor(i).to(dev), y.to(dev), noise.to(dev))

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return decode_images(self.codec, x.to(self.device))

    def labels(self, wnids: list[str]) -> list[int]:
        return class_labels(self.module.denoiser, wnids)

    def clip_guard_bytes(self) -> int:
        decoder = self.module.decoder  # the step keeps one only when it has a clip guard
        return 0 if decoder is None else decoder_grad_bytes(decoder, self.shape)


def _describe() -> str:
    return "cpu" + (", cuda" if torch.cuda.is_available() else "") + "; the reference GuidedStep"


BACKEND = Backend(
    name="eager",
    summary="the GuidedStep module in PyTorch (the reference every engine is checked against)",
    precisions=("fp32", "fp16", "bf16"),
    unavailable=lambda: None,
    describe=_describe,
)
