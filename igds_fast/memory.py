"""How much memory this machine has free, and the one check that refuses work estimated not to fit
(with the numbers, before any of it is allocated): distill's limits, sample, image loading, networks."""

from __future__ import annotations

import contextlib
import os

import torch

from .errors import UserError

MEMORY_HEADROOM = 0.8  # refuse work estimated past this share of the memory available now


def available_memory() -> int | None:
    """MemAvailable (Linux), else None (not checked)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def device_free_memory(device: object) -> int | None:
    """Memory free where ``device`` (a torch.device) computes: the GPU's free memory on CUDA, the host's
    available memory on the CPU; None where unknown (not checked)."""
    kind = getattr(device, "type", str(device))
    if kind == "cpu":
        return available_memory()
    if kind == "cuda":
        with contextlib.suppress(RuntimeError):
            return int(torch.cuda.mem_get_info(device)[0])
    return None


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_memory(need: float, what: str, fix: str, have: int | None = None) -> None:
    """Refuse, with the numbers, work estimated to need more than this machine has (``what`` says
    what needs the memory, ``fix`` what to lower); ``have``: the memory to compare with (default:
    available now)."""
    have = available_memory() if have is None else have
    if have is not None and need > MEMORY_HEADROOM * have:
        raise UserError(f"{what} need about {gib(need)} of memory, more than the {gib(have)} available here; {fix}")
