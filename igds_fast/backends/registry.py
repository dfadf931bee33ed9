"""Open an engine folder as a StepEngine, after checking its manifest and files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from .base import StepEngine
from .manifest import check_manifest, read_manifest, verify_files

BACKENDS = ("eager", "compiled", "onnxruntime", "tensorrt")
EXPORT_BACKENDS = ("onnxruntime", "tensorrt", "compiled")


def load_engine(
    engine_dir: str | Path,
    expect: dict[str, Any] | None = None,
    *,
    device: str = "cpu",
    providers: str = "auto",
    threads: int | None = None,
    cuda_graph: bool = True,
    verify_hashes: bool = True,
) -> StepEngine:
    """The engine in ``engine_dir``; refuses one built for something else than ``expect`` (see
    ``manifest.EXPECT_KEYS``) or whose files are missing, truncated or corrupt."""
    manifest = read_manifest(engine_dir)
    check_manifest(manifest, expect)
    if verify_hashes:
        verify_files(engine_dir, manifest)
    backend = manifest.get("backend")
    if backend == "onnxruntime":
        from .onnxruntime import OrtEngine

        return OrtEngine(engine_dir, manifest, providers=providers, threads=threads)
    if backend == "compiled":
        from .compiled import CompiledEngine

        return CompiledEngine.load(engine_dir, manifest, device=device)
    if backend == "tensorrt":
        from .tensorrt import TrtEngine

        return TrtEngine(engine_dir, manifest, device=device if device != "cpu" else "cuda", cuda_graph=cuda_graph)
    raise UserError(
        f"{engine_dir}: unknown engine backend '{backend}' (this version knows {', '.join(EXPORT_BACKENDS)})"
    )
