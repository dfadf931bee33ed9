"""Run a guided step over a whole schedule: one batch of rows (``run_chain``), one batch of work units
with the memory of their classes' earlier chunks (``run_batch``), or a group's batches in chunk order
(``run_group``). Every command samples through these."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..seeds import SampleNoise, sample_seed
from .engine import StepEngine, plain_path
from .units import Batch, WorkUnit

# (x, i, y, noise, memory, memory_mask) -> (x_prev, feats, log_q, h2): a GuidedStep or engine.step.
StepFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class ChainResult:
    x0: torch.Tensor  # final samples in the denoiser's space
    feats: list[torch.Tensor]  # critic features at every step index (index i at position i)
    log_q: torch.Tensor  # critic log q(y|x) at the last step
    h2: torch.Tensor  # class H2 bound at the last step


@dataclass
class ChunkResult:
    unit: WorkUnit
    x0: torch.Tensor  # (n, C, H, W) final samples in the denoiser's space, on the engine's device
    feats: np.ndarray  # (N steps, n, D) critic features: the memory of the class's later chunks
    log_q: np.ndarray  # (n,)
    h2: np.ndarray  # (n,)
    seconds: float = 0.0  # this unit's share (by its images) of its batch's sampling time


def run_chain(
    step: StepFn,
    num_steps: int,
    labels: torch.Tensor,
    noise: SampleNoise,
    x_init: torch.Tensor | None = None,
    memory: Callable[[int], tuple[torch.Tensor, torch.Tensor] | None] | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    plain: StepFn | None = None,
    plain_steps: frozenset[int] = frozenset(),
) -> ChainResult:
    """Denoise from x_T (drawn from ``noise`` unless ``x_init``) through step indices N-1 .. 0.

    ``memory(i)`` returns (features, mask) of earlier samples at step index i, or None;
    ``on_step(i, x_prev)`` sees every step's result (progress, finiteness checks) and must not keep
    it; ``plain`` runs instead of ``step`` at the indices in ``plain_steps``
    (``sampling.engine.plain_path``). Nothing here reads a device value back to the host, so a GPU
    runs the chain without a per-step stall.

    What outlives the next step call is copied: an engine may return the same output buffers on every
    call (a replayed CUDA graph writes each replay's outputs where the previous one's were), so each
    step's features, and the final sample, log q and H2, are cloned (features are (B, D): the copy
    is negligible next to a step).
    """
    first = noise.draw()  # drawn even with x_init: the per-sample streams stay aligned
    x = first if x_init is None else x_init.to(noise.device)
    feats: list[torch.Tensor] = [torch.empty(0)] * num_steps
    log_q = h2 = torch.zeros(len(labels))
    y = labels.to(noise.device)
    indices = torch.arange(num_steps, dtype=torch.int32, device=noise.device)  # one upload, a view per step
    for i in reversed(range(num_steps)):
        mem = memory(i) if memory is not None else None
        args = (x, indices[i : i + 1], y, noise.draw()) + (mem if mem is not None else ())
        with torch.no_grad():
            x, f, log_q, h2 = (plain if i in plain_steps else step)(*args)
        feats[i] = f.clone()  # kept across later step calls, which may write into f's buffer
        if on_step is not None:
            on_step(i, x)
    return ChainResult(x0=x.clone(), feats=feats, log_q=log_q.clone(), h2=h2.clone())


def memory_tensors(
    memory: Sequence[list[np.ndarray]],
    counts: Sequence[int],
    batch: int,
    rows: int,
    feat_dim: int,
    device: torch.device | str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Memory (M, D) and mask (B, M) for a batch: class k's rows (``memory[k]``: the final features
    of its earlier chunks, each (n, D)) visible only to class k's ``counts[k]`` rows of the batch;
    zero-padded to M rows and moved to the device once per batch."""
    blocks = [np.concatenate(m, axis=0) if m else np.zeros((0, feat_dim), np.float32) for m in memory]
    have = sum(len(b) for b in blocks)
    if have > rows:
        raise UserError(
            f"the batch needs {have} memory rows, the engine takes {rows}; re-export with a larger --memory-size"
        )
    mem = np.zeros((rows, feat_dim), np.float32)
    mask = np.zeros((batch, rows), np.float32)
    r = b = 0
    for block, count in zip(blocks, counts, strict=True):
        mem[r : r + len(block)] = block
        mask[b : b + count, r : r + len(block)] = 1.0
        r, b = r + len(block), b + count
    return torch.from_numpy(mem).to(device), torch.from_numpy(mask).to(device)


