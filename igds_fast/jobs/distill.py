"""The distill job: IPC images per class, written as an ImageFolder with a manifest.

Durability: each image is written to a temporary name and renamed; a unit (class, chunk) is done
only when its images, its critic features (the memory of later chunks) and finally its record
``.unit-<wnid>-<chunk>.json`` are on disk. A rerun skips done units, so an interrupted job
finishes and a finished one does nothing. The manifest, ``run.json`` and the contact sheets are
assembled from the unit records once every unit of the job is done (by whichever shard or
worker finishes last; assembling is idempotent).
"""

from __future__ import annotations

import errno
import io
import json
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..imageio import encode_image, grid, save_picture, to_uint8, write_atomic
from ..sampling import StepEngine, WorkUnit, class_units, run_class, shard_classes
from ..seeds import sample_seed
from ..subsets import class_info
from .image_manifest import image_name, image_row, write_image_manifest

JOB_FILE = ".igds-job.json"


@dataclass
class DistillConfig:
    """What defines the output; two runs with equal configs produce byte-identical sets."""

    wnids: list[str]
    labels: list[int]  # the denoiser's label of each class
    ipc: int
    batch_size: int
    seed: int
    image_format: str = "png"
    resolution: int | None = None  # resize written images (bicubic); None keeps the model's size
    step: dict[str, Any] = field(default_factory=dict)  # StepConfig of the engine
    models: dict[str, str | None] = field(default_factory=dict)  # sha256 of denoiser, vae, critics
    backend: str = "eager"
    engine_id: str | None = None

    def validate(self) -> DistillConfig:
        if self.ipc <= 0:
            raise UserError(f"--ipc must be >= 1, got {self.ipc}")
        if self.batch_size <= 0:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.resolution is not None and self.resolution < 8:
            raise UserError(f"--resolution must be >= 8, got {self.resolution}")
        if self.image_format not in ("png", "jpeg"):
            raise UserError(f"unknown --format '{self.image_format}': use png or jpeg")
        if not self.wnids:
            raise UserError("no classes to distill")
        return self

    def fingerprint(self) -> dict[str, Any]:
        """The fields that change images; the backend may differ only by numerics, so it counts."""
        return asdict(self)


