"""The output folder a command writes (``--out``): refused when it is a file or a dangling link,
created, and probed for writing before any work starts, so a bad path fails in one line instead of
after sampling.

``--out`` may itself be a symbolic link to a folder (the user named it: it is followed, as for any
folder); links *inside* it are never written through (``imageio``, ``jobs/state.py``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from pathlib import Path

from .errors import UserError


def dangling_link(out: Path) -> Path | None:
    """The first of ``out`` and its parents that is a symbolic link to nothing; None when none is."""
    for p in (out, *out.parents):
        if p.is_symlink() and not p.exists():
            return p
    return None


def _dangling_error(out: Path, link: Path) -> UserError:
    where = "--out" if link == out else f"--out '{out}': its folder"
    try:
        target = f" (to '{os.readlink(link)}', which does not exist)"
    except OSError:
        target = ""
    return UserError(
        f"{where} '{link}' is a dangling symbolic link{target}: create the folder it points to, "
        "remove the link, or choose another --out"
    )


def check_out_folder(out: Path) -> None:
    """Refuse an ``--out`` that is a file or a dangling link; creates nothing (for checks made while
    parsing options)."""
    if out.is_symlink() and not out.exists():
        raise _dangling_error(out, out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; choose a folder")


def make_out_folder(out: Path) -> None:
    """Create ``--out`` (with its parents) and write and remove a probe file in it: a folder that
    cannot be created or written is refused here, before any lock, weights or image."""
    check_out_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # hidden like a distill run's own files (never counted as foreign); per thread: shards may
        # share a process
        probe = out / f".igds-write-probe-{threading.get_native_id()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)  # a leftover of a killed run (never follows a link: removes the name)
        os.close(os.open(probe, flags, 0o600))
        os.unlink(probe)
    except OSError as e:
        link = dangling_link(out)
        if e.errno == errno.EEXIST and link is not None:
            raise _dangling_error(out, link) from None
        raise UserError(f"cannot write to --out '{out}': {e.strerror or e}") from None
