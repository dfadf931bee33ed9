"""The evaluation's input pipeline as batched torch ops: normalisation and CutMix (the crop: ``augment``).

The augmentation runs on whole batches on the training device, with every random draw from one
CPU ``torch.Generator`` so that a seed fixes a run whatever the device.
"""

from __future__ import annotations

import math

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or float in [0, 255]) -> float, standardized with ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def cutmix(images: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix with beta 1 on every batch: paste a box from a shuffled copy of the batch.

    Returns (mixed images, the partner permutation, the fraction of each image kept); the hard-label
    loss is ``kept * CE(y) + (1 - kept) * CE(y[perm])``.
    """
    n, _, height, width = images.shape
    lam = float(torch.rand(1, generator=gen))  # Beta(1, 1) is uniform
    perm = torch.randperm(n, generator=gen)
    cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
    cy, cx = (int(v) for v in (torch.randint(height, (1,), generator=gen), torch.randint(width, (1,), generator=gen)))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    mixed = images.clone()
    mixed[:, :, y0:y1, x0:x1] = images[perm.to(images.device), :, y0:y1, x0:x1]
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    return mixed, perm, kept
