"""The output folder a command writes (``--out``): refused when it is a file, created, and probed
for writing before any work starts, so a bad path fails in one line instead of after sampling."""

from __future__ import annotations

import threading
from pathlib import Path

from .errors import UserError


def check_out_folder(out: Path) -> None:
    """Refuse an ``--out`` that is a file; creates nothing (for checks made while parsing options)."""
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
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to --out '{out}': {e.strerror or e}") from None
