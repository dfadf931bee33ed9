"""The image metadata of a distilled (or random-real) set: one Parquet row per image file.

The set's ``metadata.parquet`` is in the form Hugging Face ``datasets`` reads next to an image folder
(``load_dataset("imagefolder", data_dir=SET)``): a ``file_name`` column and a ``label`` column whose
names ride in the file's ``huggingface`` key-value metadata, then one column per fact below. The
file's key-value metadata also name its schema (``igds_fast.schema``: ``SET_FORMAT``) and the
igds-fast version that wrote it (``igds_fast.version``). ``docs/outputs.md`` describes the set.

Columns of the file:
  file_name            the image, relative to the set's root: ``<wnid>/<sample_index:05d>.png``
  label                the class's position among the set's class folders sorted by name (0..K-1):
                       the label ``datasets`` and torchvision's ``ImageFolder`` give the image
  wnid, class_index    the class (WNID or class folder name), and its ImageNet-1k index (what a 1000-class DiT
                       is conditioned on; -1 for a class named by folder)
  sample_index         the image's index within its class
  seed                 the seed the image derives from: the per-sample noise seed for generated
                       images (``seeds.sample_seed``), the run seed for real picks
  sha256               of the file's bytes
  log_q, h2            the guidance terms at the last step (nats); null for real images
  saturation           share of the file's channel values at 0 or 255 (clipped at the range's ends)
  pixel_std            std of its channel values in [0, 1]; below ``NEAR_CONSTANT_STD`` the image is
                       near-constant (a collapsed sample). Both null in sets written before they existed.
  backend              the engine that produced it ("eager", "onnxruntime", ...; "real" for real picks)
  engine_id            the engine manifest's id; null where no engine was involved

Inside igds-fast (unit records, ``read_image_manifest``) a row is ``MANIFEST_SCHEMA``: the same facts
with the file as ``path`` and no ``label`` (it depends on the whole set's classes). Sets of the
previous layout (``PREVIOUS_FORMAT``) hold ``manifest.parquet`` in that row form; it is still read.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from ..errors import UserError
from ..imageio import write_atomic

# The set's metadata file, read by Hugging Face ``datasets`` (imagefolder) and by igds-fast.
METADATA_FILE = "metadata.parquet"
SET_FORMAT = "igds-fast/images-v2"
# The previous layout's file: rows as MANIFEST_SCHEMA (``path``, no ``label``); read, never written.
PREVIOUS_MANIFEST = "manifest.parquet"
PREVIOUS_FORMAT = "igds-fast/images-v1"

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


# The metadata file's own columns ahead of the row's (whose ``path`` becomes ``file_name``). ``label``
# is declared nullable (never null): ``datasets`` takes a column's ClassLabel from the file's metadata
# only where the field equals its own, and its fields are nullable.
SET_COLUMNS = [pa.field("file_name", pa.string(), nullable=False), pa.field("label", pa.int64())]
_HF_DTYPES = {pa.string(): "string", pa.int32(): "int32", pa.int64(): "int64", pa.float32(): "float32"}


def set_schema(classes: list[str]) -> pa.Schema:
    """The metadata file's schema for a set of these class folders (sorted: ``label`` indexes them)
    with its key-value metadata: the schema, the igds-fast version and the features ``datasets``
    gives the columns (``label`` a ClassLabel of the class folders)."""
    fields = SET_COLUMNS + [f for f in MANIFEST_SCHEMA if f.name != "path"]
    features: dict[str, Any] = {f.name: {"dtype": _HF_DTYPES[f.type], "_type": "Value"} for f in fields}
    features["label"] = {"names": list(classes), "_type": "ClassLabel"}
    return pa.schema(
        fields,
        metadata={
            "igds_fast.schema": SET_FORMAT,
            "igds_fast.version": __version__,
            "huggingface": json.dumps({"info": {"features": features}}),
        },
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


def set_classes(rows: list[dict[str, Any]]) -> list[str]:
    """The set's class folders, sorted as ``datasets`` and torchvision sort them: ``label`` i is the i-th."""
    return sorted({r["wnid"] for r in rows})


def write_image_manifest(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write the rows (``MANIFEST_SCHEMA``) as the set's metadata file, atomically (a reader sees the
    old file or the whole new one): ``file_name`` and ``label`` first, the schema and version in its
    key-value metadata."""
    _check_rows(rows)
    classes = set_classes(rows)
    label = {w: i for i, w in enumerate(classes)}
    schema = set_schema(classes)
    records = [
        {"file_name": r["path"], "label": label[r["wnid"]]} | {k: v for k, v in r.items() if k != "path"}
        for r in (dict.fromkeys(LATER_COLUMNS) | r for r in rows)
    ]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records, schema=schema), buf)
    write_atomic(Path(path), buf.getvalue())


def manifest_format(path: str | Path) -> str | None:
    """The schema a metadata file names (``SET_FORMAT``), ``PREVIOUS_FORMAT`` for a file without one
    (the previous layout's ``manifest.parquet``), None when it is missing or unreadable."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    tag = meta.get(b"igds_fast.schema")
    return tag.decode(errors="replace") if tag is not None else PREVIOUS_FORMAT


def read_image_manifest(path: str | Path) -> list[dict[str, Any]]:
    """The rows (``MANIFEST_SCHEMA``) of a set's metadata file, of this layout or the previous one.
    A ``label`` that is not the class's position among the sorted class folders is damage."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest '{path}' does not exist")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise UserError(f"cannot read manifest '{path}': {e}") from None
    labels = None
    if "file_name" in table.column_names and "path" not in table.column_names:
        table = table.rename_columns(["path" if n == "file_name" else n for n in table.column_names])
        if "label" in table.column_names:
            labels = table.column("label").to_pylist()
    missing = [n for n in MANIFEST_SCHEMA.names if n not in table.column_names and n not in LATER_COLUMNS]
    if missing:
        raise UserError(f"manifest '{path}' lacks columns {', '.join(missing)}: it was written by another tool")
    for name in LATER_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), pa.float32()))
    rows = table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA).to_pylist()
    if labels is not None:
        classes = set_classes(rows)
        position = {w: i for i, w in enumerate(classes)}
        if labels != [position[r["wnid"]] for r in rows] or _label_names(table.schema) not in (None, classes):
            raise UserError(f"manifest '{path}': its labels are not the positions of the sorted class folders")
    return rows


def _label_names(schema: pa.Schema) -> list[str] | None:
    """The ClassLabel names the file's ``huggingface`` metadata gives ``label`` (None: none given)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return None
    try:
        return json.loads(raw)["info"]["features"]["label"]["names"]
    except (ValueError, KeyError, TypeError):
        return []  # unreadable: not the class folders


def set_manifest_path(out: Path) -> Path:
    """The metadata file of the set at ``out``: ``metadata.parquet``, or the previous layout's
    ``manifest.parquet`` where only that exists."""
    current, previous = out / METADATA_FILE, out / PREVIOUS_MANIFEST
    return previous if not current.exists() and previous.exists() else current
