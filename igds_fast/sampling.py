"""Run a guided step over a whole schedule for one batch (the loop every command shares)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .seeds import SampleNoise

# (x, i, y, noise, memory, memory_mask) -> (x_prev, feats, log_q, h2); a GuidedStep or an engine.
StepFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class ChainResult:
    x0: torch.Tensor  # final samples in the denoiser's space
    feats: list[torch.Tensor]  # critic features at every step index (index i at position i)
    log_q: torch.Tensor  # critic log q(y|x) at the last step
    h2: torch.Tensor  # class H2 bound at the last step


def run_chain(
    step: StepFn,
    num_steps: int,
    labels: torch.Tensor,
    noise: SampleNoise,
    x_init: torch.Tensor | None = None,
    memory: Callable[[int], tuple[torch.Tensor, torch.Tensor] | None] | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> ChainResult:
    """Denoise from x_T (drawn from ``noise`` unless ``x_init``) through step indices N-1 .. 0.

    ``memory(i)`` returns (features, mask) of earlier samples at step index i, or None;
    ``on_step(i, x_prev)`` sees every step's result (progress, finiteness checks).
    """
    x = noise.initial() if x_init is None else x_init.to(noise.device)
    if x_init is not None:
        noise.initial()  # keep the per-sample streams aligned with the default path
    feats: list[torch.Tensor] = [torch.empty(0)] * num_steps
    log_q = h2 = torch.zeros(len(labels))
    y = labels.to(noise.device)
    for i in reversed(range(num_steps)):
        mem = memory(i) if memory is not None else None
        i_t = torch.tensor(i, dtype=torch.int32, device=noise.device)
        args = (x, i_t, y, noise.step()) + (mem if mem is not None else ())
        with torch.no_grad():
            x, f, log_q, h2 = step(*args)
        feats[i] = f
        if on_step is not None:
            on_step(i, x)
    return ChainResult(x0=x, feats=feats, log_q=log_q, h2=h2)
