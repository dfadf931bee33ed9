"""The image manifest of a distilled (or random-real) set: one Parquet row per image file.

Columns:
  wnid, class_index    the class, and its ImageNet-1k index (what a 1000-class DiT is conditioned on)
  sample_index         the image's index within its class: the file is ``<wnid>/<sample_index:05d>.png``
  seed                 the seed the image derives from: the per-sample noise seed for generated
                       images (``seeds.sample_seed``), the run seed for real picks
  path                 the file, relative to the set's root
  sha256               of the file's bytes
  log_q, h2            the guidance terms at the last step (nats); null for real images
  backend              the engine that produced it ("eager", "onnxruntime", ...; "real" for real picks)
  engine_id            the engine manifest's id; null where no engine was involved
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

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
        pa.field("backend", pa.string(), nullable=False),
        pa.field("engine_id", pa.string()),
    ]
)


def _check_rows(rows: list[dict[str, Any]]) -> None:
    """Rows must name every column: ``Table.from_pylist`` would silently fill a missing key with null."""
    names = set(MANIFEST_SCHEMA.names)
    for i, row in enumerate(rows):
        if set(row) != names:
            missing, extra = sorted(names - set(row)), sorted(set(row) - names)
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
) -> dict[str, Any]:
    """One manifest row for the image file ``path`` (relative to the set) whose bytes are ``data``."""
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
    }


def write_image_manifest(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write the rows as Parquet, atomically (a reader sees the old file or the whole new one)."""
    _check_rows(rows)
    buf = io.BytesIO()
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
    missing = [n for n in MANIFEST_SCHEMA.names if n not in table.column_names]
    if missing:
        raise UserError(f"manifest '{path}' lacks columns {', '.join(missing)}: it was written by another tool")
    return table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA).to_pylist()
