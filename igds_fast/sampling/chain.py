"""Run a guided step over a whole schedule: one batch (``run_chain``), one chunk of a class with the
memory of its earlier chunks (``run_chunk``), or all chunks of a class in order (``run_class``).
Every command samples through these."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..seeds import SampleNoise, sample_seed
from .engine import StepEngine, plain_path
from .units import WorkUnit

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
    memory: list[np.ndarray], num_steps: int, batch: int, rows: int, feat_dim: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Memory (N steps, M, D) and mask (B, M) for a chunk: the earlier chunks' features at every
    step, zero-padded to M rows; moved to the device once per chunk, indexed per step."""
    have = np.concatenate(memory, axis=1) if memory else np.zeros((num_steps, 0, feat_dim), np.float32)
    if have.shape[1] > rows:
        raise UserError(
            f"the class needs {have.shape[1]} memory rows, the engine takes {rows}; "
            "re-export with a larger --memory-size"
        )
    mem = np.zeros((num_steps, rows, feat_dim), np.float32)
    mem[:, : have.shape[1]] = have
    mask = np.zeros((batch, rows), np.float32)
    mask[:, : have.shape[1]] = 1.0
    return torch.from_numpy(mem).to(device), torch.from_numpy(mask).to(device)


def run_chunk(
    engine: StepEngine,
    seed: int,
    unit: WorkUnit,
    memory: list[np.ndarray],
    x_init: torch.Tensor | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> ChunkResult:
    """Denoise one chunk of a class. ``memory`` holds the features of the class's earlier chunks;
    pads to the engine's static batch; refuses non-finite samples."""
    device = engine.device
    batch = engine.batch_size or unit.count
    if unit.count > batch:
        raise UserError(f"--batch-size {unit.count} exceeds the engine's static batch {batch}")
    seeds = [sample_seed(seed, unit.label, i) for i in unit.indices]
    # Padding rows get their own (unused) streams so real rows never depend on the padding.
    seeds += [sample_seed(seed, -1 - unit.label, i) for i in range(batch - unit.count)]
    noise = SampleNoise(seeds, engine.shape, device)
    y = torch.full((batch,), unit.label, dtype=torch.int32)
    n_mem = sum(m.shape[1] for m in memory)
    rows = max(engine.memory_size, 1) if engine.batch_size is not None else max(n_mem, 1)
    # Padding rows must not enter the entropy term of the real rows: they get the next label (at
    # most the null class, a valid embedding row) and no memory.
    y[unit.count :] = unit.label + 1
    # The diversity term repels from the class's final samples: every step sees their last-step features.
    memory = [np.broadcast_to(m[:1], m.shape) for m in memory]
    mem_all, mask = memory_tensors(memory, engine.num_steps, batch, rows, engine.feat_dim, device)
    mask[unit.count :] = 0
    finite: list[torch.Tensor] = []  # one device flag per step; read once at the end (no per-step sync)

    def watch(i: int, x: torch.Tensor) -> None:
        finite.append(torch.isfinite(x[: unit.count]).all())
        if on_step is not None:
            on_step(i, x)

    if x_init is not None and batch > unit.count:
        x_init = torch.cat([x_init, torch.zeros(batch - unit.count, *engine.shape)])
    plain, plain_steps = plain_path(engine)
    res = run_chain(
        engine.step,
        engine.num_steps,
        y,
        noise,
        x_init=x_init,
        memory=lambda i: (mem_all[i], mask),
        on_step=watch,
        plain=plain,
        plain_steps=plain_steps,
    )
    ok = torch.stack(finite).cpu()
    if not ok.all():
        first = engine.num_steps - 1 - int(torch.nonzero(~ok)[0])  # steps run N-1 .. 0
        raise UserError(
            f"non-finite values at step {first} for class {unit.wnid}, "
            f"samples {unit.start}..{unit.start + unit.count - 1}; "
            "nothing was written for them (lower --guidance-scale or check the model)"
        )
    n = unit.count
    feats = np.stack([f[:n].float().cpu().numpy() for f in res.feats])
    return ChunkResult(unit, res.x0[:n], feats, res.log_q[:n].float().cpu().numpy(), res.h2[:n].float().cpu().numpy())


def run_class(
    engine: StepEngine,
    seed: int,
    units: Sequence[WorkUnit],
    done: Callable[[WorkUnit], np.ndarray | None] = lambda unit: None,
    x_init: Callable[[WorkUnit], torch.Tensor | None] = lambda unit: None,
    on_step: Callable[[WorkUnit, int, torch.Tensor], None] | None = None,
) -> Iterator[ChunkResult]:
    """The chunks of one class in order, each seeing the features of all earlier ones (the entropy
    term's memory). ``done(unit)`` returns the stored features of a chunk finished earlier (it is
    then skipped, its features still enter the memory), or None to run it."""
    memory: list[np.ndarray] = []
    for unit in units:
        stored = done(unit)
        if stored is not None:
            memory.append(stored)
            continue
        step_cb = None if on_step is None else (lambda i, x, u=unit: on_step(u, i, x))
        res = run_chunk(engine, seed, unit, memory, x_init=x_init(unit), on_step=step_cb)
        memory.append(res.feats)
        yield res
