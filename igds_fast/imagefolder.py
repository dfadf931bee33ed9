"""Read torchvision-style ImageFolders (``root/<wnid or class name>/*.jpg``) into uint8 tensors, with a cache.

Labels are positions in a WNID list the caller gives, never each folder's own sort order, so an
ImageFolder and a paper's class list can never be silently misaligned. No torchvision needed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import UserError
from .memory import check_memory
from .names import CLASS_NAME, WNID

# torchvision's ImageFolder suffixes: a class folder of .tif images is a class, never skipped
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})
T = TypeVar("T")


def scan_image_folder(root: str | Path, what: str) -> dict[str, list[Path]]:
    """``root/<class>/<image>`` -> {class: sorted image files}.

    Every visible folder holding images is a class, named by a WNID (ImageNet) or by its folder name
    (CIFAR-10's ``airplane/``). A folder of images whose name is neither is refused, never skipped,
    so no class goes missing unnoticed. A folder without images is not a class (a set's other
    folders), except a WNID folder, which must hold some. Hidden files and folders (temporary names
    of interrupted writes) are skipped.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"{what} folder '{root}' is a file; give an ImageFolder root (<class>/<image>)")
    if not root.is_dir():
        raise UserError(f"{what} folder '{root}' does not exist")
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        if not files:
            if WNID.fullmatch(folder.name):
                raise UserError(f"class folder '{folder}' has no images")
        elif CLASS_NAME.fullmatch(folder.name):  # a WNID is a class name too
            found[folder.name] = files
        else:
            raise UserError(
                f"class folder '{folder}' holds images but its name is not a WNID or a class name "
                "(letters, digits, '_', '.', '+', '-'; no leading '_', '.', '+', '-'): rename it"
            )
    if not found:
        raise UserError(
            f"{what} folder '{root}' has no class folders with images: expected {root}/<wnid or class name>/<image>"
        )
    return found


