"""``igds-fast doctor``: the device, the libraries, and what each backend can do here.

The automatic backend (what ``distill --backend auto`` runs) is the jobs layer's rule
(``jobs/engine_cache.default_backend``); the command line computes it and hands it to ``summary`` and
``report`` as ``auto``, so this module stays below the jobs in the import layers.
"""

from __future__ import annotations

import importlib.metadata as md
from typing import Any

import torch

from ..machine import library_versions, machine_facts
from .registry import BACKENDS

# Distributions that install the ``onnxruntime`` import package: two of them side by side overwrite
# each other's files, and which build (CPU or CUDA) is imported is then a matter of install order.
ORT_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-training",
)


def facts() -> dict[str, object]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    m = machine_facts(device)
    return {
        **{k: m[k] for k in ("platform", "cpu", "cores", "gpu", "cuda", "driver")},
        **library_versions(),
    }


def backend_table() -> list[tuple[str, str, str]]:
    """(backend, yes/no, what it can do here or why not) for every row of the backend table."""
    rows = []
    for name, row in BACKENDS.items():
        reason = row.unavailable()
        rows.append((name, "no" if reason else "yes", reason or row.describe()))
    return rows


def installed_ort_distributions() -> list[str]:
    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            md.version(name)
        except md.PackageNotFoundError:
            continue
        found.append(name)
    return found


def warnings() -> list[str]:
    """What is wrong with this install, one line each."""
    out = []
    ort = installed_ort_distributions()
    if len(ort) > 1:
        keep = "onnxruntime-gpu" if "onnxruntime-gpu" in ort else ort[-1]
        out.append(
            f"{' and '.join(ort)} are all installed: they share the import name onnxruntime, so which build "
            f"runs is a matter of install order; keep one: pip uninstall -y {' '.join(ort)} && pip install {keep}"
        )
    return out


def summary(auto: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """Everything doctor reports, as one JSON-ready mapping: ``machine`` (device and libraries),
    ``backends`` (one row each), ``auto`` (device -> the automatic backend, precision and why; given by
    the caller) and ``warnings``."""
    return {
        "machine": facts(),
        "backends": [{"backend": n, "available": ok == "yes", "detail": d} for n, ok, d in backend_table()],
        "auto": auto or {},
        "warnings": warnings(),
    }


def report(auto: dict[str, dict[str, str]] | None = None) -> str:
    """``summary`` as the text doctor prints."""
    s = summary(auto)
    lines = [f"{k:<12} {v if v is not None else '-'}" for k, v in s["machine"].items()]
    table = [(r["backend"], "yes" if r["available"] else "no", r["detail"]) for r in s["backends"]]
    w = max(len(r[0]) for r in table)
    lines += ["", f"{'backend':<{w}}  ok   what it can do here", f"{'-' * w}  ---  {'-' * 40}"]
    lines += [f"{name:<{w}}  {ok:<3}  {detail}" for name, ok, detail in table]
    if s["auto"]:
        lines.append("")
        for device, choice in s["auto"].items():
            lines.append(f"--backend auto on {device}: {choice['backend']} {choice['precision']} ({choice['reason']})")
    lines += [f"warning: {w}" for w in s["warnings"]]
    return "\n".join(lines)
