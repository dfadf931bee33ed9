"""The image manifest of a distilled (or random-real) set: one Parquet row per image file.

Columns:
  wnid, class_index    the class (WNID or class folder name), and its ImageNet-1k index (what a 1000-class DiT
                       is conditioned on; -1 for a class named by folder)
  sample_index         the image's index within its class: the file is ``<wnid>/<sample_index:05d>.png``
  seed                 the seed the image derives from: the per-sample noise seed for generated
                       images (``seeds.sample_seed``), the run seed for real picks
  path                 the file, relative to the set's root
  sha256               of the file's bytes
  log_q, h2            the guidance terms at the last step (nats); null for real images
  saturation           share of the file's channel values at 0 or 255 (clipped at the range's ends)
  pixel_std            std of its channel values in [0, 1]; below ``NEAR_CONSTANT_STD`` the image is
                       near-constant (a collapsed sample). Both null in sets written before they existed.
  backend              the engine that produced it ("eager", "onnxruntime", ...; "real" for real picks)
  engine_id            the engine manifest's id; null where no engine was involved
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError
from ..imageio import write_atomic

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("wnid", pa.string(), nullable=False),
        pa.field("class_index", pa.int32(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("log_q", pa.float32()),
        pa.field("h2", pa.float32()),
        pa.field("saturation", pa.float32()),
        pa.field("pixel_std", pa.float32()),
        pa.field("backend", pa.string(), nullable=False),
        pa.field("engine_id", pa.string()),
    ]
)


# Columns added after the first sets were written: absent from their records, null in the manifest.
LATER_COLUMNS = ("saturation", "pixel_std")
# An image whose channel values have a std below this (in [0, 1], ~5 of 255 levels) is near-constant.
NEAR_CONSTANT_STD = 0.02


def pixel_stats(pixels: np.ndarray) -> dict[str, float]:
    """Saturation and pixel std of a uint8 image, as float32 values (what the manifest stores, so a
    record and the manifest compare equal)."""
    p = np.asarray(pixels)
    return {
        "saturation": float(np.float32(np.mean((p == 0) | (p == 255)))),
        "pixel_std": float(np.float32(p.astype(np.float64).std() / 255.0)),
    }


def near_constant_classes(rows: list[dict[str, Any]], share: float = 0.05) -> dict[str, tuple[int, int]]:
    """{wnid: (near-constant images, images)} for classes where more than ``share`` are near-constant."""
    counts: dict[str, list[int]] = {}
    for r in rows:
        c = counts.setdefault(r["wnid"], [0, 0])
        c[1] += 1
        std = r.get("pixel_std")
        c[0] += int(std is not None and std < NEAR_CONSTANT_STD)
    return {w: (k, n) for w, (k, n) in counts.items() if k > share * n}


def _check_rows(rows: list[dict[str, Any]]) -> None:
    """Rows must name every column: ``Table.from_pylist`` would silently fill a missing key with null."""
    names = set(MANIFEST_SCHEMA.names)
    for i, row in enumerate(rows):
        if set(row) | set(LATER_COLUMNS) != names:
            missing, extra = sorted(names - set(row) - set(LATER_COLUMNS)), sorted(set(row) - names)
            raise ValueError(f"manifest row {i}: missing columns {missing}, unknown columns {extra}")
        for field in MANIFEST_SCHEMA:
            if not field.nullable and row[field.name] is None:
                raise ValueError(f"manifest row {i}: column '{field.name}' must not be null")


def image_name(index: int, ext: str = "png") -> str:
    """The file name of a set's ``index``-th image of a class (distilled and baseline sets alike)."""
    return f"{index:05d}.{ext}"


def image_row(
    wnid: str,
    class_index: int,
    sample_index: int,
    seed: int,
    path: str,
    data: bytes,
    backend: str,
    engine_id: str | None = None,
    log_q: float | None = None,
    h2: float | None = None,
    pixels: np.ndarray | None = None,
) -> dict[str, Any]:
    """One manifest row for the image file ``path`` (relative to the set) whose bytes are ``data``
    and whose decoded uint8 ``pixels`` give the saturation and pixel std."""
    stats = pixel_stats(pixels) if pixels is not None else dict.fromkeys(LATER_COLUMNS)
    return {
        "wnid": wnid,
        "class_index": class_index,
        "sample_index": sample_index,
        "seed": seed,
        "path": path,
        "sha256": hashlib.sha256(data).hexdigest(),
        "log_q": log_q,
        "h2": h2,
        "backend": backend,
        "engine_id": engine_id,
        **stats,
    }


def write_image_manifest(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write the rows as Parquet, atomically (a reader sees the old file or the whole new one)."""
    _check_rows(rows)
    buf = io.BytesIO()
    rows = [dict.fromkeys(LATER_COLUMNS) | r for r in rows]
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), buf)
    write_atomic(Path(path), buf.getvalue())


def read_image_manifest(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest '{path}' does not exist")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise UserError(f"cannot read manifest '{path}': {e}") from None
    missing = [n for n in MANIFEST_SCHEMA.names if n not in table.column_names and n not in LATER_COLUMNS]
    if missing:
        raise UserError(f"manifest '{path}' lacks columns {', '.join(missing)}: it was written by another tool")
    for name in LATER_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), pa.float32()))
    return table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA).to_pylist()
