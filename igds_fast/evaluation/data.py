"""ImageFolder reading without torchvision (PIL + numpy), and the training augmentation as batched torch ops.

Labels are positions in a WNID list shared by train and val, never each folder's own sort order.
The augmentation runs on whole batches on the training device, with every random draw from one
CPU ``torch.Generator`` so that a seed fixes a run whatever the device.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..errors import UserError

WNID = re.compile(r"n\d{8}")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def scan_image_folder(root: Path, what: str) -> dict[str, list[Path]]:
    """``root/<wnid>/<image>`` -> {wnid: sorted image files}.

    Only folders named by a WNID are classes (a set's other folders, e.g. contact sheets, are not),
    and hidden files (temporary names of interrupted writes) are skipped.
    """
    if not root.is_dir():
        raise UserError(f"{what} folder '{root}' does not exist")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and WNID.fullmatch(p.name))
    if not folders:
        raise UserError(f"{what} folder '{root}' has no class folders named by WNID: expected {root}/n01440764/...")
    found = {}
    for folder in folders:
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        if not files:
            raise UserError(f"class folder '{folder}' has no images")
        found[folder.name] = files
    return found


def match_classes(order: list[str] | None, train: set[str], val: set[str]) -> list[str]:
    """The class order that labels index into: ``order`` if given, else the train WNIDs sorted.

    Train must hold exactly these classes and val all of them. Val may hold more only when an order
    is given, so a full ImageNet val folder can serve any subset.
    """
    classes = list(order) if order is not None else sorted(train)
    wanted = set(classes)
    if order is None:
        checks = [("only in train", train - val), ("only in val", val - train)]
    else:
        checks = [
            ("missing from train", wanted - train),
            ("train has classes outside the class list", train - wanted),
            ("missing from val", wanted - val),
        ]
    problems = [f"{label}: {', '.join(sorted(names))}" for label, names in checks if names]
    if problems:
        raise UserError(f"train and val class sets differ: {'; '.join(problems)}")
    return classes


def read_image(path: Path, resolution: int | None = None) -> np.ndarray:
    """RGB uint8 HWC; with ``resolution``, resized (bicubic, shorter side) and center-cropped to a square."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if resolution is not None and im.size != (resolution, resolution):
                im = ImageOps.fit(im, (resolution, resolution), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # PIL reports broken files as OSError, or SyntaxError/ValueError for some malformed headers
        raise UserError(f"cannot read image '{path}': {e}") from None


def load_split(
    files: dict[str, list[Path]], classes: list[str], resolution: int, workers: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, 3, R, R), int64 labels (N,)), label = position of the WNID in ``classes``."""
    paths = [p for wnid in classes for p in files[wnid]]
    labels = [label for label, wnid in enumerate(classes) for _ in files[wnid]]
    # PIL decodes without the GIL, so threads overlap the decoding
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(lambda p: read_image(p, resolution), paths))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(labels, dtype=torch.int64)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or float in [0, 255]) -> float, standardized with ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


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
