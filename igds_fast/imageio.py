"""Image files: grids, labelled contact sheets; and how every output file is written: atomically,
never through a link, a full disk or a file-size limit reported in one line.

Writing never follows a symbolic link: a file is created under a temporary name with
``O_EXCL | O_NOFOLLOW`` and renamed over its final name only when that name is not a link (a link
there is refused: ``LinkRefused``); files opened in place (locks, the run log) are opened with
``O_NOFOLLOW`` (``open_nofollow``). Reads of a tool's own state use ``read_nofollow``: a link or
anything but a regular file reads as missing. A write stopped by a full disk, a quota or a file-size
limit (ENOSPC, EDQUOT, EFBIG) raises ``WriteLimit``: one line naming the file, nothing left behind.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .errors import UserError

# What stops a write for want of room, as the one line says it.
WRITE_LIMITS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit reached",
}


class WriteLimit(UserError):
    """A write stopped by a full disk, a quota or a file-size limit (``ulimit -f``)."""

    def __init__(self, path: Path | str, err: OSError):
        self.errno, self.path = err.errno, Path(path)
        fix = "raise the limit (ulimit -f)" if err.errno == errno.EFBIG else "free space"
        super().__init__(f"{WRITE_LIMITS[err.errno]} while writing '{path}': {fix} and rerun")


class LinkRefused(UserError):
    """A file or folder the tool would write is a symbolic link: nothing is written through one."""

    def __init__(self, path: Path | str, what: str = ""):
        super().__init__(
            f"{what or repr(str(path))} is a symbolic link: igds-fast never writes through a link; "
            "remove the link (or choose another --out)"
        )


def write_limit(path: Path | str, err: OSError) -> UserError | OSError:
    """``err`` as a ``WriteLimit`` when it is one (else ``err`` itself), to raise."""
    return WriteLimit(path, err) if err.errno in WRITE_LIMITS else err


def open_nofollow(path: Path | str, flags: int, mode: int = 0o666) -> int:
    """``os.open`` that never follows a link at ``path`` (``LinkRefused``) and never blocks on a FIFO;
    anything but a regular file there is refused in one line."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise LinkRefused(path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"'{path}' is not a regular file; remove it")
    os.set_blocking(fd, True)
    return fd


def read_nofollow(path: Path | str) -> bytes:
    """The bytes of the regular file at ``path``; OSError when it is missing, unreadable, a link or
    not a regular file (a FIFO is never waited on)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


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


def _create_temp(tmp: Path) -> int:
    """A new file at ``tmp`` (``O_EXCL | O_NOFOLLOW``); a leftover of a dead process that had the same
    pid and thread id (the name is ours, unique per process and thread) is removed first."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(tmp, flags, 0o666)
    except FileExistsError:
        os.unlink(tmp)  # never follows a link: removes the name only
        return os.open(tmp, flags, 0o666)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, flush to disk, rename: a file is whole or absent.

    The temporary name is unique per process and thread, so concurrent writers never share one; a
    failed write removes it. Files get the usual 0666 & ~umask mode (0644 by default). A link at
    ``path`` is refused (``LinkRefused``), never written through nor replaced; a full disk or a
    file-size limit raises ``WriteLimit``."""
    path = Path(path)
    if path.is_symlink():
        raise LinkRefused(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_native_id()}.tmp")
    made = False
    try:
        fd = _create_temp(tmp)
        made = True
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if path.is_symlink():  # made a link meanwhile
            raise LinkRefused(path)
        os.replace(tmp, path)
    except BaseException as e:
        if made:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in WRITE_LIMITS:
            raise WriteLimit(path, e) from None
        raise


def save_picture(img: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_atomic(path, buf.getvalue())
    return path
