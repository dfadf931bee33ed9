"""The seed rule: every sample's noise comes from (global seed, class, sample index) alone.

Each sample owns a CPU generator; its initial noise and every ancestral step's noise are drawn
from it in order. So a sample's trajectory is the same whatever batch, shard, order or restart
produced it.
"""

from __future__ import annotations

import hashlib

import torch


def sample_seed(seed: int, class_label: int, index: int) -> int:
    digest = hashlib.sha256(f"igds-fast:{seed}:{class_label}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class SampleNoise:
    """Per-sample noise streams for one batch: each ``draw()`` gives the next (B, *shape) noise; the
    first draw is x_T, then one per ancestral update."""

    def __init__(self, seeds: list[int], shape: tuple[int, ...], device: torch.device | str = "cpu"):
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.shape = tuple(shape)
        self.device = device

    def draw(self) -> torch.Tensor:
        noise = torch.stack([torch.randn(self.shape, generator=g) for g in self.gens])
        if torch.device(self.device).type == "cuda":  # pinned + non_blocking: the copy does not stall the GPU
            return noise.pin_memory().to(self.device, non_blocking=True)
        return noise
