"""What a backend is: one row of the backend table (``registry.BACKENDS``).

A backend module declares its row: its name, the precisions it builds, how it writes an engine's
files from the guided step (``write``), how it opens an engine folder (``load``), and why it cannot
run on this machine (``unavailable``). Export, loading, ``doctor`` and ``bench`` iterate the table,
so adding a backend is one module and one entry in ``registry.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..guidance.step import GuidedStep
from ..sampling.engine import StepEngine


@dataclass
class ExportInputs:
    """What ``Backend.write`` gets: the eager step and codec to export, example inputs on the export
    device, and the folder to write into."""

    step: GuidedStep
    codec: nn.Module
    args: tuple[torch.Tensor, ...]  # example step inputs (x, i, y, noise, memory, memory_mask)
    latents: torch.Tensor | None  # example decoder input; None in pixel space (no decoder)
    folder: Path
    precision: str
    opset: int


@dataclass(frozen=True)
class LoadOptions:
    device: str = "cpu"
    providers: str = "auto"  # onnxruntime: auto, cpu, cuda, tensorrt
    threads: int | None = None  # CPU intra-op threads
    cuda_graph: bool = True  # tensorrt: replay a captured CUDA graph


def cuda_if_visible() -> str:
    """Where ``export`` builds when --device is not given: on the GPU when there is one (an engine is
    built for the device it will run on; a CUDA AOTInductor package or TensorRT plan runs only there)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str  # one line for help texts and doctor
    precisions: tuple[str, ...]  # what ``export --precision`` may ask of it
    unavailable: Callable[[], str | None]  # why it cannot run here; None when it can
    describe: Callable[[], str]  # what it can do here (doctor), when available
    # Exported backends write an engine folder and open it again; eager has neither.
    write: Callable[[ExportInputs], dict[str, Any]] | None = None
    load: Callable[[Path, dict[str, Any], LoadOptions], StepEngine] | None = None
    onnx: bool = False  # whether its engine is built from the exported ONNX graphs
    export_device: Callable[[], str] = cuda_if_visible  # the device ``export`` uses when none is given

    @property
    def exports(self) -> bool:
        return self.write is not None