def listing(files: dict[str, list[Path]], classes: list[str]) -> list[str]:
    """'class/name:size:mtime_ns' per file of ``classes``: what cache keys hash (stat only, no reading),
    so touching, replacing or adding a file makes a new key."""
    out = []
    for c in classes:
        for p in files[c]:
            st = p.stat()
            out.append(f"{c}/{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return out


def digest(obj: Any) -> str:
    """A short, stable digest of JSON-able data: cache keys here, configurations and requests in ``jobs``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A file PIL cannot read is a UserError naming it."""
    try:
        yield
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # PIL reports broken files as OSError, or SyntaxError/ValueError for some malformed headers
        raise UserError(f"cannot read image '{path}': {e}") from None


_OPENING = threading.Lock()  # the warning filter below is process-wide: one opener at a time


@contextlib.contextmanager
def _open(path: Path) -> Iterator[Image.Image]:
    """The image at ``path``, its header read; one with more pixels than PIL's decompression-bomb
    limit (``Image.MAX_IMAGE_PIXELS``, about 89 Mpx) is refused in one line, before any decoding,
    instead of a warning and gigabytes of pixels. Decoding happens outside the lock."""
    with _reading(path):
        with _OPENING, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            yield im


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB of any mode PIL reads. 16-bit grey (``I;16*``, and ``I`` holding 0..65535: how PIL
    reads 16-bit PNG and PGM) is scaled to 8 bits (v / 257, rounded) instead of PIL's clipping at 255,
    which turns a 16-bit image almost white; 32-bit float (``F``) and integers outside 0..65535 have no
    range to scale from and are refused. Alpha is dropped (``LA``, ``RGBA``, ``PA``), palettes and
    CMYK converted."""
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"{im.mode} pixels outside 0..65535 have no fixed range: save it as an 8- or 16-bit image")
        grey = ((arr + 128) // 257).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if im.mode == "F":
        raise ValueError("32-bit float pixels have no fixed range: save it as an 8- or 16-bit image")
    if im.mode in ("La", "RGBa"):  # premultiplied alpha: unpremultiply first
        im = im.convert("RGBA" if im.mode == "RGBa" else "LA")
    return im.convert("RGB")


def _fit(im: Image.Image, resolution: int | None) -> np.ndarray:
    if resolution is not None and im.size != (resolution, resolution):
        im = ImageOps.fit(im, (resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def read_image(path: Path, resolution: int | None = None) -> np.ndarray:
    """RGB uint8 HWC (``_to_rgb``); with ``resolution``, resized (bicubic, shorter side) and
    center-cropped to a square.

    PIL widens the bicubic kernel by the scale factor when it shrinks, so a downsample is antialiased
    (like area averaging, sharper)."""
    with _open(path) as im:
        return _fit(_to_rgb(im), resolution)


def read_image_saturation(path: Path, resolution: int) -> tuple[np.ndarray, int, int]:
    """(``read_image(path, resolution)``, stored values at exactly 0 or 255, all stored values): the
    saturation counts the file's own pixels, before any resizing blurs them."""
    with _open(path) as im:
        rgb = _to_rgb(im)
        stored = np.asarray(rgb, dtype=np.uint8)
        saturated = int(np.count_nonzero((stored == 0) | (stored == 255)))
        return _fit(rgb, resolution), saturated, stored.size


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, from its header."""
    with _open(path) as im:
        return im.size


def check_decode_memory(n: int, resolution: int, workers: int = 4) -> None:
    """Refuse reading ``n`` images at ``resolution`` px when they cannot fit in memory (uint8, plus
    each decoding thread's resize buffers), before decoding any."""
    check_memory(
        (n + 2 * workers) * 3 * resolution**2,
        f"{n} images at {resolution} px",
        "lower --resolution",
    )


def read_images(paths: list[Path], read: Callable[[Path], T], resolution: int, workers: int = 4) -> list[T]:
    """``read`` of every path, in order, on ``workers`` threads (PIL decodes without the GIL, so the
    threads overlap the decoding); refused up front when the images cannot fit in memory."""
    check_decode_memory(len(paths), resolution, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(read, paths))


def stack_images(arrays: list[np.ndarray]) -> torch.Tensor:
    """HWC uint8 arrays -> one (N, 3, H, W) uint8 tensor."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write to a temporary name unique to the process, then rename: a cache file is whole or absent.
    A full disk or a file-size limit is one line (the temporary file removed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_native_id()}.tmp.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise UserError(
                f"no room to write the cache file '{path}' ({e.strerror}): free space or pass another --cache-dir"
            ) from None
        raise


def load_split(
    files: dict[str, list[Path]], classes: list[str], resolution: int, workers: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, 3, R, R), int64 labels (N,)), label = position of the WNID in ``classes``."""
    paths = [p for wnid in classes for p in files[wnid]]
    labels = [label for label, wnid in enumerate(classes) for _ in files[wnid]]
    images = stack_images(read_images(paths, lambda p: read_image(p, resolution), resolution, workers))
    return images, torch.tensor(labels, dtype=torch.int64)


def load_imagefolder(
    root: str | Path, wnids: list[str], resolution: int, cache_dir: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, R, R), labels int64 (N,)) of the given classes; cached as .npz keyed
    by the folder and its file list."""
    root = Path(root)
    files = scan_image_folder(root, "image")
    missing = [w for w in wnids if w not in files]
    if missing:
        raise UserError(f"'{root}' has no folder for class {missing[0]}")
    key = digest({"root": str(root.resolve()), "res": resolution, "classes": wnids, "files": listing(files, wnids)})
    cache = Path(cache_dir) / f"images_{resolution}px_{key}.npz" if cache_dir is not None else None
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            return torch.from_numpy(z["images"]), torch.from_numpy(z["labels"])
    images, labels = load_split(files, wnids, resolution)
    if cache is not None:
        save_npz(cache, {"images": images.numpy(), "labels": labels.numpy()})
    return images, labels


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0
