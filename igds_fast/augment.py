"""Image augmentation shared by training (the critic's encoded crops) and evaluation (the protocol's crop)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_resized_crop_flip(
    images: torch.Tensor,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """RandomResizedCrop + horizontal flip for a batch, as one affine resampling (bilinear), same size out.

    Crop area and log aspect ratio are drawn as torchvision draws them; a side that would exceed the
    image is clamped instead of redrawn (torchvision retries 10 times, then center-crops).
    """
    n = images.shape[0]
    area = torch.empty(n).uniform_(*scale, generator=gen)
    aspect = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen).exp()
    w = (area * aspect).sqrt().clamp(max=1.0)  # fractions of the image side
    h = (area / aspect).sqrt().clamp(max=1.0)
    cx = w / 2 + (1 - w) * torch.rand(n, generator=gen)
    cy = h / 2 + (1 - h) * torch.rand(n, generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -w, w)  # a negative x scale mirrors the crop
    theta[:, 0, 2] = 2 * cx - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * cy - 1
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
