"""``igds-fast doctor``: the device, the libraries, and what each backend can do here."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def facts() -> dict[str, object]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "onnx": _version("onnx"),
        "onnxscript": _version("onnxscript"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "tensorrt": _version("tensorrt") or _version("tensorrt-cu12"),
        "polygraphy": _version("polygraphy"),
    }


def backend_table() -> list[tuple[str, str, str]]:
    """(backend, status, detail) rows."""
    import torch

    from .compiled import cxx_compiler
    from .onnxruntime import available_providers
    from .tensorrt import unavailable_reason

    cuda = torch.cuda.is_available()
    rows = [("eager", "yes", "cpu" + (", cuda" if cuda else "") + "; the reference GuidedStep")]
    cxx = cxx_compiler()
    rows.append(
        (
            "compiled",
            "yes" if cxx else "no",
            f"torch.compile + AOTInductor .pt2 via {cxx}" if cxx else "no C++ compiler (g++/clang++) on PATH",
        )
    )
    try:
        provs = available_providers()
        short = [p.removesuffix("ExecutionProvider") for p in provs]
        rows.append(("onnxruntime", "yes", "providers: " + ", ".join(short)))
    except ImportError:
        rows.append(("onnxruntime", "no", "onnxruntime is not installed"))
    reason = unavailable_reason()
    rows.append(("tensorrt", "no" if reason else "yes", reason or "native TensorRT plans, CUDA graphs"))
    return rows


def report() -> str:
    f = facts()
    lines = [f"{k:<12} {v if v is not None else '-'}" for k, v in f.items()]
    table = backend_table()
    w = max(len(r[0]) for r in table)
    lines += ["", f"{'backend':<{w}}  ok   what it can do here", f"{'-' * w}  ---  {'-' * 40}"]
    lines += [f"{name:<{w}}  {ok:<3}  {detail}" for name, ok, detail in table]
    return "\n".join(lines)
