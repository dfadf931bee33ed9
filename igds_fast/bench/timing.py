"""Timing primitives: device-synchronised medians on fresh inputs, peak memory, a matmul ceiling, and
the CUDA errors after which nothing more can run in the process."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_median(
    fn: Callable[..., Any], make_args: Callable[[int], tuple], device: torch.device, warmup: int, repeats: int
) -> list[float]:
    """Seconds per call, ``repeats`` times, each on fresh inputs made before the timer starts."""
    for k in range(warmup):
        fn(*make_args(k))
    times = []
    for k in range(repeats):
        args = make_args(warmup + k)
        sync(device)
        t0 = time.perf_counter()
        fn(*args)
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


# Errors after which a CUDA context is unusable: every later CUDA call in the process fails too.
STICKY_CUDA_ERRORS = (
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
    "uncorrectable ecc",
    "hardware exception",
    "launch timed out",
)


def sticky_cuda_error(exc: BaseException, device: torch.device | None = None) -> str | None:
    """Why the CUDA context cannot be used after ``exc``, or None (an out-of-memory error, or any
    error that leaves the device usable): the error names one of ``STICKY_CUDA_ERRORS``, or a
    synchronisation of the device fails after it."""
    text = f"{type(exc).__name__}: {exc}"
    if any(p in text.lower() for p in STICKY_CUDA_ERRORS):
        return text.strip().splitlines()[0][:300]
    if device is not None and device.type != "cuda":
        return None
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    try:
        torch.cuda.synchronize(device)
    except Exception as e:  # the context is gone: report what the check itself got
        return f"torch.cuda.synchronize() fails after it: {str(e).strip().splitlines()[0][:300]}"
    return None


def free_device_memory(device: torch.device, compiled: bool = False) -> None:
    """Drop what earlier work left behind: unreferenced tensors, torch.compile's graphs and CUDA
    graph pools (``compiled``), and the allocator's cached blocks, so a row's peak is its own."""
    gc.collect()
    if compiled:
        import torch._dynamo

        torch._dynamo.reset()  # also frees CUDA graph trees' memory pools
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def peak_memory(device: torch.device, into: dict[str, Any]) -> Iterator[None]:
    """The device's peak allocation while the block runs, reset at its start; on CUDA also what was
    already allocated then (models other rows still hold: the fp32 reference, shared pipelines)."""
    if device.type == "cuda":
        free_device_memory(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = int(torch.cuda.memory_allocated(device))
    try:
        yield
    finally:
        if device.type == "cuda":
            peak = int(torch.cuda.max_memory_allocated(device))
            into["peak_mem_bytes"] = peak
            into["resident_mem_bytes"] = resident
            into["peak_above_resident_bytes"] = peak - resident
            into["peak_mem_kind"] = (
                "torch.cuda.max_memory_allocated during this row (peak stats reset at its start); "
                "resident_mem_bytes: allocated when it started (models other rows keep)"
            )
        else:
            import resource

            into["peak_mem_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
            into["peak_mem_kind"] = "process RSS high-water mark so far (cumulative over backends)"


def measure_peak(device: torch.device, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """FLOP/s of a large square matmul in ``dtype`` on ``device``: the practical ceiling here."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or reps < 3:
        a @ b
        reps += 1
        if device.type == "cuda" and reps % 10 == 0:
            sync(device)
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)
