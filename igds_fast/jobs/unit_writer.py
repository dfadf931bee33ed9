"""Writing one work unit durably: its images, its critic features and, last, its record.

Each file is written to a temporary name (unique per process and thread), flushed and renamed; a
unit (class, chunk) is done only when its images, its features (the memory of the class's later
chunks) and finally its record ``.unit-<wnid>-<chunk>.json`` are on disk, the record listing every
file's size and sha256. A file already holding the bytes to write is left alone, so redoing a unit
to repair one image rewrites that image only.

Before a unit's first image is written, the names and sha256 of all its images go to
``.igds-pending-<wnid>-<chunk>.json`` (removed once the record is written): with the records, what
``--overwrite`` may delete, so an interrupted unit's images are the tool's known files too. Images
go into a real class folder (a link there is refused, never written through).
"""

from __future__ import annotations

import errno
import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import UserError
from ..imageio import WRITE_LIMITS, LinkRefused, WriteLimit, encode_image, write_atomic
from ..sampling import WorkUnit
from ..seeds import sample_seed
from ..subsets import class_info
from .events import QUIET, Events
from .identity import DistillConfig
from .image_manifest import image_name, image_row
from .state import (
    RECORD_FORMAT,
    UnitState,
    class_folder,
    feats_path,
    file_digest,
    npy_bytes,
    pending_path,
    record_path,
    sha256_bytes,
)


def resize(img: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or img.shape[0] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))


def digest_of(data: bytes) -> tuple[int, str]:
    """(size, sha256) of ``data``, as ``state.file_digest`` gives them for a file."""
    return len(data), sha256_bytes(data)


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` unless the file already holds exactly these bytes; True when written."""
    have = file_digest(path)
    if have is not None and have == digest_of(data):
        return False
    write_atomic(path, data)
    return True


class UnitWriter:
    """Encodes and writes a unit's images on worker threads while the device runs the next unit.

    Only files whose bytes differ from what is on disk are written, so redoing a unit to repair one
    image leaves its other files (and their times) untouched."""

    def __init__(self, out: Path, cfg: DistillConfig, job: str, events: Events = QUIET, workers: int = 2):
        self.out, self.cfg, self.job, self.events = out, cfg, job, events
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.pending: list[Future] = []
        self.max_pending = 2
        self.repaired: list[str] = []
        self.changed: list[str] = []  # regenerated images whose bytes differ from their record
        self._lock = threading.Lock()

    def submit(self, res: Any, images: np.ndarray, seconds: float, before: UnitState) -> None:
        while len(self.pending) >= self.max_pending:  # bound memory: wait for the oldest unit
            self.pending.pop(0).result()
        self.pending.append(self.pool.submit(self._write, res, images, seconds, before))

    def _write(self, res: Any, images: np.ndarray, seconds: float, before: UnitState) -> None:
        unit: WorkUnit = res.unit
        cfg, out = self.cfg, self.out
        ext = "png" if cfg.image_format == "png" else "jpg"
        old = {r["path"]: r["sha256"] for r in before.record["rows"]} if before.record else {}
        rows, sizes, written = [], [], []
        try:
            class_folder(out, unit.wnid)
            encoded = []
            for k, idx in enumerate(unit.indices):
                pixels = resize(images[k], cfg.resolution)
                encoded.append((k, idx, pixels, encode_image(pixels, cfg.image_format)))
            names = {idx: f"{unit.wnid}/{image_name(idx, ext)}" for idx in unit.indices}
            todo = {names[idx] for _, idx, _, data in encoded if file_digest(out / names[idx]) != digest_of(data)}
            for rel in sorted(todo):
                if (out / rel).is_symlink():
                    raise LinkRefused(out / rel)
            if todo:  # what a cut-short unit leaves is listed before the first image is written
                pending = {names[idx]: sha256_bytes(data) for _, idx, _, data in encoded}
                write_atomic(pending_path(out, unit), json.dumps({"images": pending}, sort_keys=True).encode())
            for k, idx, pixels, data in encoded:
                rel = names[idx]
                if rel in todo:
                    write_atomic(out / rel, data)
                    written.append(rel)
                    if rel in old and old[rel] != sha256_bytes(data):
                        with self._lock:
                            self.changed.append(rel)
                rows.append(
                    image_row(
                        unit.wnid,
                        class_info(unit.wnid).imagenet_index,
                        idx,
                        sample_seed(cfg.seed, unit.label, idx),
                        rel,
                        data,
                        cfg.backend,
                        cfg.engine_id,
                        float(res.log_q[k]),
                        float(res.h2[k]),
                        pixels,
                    )
                )
                sizes.append(len(data))
            feats = npy_bytes(res.feats)
            if write_if_changed(feats_path(out, unit), feats):
                written.append(feats_path(out, unit).name)
            record = {
                "format": RECORD_FORMAT,
                "job": self.job,
                "unit": asdict(unit),
                "rows": rows,
                "sizes": sizes,
                "feats": {"size": len(feats), "sha256": sha256_bytes(feats)},
                "seconds": seconds,
            }
            same = before.record is not None and {k: v for k, v in before.record.items() if k != "seconds"} == {
                k: v for k, v in record.items() if k != "seconds"
            }
            if not same:  # the commit point
                write_atomic(record_path(out, unit), json.dumps(record).encode())
                written.append(record_path(out, unit).name)
            pending_path(out, unit).unlink(missing_ok=True)
        except (OSError, WriteLimit) as e:
            if e.errno in WRITE_LIMITS:
                what = WRITE_LIMITS[e.errno] + (" (ulimit -f)" if e.errno == errno.EFBIG else "")
                fix = "raise the limit" if e.errno == errno.EFBIG else "free space"
                raise UserError(
                    f"{what} while writing class {unit.wnid}: {fix} and rerun; finished units are kept"
                ) from None
            if isinstance(e, UserError):
                raise
            raise UserError(f"cannot write class {unit.wnid} under '{out}': {e.strerror or e}") from None
        first_run = before.problem == "not run yet"
        if first_run:
            self.events.emit(
                "unit_done", wnid=unit.wnid, chunk=unit.chunk, images=unit.count, seconds=round(seconds, 3)
            )
        else:
            files = [w for w in written if not w.startswith(".unit-")] or written
            with self._lock:
                self.repaired += files
            self.events.emit(
                "repaired",
                wnid=unit.wnid,
                chunk=unit.chunk,
                why=before.problem or "damaged images",
                files=files,
                identical=not any(f in self.changed for f in files),
            )

    def drain(self) -> None:
        try:
            for f in self.pending:
                f.result()
        finally:
            self.pending.clear()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
