"""The backend table, and opening an engine folder as a StepEngine after checking its manifest,
its signature and every file it lists (nothing of the folder is opened before)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from ..sampling.engine import StepEngine
from . import compiled, eager, onnxruntime, tensorrt
from .backend import Backend, LoadOptions
from .engine_manifest import check_manifest, read_engine_manifest, verify_files

# One row per backend, in the order doctor and bench list them. A new backend: its module, one row.
BACKENDS: dict[str, Backend] = {
    b.name: b for b in (eager.BACKEND, compiled.BACKEND, onnxruntime.BACKEND, tensorrt.BACKEND)
}
EXPORT_BACKENDS = tuple(name for name, b in BACKENDS.items() if b.exports)


def backend(name: str, exporting: bool = False) -> Backend:
    names = EXPORT_BACKENDS if exporting else tuple(BACKENDS)
    if name not in names:
        raise UserError(f"unknown backend '{name}': use {', '.join(names)}")
    return BACKENDS[name]


def load_engine(
    engine_dir: str | Path,
    expect: dict[str, Any] | None = None,
    options: LoadOptions = LoadOptions(),
) -> StepEngine:
    """The engine in ``engine_dir``; refuses one built for something else than ``expect`` (see
    ``engine_manifest.EXPECT_KEYS``), one not signed with the engine key (``backends/trust.py``;
    ``$IGDS_TRUST_ENGINES=1`` lets it pass), and one whose manifest or files are missing, edited,
    truncated, corrupt, outside the folder or links. Every check runs before the backend's loader
    opens anything: compiled and TensorRT engines are executable code."""
    manifest = read_engine_manifest(engine_dir)
    check_manifest(manifest, expect)
    verify_files(engine_dir, manifest)
    name = manifest.get("backend")
    row = BACKENDS.get(str(name))
    if row is None or row.load is None:
        raise UserError(
            f"{engine_dir}: unknown engine backend '{name}' (this version knows {', '.join(EXPORT_BACKENDS)})"
        )
    reason = row.unavailable()
    if reason:
        raise UserError(f"{engine_dir} is a {name} engine, which cannot run here: {reason}")
    return row.load(Path(engine_dir), manifest, options)
