"""``igds-fast doctor``: the device, the libraries, and what each backend can do here."""

from __future__ import annotations

import torch

from ..machine import library_versions, machine_facts
from .registry import BACKENDS


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


def report() -> str:
    f = facts()
    lines = [f"{k:<12} {v if v is not None else '-'}" for k, v in f.items()]
    table = backend_table()
    w = max(len(r[0]) for r in table)
    lines += ["", f"{'backend':<{w}}  ok   what it can do here", f"{'-' * w}  ---  {'-' * 40}"]
    lines += [f"{name:<{w}}  {ok:<3}  {detail}" for name, ok, detail in table]
    return "\n".join(lines)
