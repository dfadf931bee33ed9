"""The random-real baseline: IPC real images per class, laid out exactly like a distilled set.

``<out>/<wnid>/<index:05d>.png`` (index 0..IPC-1, PNG at the source resolution), ``metadata.parquet``,
the dataset card ``README.md`` and ``run.json`` (``docs/outputs.md``). The picks depend only on (seed,
class, the sorted file list), so a class's picks do not change with the other classes chosen. A
finished set of the previous layout (``manifest.parquet``) is moved to this one by a rerun; files
whose bytes are already right are not rewritten.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..imagefolder import read_image, scan_image_folder
from ..imageio import encode_image, write_atomic
from ..machine import library_versions
from ..outdir import check_out_folder, make_out_folder
from ..subsets import ClassInfo
from .assemble import card_state, metadata_current
from .dataset_card import CARD_FILE, random_real_card
from .image_manifest import (
    METADATA_FILE,
    PREVIOUS_MANIFEST,
    image_name,
    image_row,
    read_image_manifest,
    write_image_manifest,
)
from .state import class_folder
from .unit_writer import write_if_changed

IDENTITY = ("kind", "ipc", "seed", "classes", "source")


def baseline_identity(run: Any) -> dict[str, Any] | None:
    """What identifies a random-real run, from its ``run.json`` (None: not a random-real run)."""
    if not isinstance(run, dict) or run.get("kind") != "random-real" or any(k not in run for k in IDENTITY):
        return None
    return {k: run[k] for k in IDENTITY}


def pick_files(files: list[Path], ipc: int, seed: int, class_index: int) -> list[Path]:
    """IPC distinct files, drawn without replacement from a generator seeded by (seed, class)."""
    rng = np.random.default_rng([seed, class_index])
    return [files[i] for i in rng.choice(len(files), size=ipc, replace=False)]


def _check_out(out: Path, identity: dict[str, Any]) -> bool:
    """True when ``out`` already holds this finished run; raise if it holds anything else."""
    check_out_folder(out)
    if not out.is_dir() or not any(out.iterdir()):
        return False
    run_file = out / "run.json"
    try:
        existing = json.loads(run_file.read_text()) if run_file.is_file() else {}
    except json.JSONDecodeError:
        existing = {}
    if any(existing.get(k) != v for k, v in identity.items()):
        raise UserError(f"'{out}' is not empty and holds a different run: choose another --out or remove it")
    return existing.get("complete") is True


def random_real(data: Path, classes: list[ClassInfo], ipc: int, seed: int, out: Path) -> bool:
    """Write the baseline set; False when ``out`` already held this finished run (nothing written)."""
    if ipc < 1:
        raise UserError(f"--ipc must be at least 1, got {ipc}")
    found = scan_image_folder(data, "data")
    missing = [c.wnid for c in classes if c.wnid not in found]
    if missing:
        raise UserError(f"data folder '{data}' lacks classes {', '.join(missing)}")
    short = [f"{c.wnid} ({len(found[c.wnid])})" for c in classes if len(found[c.wnid]) < ipc]
    if short:
        raise UserError(f"fewer than {ipc} images in class {', '.join(short)}")
    identity = {
        "kind": "random-real",
        "ipc": ipc,
        "seed": seed,
        "classes": [c.wnid for c in classes],
        "source": str(data.resolve()),
    }
    if _check_out(out, identity) and _in_layout(out, identity):
        return False

    t0 = time.perf_counter()
    make_out_folder(out)
    # written first and marked incomplete, so an interrupted run is recognized and finished on rerun
    write_atomic(out / "run.json", json.dumps(identity | {"complete": False}, indent=2).encode())
    rows, sources, sizes = [], {}, set()
    for c in classes:
        picks = pick_files(found[c.wnid], ipc, seed, c.seed_key)
        sources[c.wnid] = [p.name for p in picks]
        class_folder(out, c.wnid)  # a link there is refused, never written through
        for index, src in enumerate(picks):
            pixels = read_image(src)
            sizes.add(pixels.shape[:2])
            png = encode_image(pixels, "png")
            rel = f"{c.wnid}/{image_name(index)}"
            write_if_changed(out / rel, png)
            rows.append(image_row(c.wnid, c.imagenet_index, index, seed, rel, png, backend="real", pixels=pixels))
    write_image_manifest(rows, out / METADATA_FILE)
    write_if_changed(out / CARD_FILE, random_real_card(identity, rows))
    (height, width), *others = sizes
    run = identity | {
        "complete": True,
        "resolution": height if not others and height == width else None,  # None: sizes vary
        "sources": sources,
        "versions": library_versions(),
        "timings": {"total_s": round(time.perf_counter() - t0, 3)},
    }
    write_atomic(out / "run.json", json.dumps(run, indent=2).encode())
    (out / PREVIOUS_MANIFEST).unlink(missing_ok=True)  # the previous layout's, now metadata.parquet
    return True


def _in_layout(out: Path, identity: dict[str, Any]) -> bool:
    """Whether a finished run's set is in this layout: its metadata file and card current, no previous manifest."""
    try:
        rows = read_image_manifest(out / METADATA_FILE)
    except UserError:
        return False
    return (
        metadata_current(out, rows)
        and card_state(out, random_real_card(identity, rows)) == "ok"
        and not (out / PREVIOUS_MANIFEST).exists()
    )
