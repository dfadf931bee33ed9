"""Timing primitives: device-synchronised medians on fresh inputs, peak memory, a matmul ceiling."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def peak_memory(device: torch.device, into: dict[str, Any]) -> Iterator[None]:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield
    finally:
        if device.type == "cuda":
            into["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(device))
            into["peak_mem_kind"] = "torch.cuda.max_memory_allocated during this backend"
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
