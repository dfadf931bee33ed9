"""A data pack: a whole training split at the model's resolution in one file that travels with the
code (no ImageFolder, no JPEG decoding on the training machine), read by train-dit and train-critics.

Format: an uncompressed ``.npz`` (a zip of ``.npy`` arrays, ``numpy.load`` reads it) holding

    images      uint8 (N, 3, R, R)   RGB, resized and center-cropped as ``imagefolder.read_image`` does
    labels      int16 (N,)           position of each image's class in ``wnids``
    wnids       str   (K,)           the class list, in label order
    resolution  int32 ()             R

Imagenette's train split (9,469 images) at 32 px is 29.1 MB: one file under the 32 MB that travels
with a GPU job. At 64 px it would be 116 MB; a latent model's pack would hold latents instead,
which is not this format. The images come from ImageNet: never commit a pack.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..imagefolder import load_imagefolder

PACK_SUFFIX = ".npz"
KEYS = ("images", "labels", "wnids", "resolution")


def is_pack(data: str | Path) -> bool:
    return Path(data).suffix == PACK_SUFFIX and Path(data).is_file()


def write_pack(root: str | Path, wnids: list[str], resolution: int, out: str | Path) -> Path:
    """The ImageFolder ``root`` (classes ``wnids``) at ``resolution`` as one pack file ``out``."""
    out = Path(out)
    if out.suffix != PACK_SUFFIX:
        raise UserError(f"a data pack is a {PACK_SUFFIX} file, got '{out.name}'")
    images, labels = load_imagefolder(root, wnids, resolution)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{PACK_SUFFIX}")
    np.savez(
        tmp,
        images=images.numpy(),
        labels=labels.numpy().astype(np.int16),
        wnids=np.array(wnids),
        resolution=np.int32(resolution),
    )
    tmp.replace(out)
    return out


def read_pack(path: str | Path, wnids: list[str], resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, 3, R, R), int64 labels (N,)) of the classes ``wnids``, labels their positions
    in ``wnids`` (never the pack's own order); refuses another resolution or a missing class."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in KEYS if k not in z.files]
            if missing:
                raise UserError(f"{path} is not a data pack (no '{missing[0]}'; make one with igds-fast pack-data)")
            images, labels = z["images"], z["labels"].astype(np.int64)
            have, res = [str(w) for w in z["wnids"]], int(z["resolution"])
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read data pack {path}: {e}") from None
    if res != resolution:
        raise UserError(f"{path.name} holds {res} px images, this model trains at {resolution} px; pack it again")
    absent = [w for w in wnids if w not in have]
    if absent:
        raise UserError(f"{path.name} has no images of class {absent[0]} (it has {len(have)} classes)")
    position = {w: k for k, w in enumerate(wnids)}
    remap = np.array([position.get(w, -1) for w in have], dtype=np.int64)
    new = remap[labels]
    keep = new >= 0
    order = np.argsort(new[keep], kind="stable")  # grouped by class in the caller's order, as an ImageFolder
    return torch.from_numpy(images[keep][order].copy()), torch.from_numpy(new[keep][order])


def load_training_images(
    data: str | Path, wnids: list[str], resolution: int, cache_dir: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A trainer's images: a data pack file, or an ImageFolder (decoded, and cached in ``cache_dir``)."""
    if is_pack(data):
        return read_pack(data, wnids, resolution)
    return load_imagefolder(data, wnids, resolution, cache_dir=cache_dir)
