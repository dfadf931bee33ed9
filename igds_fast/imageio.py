"""Image files: grids, labelled contact sheets and atomic PNG/JPEG writes."""

from __future__ import annotations

import contextlib
import io
import os
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] NCHW float -> NHWC uint8 (round half to even, as PIL conversion of (x+1)*127.5 would)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def grid(images: torch.Tensor, rows: int, pad: int = 2) -> Image.Image:
    """[-1, 1] NCHW images -> one picture with ``rows`` rows."""
    arr = to_uint8(images).numpy()
    n, h, w, c = arr.shape
    cols = max(1, -(-n // rows))
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = arr[k]
    return Image.fromarray(out.squeeze(-1) if c == 1 else out)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a readable size
    except (TypeError, OSError):
        return ImageFont.load_default()


def labelled_sheet(rows: list[tuple[str, torch.Tensor]], title: str, tile: int = 96, pad: int = 4) -> Image.Image:
    """A contact sheet a person can read: a title line, then one row of tiles per (label, [-1, 1]
    NCHW images), each tile upscaled by an integer factor (nearest, so pixels stay honest) to at
    least ``tile`` px, the row's label on its left."""
    h = max(int(im.shape[-2]) for _, im in rows)
    scale = max(1, -(-tile // h))
    side = h * scale
    cols = max(len(im) for _, im in rows)
    font, small = _font(18), _font(14)
    label_w = 24 + max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(lbl, font=small)) for lbl, _ in rows)
    title_h = 32
    sheet = Image.new("RGB", (label_w + cols * (side + pad) + pad, title_h + len(rows) * (side + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 6), title, fill="black", font=font)
    for r, (label, images) in enumerate(rows):
        y0 = title_h + pad + r * (side + pad)
        draw.text((8, y0 + side // 2 - 8), label, fill="black", font=small)
        for k, arr in enumerate(to_uint8(images).numpy()):
            pic = Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
            pic = pic.resize((pic.width * scale, pic.height * scale), Image.Resampling.NEAREST)
            sheet.paste(pic, (label_w + pad + k * (side + pad), y0))
    return sheet


def encode_image(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        # compress_level 1: PNG is lossless either way, and writing must keep up with the sampler
        Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, flush to disk, rename: a file is whole or absent.

    The temporary name is unique per process and thread, so concurrent writers never share one; a
    failed write removes it. Files get the usual 0666 & ~umask mode (0644 by default)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_native_id()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_picture(img: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_atomic(path, buf.getvalue())
    return path
