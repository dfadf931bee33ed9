"""Read a torchvision-style ImageFolder (``root/<wnid>/*.jpg``) into uint8 tensors, with a cache.

Labels are positions in the WNID list the caller gives (never the folder sort order), so an
ImageFolder and a paper's class list can never be silently misaligned.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def list_images(root: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    if not root.is_dir():
        raise UserError(f"image folder '{root}' does not exist")
    items: list[tuple[Path, int]] = []
    for label, wnid in enumerate(wnids):
        folder = root / wnid
        if not folder.is_dir():
            raise UserError(f"'{root}' has no folder for class {wnid}")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"class folder '{folder}' holds no images")
        items += [(p, label) for p in files]
    return items


def load_image(path: Path, resolution: int) -> np.ndarray:
    """Center-crop to square, resize (bicubic), RGB uint8 HWC."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            if s != resolution:
                im = im.resize((resolution, resolution), Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read image '{path}': {e}") from None


def load_imagefolder(
    root: str | Path, wnids: list[str], resolution: int, cache_dir: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, R, R), labels int64 (N,)); cached as .npz keyed by the file list."""
    root = Path(root)
    items = list_images(root, wnids)
    key = hashlib.sha256(
        "\n".join([str(resolution), *wnids, *(f"{p}:{p.stat().st_size}" for p, _ in items)]).encode()
    ).hexdigest()[:16]
    cache = Path(cache_dir) / f"images_{resolution}px_{key}.npz" if cache_dir is not None else None
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            return torch.from_numpy(z["images"]), torch.from_numpy(z["labels"])
    images = np.stack([load_image(p, resolution) for p, _ in items]).transpose(0, 3, 1, 2)
    labels = np.array([lab for _, lab in items], dtype=np.int64)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, images=images, labels=labels)
        tmp.replace(cache)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0
