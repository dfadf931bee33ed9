"""Read torchvision-style ImageFolders (``root/<wnid or class name>/*.jpg``) into uint8 tensors, with a cache.

Labels are positions in a WNID list the caller gives, never each folder's own sort order, so an
ImageFolder and a paper's class list can never be silently misaligned. No torchvision needed.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import UserError
from .memory import check_memory
from .names import CLASS_NAME, WNID

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


def scan_image_folder(root: Path, what: str) -> dict[str, list[Path]]:
    """``root/<class>/<image>`` -> {class: sorted image files}.

    When any folder is named by a WNID, the WNID folders are the classes (each must hold images) and
    other folders are not (e.g. a set's contact sheets). A dataset without WNID folders (CIFAR-10's
    ``airplane/``, ...) names its classes by folder: each visible folder holding images is one. Hidden
    files (temporary names of interrupted writes) are skipped.
    """
    if root.exists() and not root.is_dir():
        raise UserError(f"{what} folder '{root}' is a file; give an ImageFolder root (<class>/<image>)")
    if not root.is_dir():
        raise UserError(f"{what} folder '{root}' does not exist")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and CLASS_NAME.fullmatch(p.name))
    by_wnid = [p for p in folders if WNID.fullmatch(p.name)]
    found = {}
    for folder in by_wnid or folders:
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        if files:
            found[folder.name] = files
        elif by_wnid:
            raise UserError(f"class folder '{folder}' has no images")
    if not found:
        raise UserError(
            f"{what} folder '{root}' has no class folders with images: expected {root}/<wnid or class name>/<image>"
        )
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


def check_decode_memory(n: int, resolution: int, workers: int = 4) -> None:
    """Refuse reading ``n`` images at ``resolution`` px when they cannot fit in memory (uint8, plus
    each decoding thread's resize buffers), before decoding any."""
    check_memory(
        (n + 2 * workers) * 3 * resolution**2,
        f"{n} images at {resolution} px",
        "lower --resolution",
    )


def load_split(
    files: dict[str, list[Path]], classes: list[str], resolution: int, workers: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, 3, R, R), int64 labels (N,)), label = position of the WNID in ``classes``."""
    paths = [p for wnid in classes for p in files[wnid]]
    labels = [label for label, wnid in enumerate(classes) for _ in files[wnid]]
    check_decode_memory(len(paths), resolution, workers)
    # PIL decodes without the GIL, so threads overlap the decoding
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(lambda p: read_image(p, resolution), paths))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(labels, dtype=torch.int64)


def load_imagefolder(
    root: str | Path, wnids: list[str], resolution: int, cache_dir: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, R, R), labels int64 (N,)) of the given classes; cached as .npz keyed
    by the file list."""
    root = Path(root)
    files = scan_image_folder(root, "image")
    missing = [w for w in wnids if w not in files]
    if missing:
        raise UserError(f"'{root}' has no folder for class {missing[0]}")
    listing = [f"{p}:{p.stat().st_size}" for w in wnids for p in files[w]]
    key = hashlib.sha256("\n".join([str(resolution), *wnids, *listing]).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"images_{resolution}px_{key}.npz" if cache_dir is not None else None
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            return torch.from_numpy(z["images"]), torch.from_numpy(z["labels"])
    images, labels = load_split(files, wnids, resolution)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, images=images.numpy(), labels=labels.numpy())
        tmp.replace(cache)
    return images, labels


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0