def prepare_out(out: Path, cfg: DistillConfig, overwrite: bool) -> None:
    """Create ``out`` or check it holds this same job; ``--overwrite`` clears our own files only."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".igds-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to --out '{out}': {e.strerror or e}") from None
    job = out / JOB_FILE
    want = cfg.fingerprint()
    if job.exists():
        have = json.loads(job.read_text())
        if have == want:
            return
        if not overwrite:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            raise UserError(
                f"'{out}' holds a distill run with another configuration ({', '.join(diff)} differ); "
                "use another --out, or --overwrite to replace it"
            )
        clear_job(out, have)
    elif any(p.name not in (".igds-write-probe",) for p in out.iterdir()) and not overwrite:
        raise UserError(f"--out '{out}' is not empty and holds no distill run; choose an empty folder")
    write_atomic(job, json.dumps(want, sort_keys=True).encode())


def clear_job(out: Path, job: dict[str, Any]) -> None:
    """Remove what an earlier run wrote (class folders, records, manifest); nothing else."""
    for wnid in job.get("wnids", []):
        if (out / wnid).is_dir():
            shutil.rmtree(out / wnid)
        (out / f"contact_{wnid}.png").unlink(missing_ok=True)
    for pattern in (".unit-*", "manifest.parquet", "run.json", JOB_FILE):
        for p in out.glob(pattern):
            p.unlink()


def _unit_record(out: Path, unit: WorkUnit) -> Path:
    return out / f".unit-{unit.key}.json"


def _unit_feats(out: Path, unit: WorkUnit) -> Path:
    return out / f".unit-{unit.key}.feats.npy"


def unit_done(out: Path, unit: WorkUnit) -> bool:
    return _unit_record(out, unit).exists()


class UnitWriter:
    """Encodes and writes a unit's images on worker threads while the device runs the next unit."""

    def __init__(self, out: Path, cfg: DistillConfig, workers: int = 2, max_pending: int = 2):
        self.out, self.cfg = out, cfg
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.pending: list[Future] = []
        self.max_pending = max_pending

    def submit(
        self, unit: WorkUnit, images: np.ndarray, feats: np.ndarray, log_q: np.ndarray, h2: np.ndarray, seconds: float
    ) -> None:
        while len(self.pending) >= self.max_pending:  # bound memory: wait for the oldest unit
            self.pending.pop(0).result()
        self.pending.append(self.pool.submit(self._write, unit, images, feats, log_q, h2, seconds))

    def _write(
        self, unit: WorkUnit, images: np.ndarray, feats: np.ndarray, log_q: np.ndarray, h2: np.ndarray, seconds: float
    ) -> None:
        cfg, out = self.cfg, self.out
        ext = "png" if cfg.image_format == "png" else "jpg"
        folder = out / unit.wnid
        rows = []
        try:
            folder.mkdir(exist_ok=True)
            for k, idx in enumerate(unit.indices):
                data = encode_image(resize(images[k], cfg.resolution), cfg.image_format)
                rel = f"{unit.wnid}/{image_name(idx, ext)}"
                write_atomic(out / rel, data)
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
                        float(log_q[k]),
                        float(h2[k]),
                    )
                )
            buf = _npy_bytes(feats)
            write_atomic(_unit_feats(out, unit), buf)
            record = {"unit": asdict(unit), "rows": rows, "seconds": seconds}
            write_atomic(_unit_record(out, unit), json.dumps(record).encode())  # the commit point
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise UserError(
                    f"disk full while writing class {unit.wnid}: free space and rerun; finished units are kept"
                ) from None
            raise UserError(f"cannot write class {unit.wnid} under '{out}': {e.strerror or e}") from None

    def drain(self) -> None:
        try:
            for f in self.pending:
                f.result()
        finally:
            self.pending.clear()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def resize(img: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or img.shape[0] == size:
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _load_feats(out: Path, unit: WorkUnit) -> np.ndarray:
    return np.load(_unit_feats(out, unit))


def distill_class(
    engine: StepEngine,
    cfg: DistillConfig,
    out: Path,
    wnid: str,
    label: int,
    writer: UnitWriter,
    on_images: Callable[[int], None] | None = None,
) -> int:
    """Run the class's missing units in chunk order; returns the number of images produced."""
    made = 0
    t0 = time.perf_counter()

    def done(unit: WorkUnit) -> np.ndarray | None:  # a finished chunk: its stored features join the memory
        return _load_feats(out, unit) if unit_done(out, unit) else None

    for res in run_class(engine, cfg.seed, class_units(wnid, label, cfg.ipc, cfg.batch_size), done=done):
        images = to_uint8(engine.decode(res.x0)).cpu().numpy()
        writer.submit(res.unit, images, res.feats, res.log_q, res.h2, time.perf_counter() - t0)
        made += res.unit.count
        if on_images is not None:
            on_images(res.unit.count)
        t0 = time.perf_counter()
    return made


def all_units(cfg: DistillConfig) -> list[WorkUnit]:
    return [
        u for w, lab in zip(cfg.wnids, cfg.labels, strict=True) for u in class_units(w, lab, cfg.ipc, cfg.batch_size)
    ]


def finalize(out: Path, cfg: DistillConfig, run_info: dict[str, Any]) -> bool:
    """Assemble manifest, run.json and contact sheets once every unit of the job is done."""
    units = all_units(cfg)
    if not all(unit_done(out, u) for u in units):
        return False
    rows, seconds = [], 0.0
    for u in units:
        rec = json.loads(_unit_record(out, u).read_text())
        rows += rec["rows"]
        seconds += rec["seconds"]
    write_image_manifest(rows, out / "manifest.parquet")
    for wnid in cfg.wnids:
        from PIL import Image

        files = sorted((out / wnid).iterdir())[:100]
        arr = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])
        imgs = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
        save_picture(grid(imgs, rows=max(1, int(len(files) ** 0.5))), out / f"contact_{wnid}.png")
    info = {
        "kind": "distilled",
        "guidance": cfg.step.get("guidance"),
        "ipc": cfg.ipc,
        "classes": cfg.wnids,
        "seed": cfg.seed,
        "config": cfg.fingerprint(),
        "images": len(rows),
        "unit_seconds_total": seconds,
        "img_per_s_units": len(rows) / seconds if seconds else None,
        "complete": True,
    } | run_info
    write_atomic(out / "run.json", json.dumps(info, indent=1, default=str).encode())
    return True


def log_json(event: dict[str, Any]) -> None:
    sys.stderr.write(json.dumps(event) + "\n")
    sys.stderr.flush()


def run_distill(
    engine: StepEngine,
    cfg: DistillConfig,
    out: Path,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: bool = True,
    json_log: bool = False,
    run_info: dict[str, Any] | None = None,
    prepared: bool = False,
) -> dict[str, Any]:
    """Distill this shard's classes; returns a summary (images made, seconds, img/s, complete).

    ``prepared``: the caller (a Ray driver) has already checked and claimed ``out``."""
    from tqdm import tqdm

    cfg.validate()
    if not prepared:
        prepare_out(out, cfg, overwrite)
    labels = dict(zip(cfg.wnids, cfg.labels, strict=True))
    mine = shard_classes(cfg.wnids, *shard)
    todo = sum(
        u.count for w in mine for u in class_units(w, labels[w], cfg.ipc, cfg.batch_size) if not unit_done(out, u)
    )
    bar = tqdm(total=todo, desc="distill", unit="img", disable=not progress or todo == 0, smoothing=0.1)
    writer = UnitWriter(out, cfg)
    t0 = time.perf_counter()
    made = 0
    try:
        for wnid in mine:
            tc = time.perf_counter()
            n = distill_class(engine, cfg, out, wnid, labels[wnid], writer, on_images=bar.update)
            made += n
            if json_log and n:
                log_json(
                    {"event": "class_done", "wnid": wnid, "images": n, "seconds": round(time.perf_counter() - tc, 3)}
                )
        writer.drain()
    finally:
        writer.close()
        bar.close()
    seconds = time.perf_counter() - t0
    summary = {"images_made": made, "seconds": seconds, "img_per_s": made / seconds if made else None}
    summary["complete"] = finalize(out, cfg, (run_info or {}) | {"last_run": summary})
    return summary