def run_batch(
    engine: StepEngine,
    seed: int,
    units: Batch,
    memory: Sequence[list[np.ndarray]],
    x_init: Sequence[torch.Tensor | None] | None = None,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
) -> list[ChunkResult]:
    """Denoise one batch: a chunk of each class of ``units``, side by side. ``memory[k]`` holds the
    final features of unit k's class's earlier chunks (each unit sees only its own class's; the
    batch's other classes never enter its diversity term); pads to the engine's static batch;
    refuses non-finite samples. ``on_step(images, i, x)`` sees each step."""
    device = engine.device
    counts = [u.count for u in units]
    real = sum(counts)
    batch = engine.batch_size or real
    if real > batch:
        raise UserError(f"--batch-size {real} exceeds the engine's static batch {batch}")
    seeds = [sample_seed(seed, u.label, i) for u in units for i in u.indices]
    # Padding rows get their own (unused) streams so real rows never depend on the padding.
    first = units[0].label
    seeds += [sample_seed(seed, -1 - first, i) for i in range(batch - real)]
    noise = SampleNoise(seeds, engine.shape, device)
    y = torch.tensor([u.label for u in units for _ in u.indices], dtype=torch.int32)
    # Padding rows must not enter the diversity term of the real rows: they get a label no real row
    # has (at most the null class, a valid embedding row) and no memory.
    y = torch.cat([y, torch.full((batch - real,), max(u.label for u in units) + 1, dtype=torch.int32)])
    n_mem = sum(m.shape[0] for block in memory for m in block)
    rows = max(engine.memory_size, 1) if engine.batch_size is not None else max(n_mem, 1)
    mem, mask = memory_tensors(memory, counts, batch, rows, engine.feat_dim, device)
    finite: list[torch.Tensor] = []  # per step, per real row; read once at the end (no per-step sync)

    def watch(i: int, x: torch.Tensor) -> None:
        finite.append(torch.isfinite(x[:real]).flatten(1).all(1))
        if on_step is not None:
            on_step(real, i, x)

    x0 = None
    if x_init is not None and any(x is not None for x in x_init):
        if any(x is None for x in x_init):
            raise UserError("give the initial noise of every class of a batch, or of none")
        x0 = torch.cat([*x_init, torch.zeros(batch - real, *engine.shape)])
    plain, plain_steps = plain_path(engine)
    t0 = time.perf_counter()
    res = run_chain(
        engine.step,
        engine.num_steps,
        y,
        noise,
        x_init=x0,
        memory=lambda i: (mem, mask),
        on_step=watch,
        plain=plain,
        plain_steps=plain_steps,
    )
    ok = torch.stack(finite).cpu()  # (steps run N-1 .. 0, rows)
    if not ok.all():
        k, row = (int(v) for v in torch.nonzero(~ok)[0])
        unit = units[int(np.searchsorted(np.cumsum(counts), row, side="right"))]
        raise UserError(
            f"non-finite values at step {engine.num_steps - 1 - k} for class {unit.wnid}, "
            f"samples {unit.start}..{unit.start + unit.count - 1}; "
            "nothing was written for them (lower --guidance-scale or check the model)"
        )
    feats = np.stack([f[:real].float().cpu().numpy() for f in res.feats])
    log_q, h2 = res.log_q[:real].float().cpu().numpy(), res.h2[:real].float().cpu().numpy()
    seconds = time.perf_counter() - t0  # after the reads back to the host: the device has finished
    out, r = [], 0
    for u in units:
        rs = slice(r, r + u.count)
        out.append(ChunkResult(u, res.x0[rs], feats[:, rs], log_q[rs], h2[rs], seconds * u.count / real))
        r += u.count
    return out


def run_group(
    engine: StepEngine,
    seed: int,
    batches: Sequence[Batch],
    done: Callable[[WorkUnit], np.ndarray | None] = lambda unit: None,
    x_init: Callable[[WorkUnit], torch.Tensor | None] = lambda unit: None,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
) -> Iterator[ChunkResult]:
    """A group's batches in chunk order (``units.group_batches``), each class seeing the final features
    of its own earlier chunks (the diversity term's memory). ``done(unit)`` returns the stored
    features of a unit finished earlier, or None to make it: a batch all of whose units are done is
    skipped (their features still enter the memory); any other runs whole, so each unit comes out
    exactly as it would in an uninterrupted run, and only its units not done are yielded."""
    memory: dict[str, list[np.ndarray]] = {}
    for units in batches:
        stored = [done(u) for u in units]
        if all(s is not None for s in stored):
            results = None
        else:
            mem = [memory.get(u.wnid, []) for u in units]
            results = run_batch(engine, seed, units, mem, x_init=[x_init(u) for u in units], on_step=on_step)
        for k, u in enumerate(units):
            feats = stored[k] if stored[k] is not None else results[k].feats
            memory.setdefault(u.wnid, []).append(feats[0])  # the diversity term reads the final samples' features
            if stored[k] is None:
                yield results[k]
