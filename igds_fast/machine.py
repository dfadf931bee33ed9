"""Facts about this machine and the libraries in use: what run.json, engine manifests, evaluation
results and benchmark JSON record, so that every number can be traced to where it was made."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import platform
import subprocess
from typing import Any

import torch

from . import __version__

# (key, distributions that provide it): the first one installed wins.
_LIBRARIES = (
    ("torch", ("torch",)),
    ("numpy", ("numpy",)),
    ("onnx", ("onnx",)),
    ("onnxscript", ("onnxscript",)),
    ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
    ("tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu13")),
    ("diffusers", ("diffusers",)),
)


def package_version(*dists: str) -> str | None:
    for d in dists:
        with contextlib.suppress(md.PackageNotFoundError):
            return md.version(d)
    return None


def library_versions() -> dict[str, str | None]:
    """igds-fast, Python and every relevant library (None where not installed)."""
    out: dict[str, str | None] = {"igds_fast": __version__, "python": platform.python_version()}
    out.update({key: package_version(*dists) for key, dists in _LIBRARIES})
    return out


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux), e.g. amx_bf16, avx512_bf16; empty elsewhere."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


# CPU flags of bf16 matrix units. Without them torch runs bf16 matmuls and convolutions emulated:
# a ConvNet-3 training step took 9.3x longer in bf16 than in fp32 on a 2-core AMD EPYC with AVX2 only
# (benchmarks/precision_cpu.py, benchmarks/results/precision-cpu-amd-epyc.json).
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def bf16_units(flags: set[str] | None = None) -> list[str]:
    """The CPU's bf16 matrix units among ``BF16_FLAGS`` (empty: bf16 is emulated on this CPU)."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in BF16_FLAGS if f in flags]


def slow_bf16_warning(precision: str, device: torch.device | str, flags: set[str] | None = None) -> str | None:
    """A one-line warning when ``precision`` asks for bf16 on a CPU without bf16 units, else None."""
    if precision != "bf16" or torch.device(device).type != "cpu" or bf16_units(flags):
        return None
    return (
        "this CPU has no bf16 units (amx_bf16 / avx512_bf16), so bf16 runs emulated, many times slower "
        "than fp32: pass --precision fp32"
    )


def machine_facts(device: torch.device | str = "cpu") -> dict[str, Any]:
    device = torch.device(device)
    out: dict[str, Any] = {
        "cpu": cpu_model(),
        # what decides the fast CPU path: vector width, bf16 dot products, AMX tiles
        "cpu_flags": sorted(f for f in cpu_flags() if f in ("avx2", "avx512f") or "bf16" in f or f.startswith("amx")),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": None,
        "cuda": torch.version.cuda,
        "driver": None,
    }
    if device.type == "cuda" and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(device)
        out["gpu_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
        with contextlib.suppress(Exception):
            q = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={device.index or 0}"]
            out["driver"] = subprocess.run(q, capture_output=True, text=True, timeout=10).stdout.strip() or None
    return out
