"""The DiT noise schedule and its respacing: the one definition every sampler and backend uses.

Linear betas 1e-4..0.02 over 1000 training steps; respacing keeps a subset of timesteps and
recomputes betas so that the kept steps' cumulative alphas are unchanged (improved-DDPM rule).
All tables are computed in float64 and handed to models as float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserError


def linear_betas(num_train_steps: int = 1000) -> np.ndarray:
    scale = 1000 / num_train_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_train_steps, dtype=np.float64)


def respaced_timesteps(num_train_steps: int, spec: str | int) -> list[int]:
    """Kept training timesteps, ascending, by DiT's rule.

    ``"50"`` (or 50): 50 steps spread evenly over [0, T-1] with rounded fractional strides.
    ``"10,15,20"``: the range split into equal sections with that many steps each.
    ``"ddim50"``: the integer stride that yields exactly 50 steps (0, 20, 40, ... for T=1000).
    """
    spec = str(spec).strip()
    if spec.startswith("ddim"):
        try:
            want = int(spec[4:])
        except ValueError:
            raise UserError(f"bad step spec '{spec}': use ddimN with a step count N, e.g. ddim50") from None
        for stride in range(1, num_train_steps):
            if len(range(0, num_train_steps, stride)) == want:
                return list(range(0, num_train_steps, stride))
        raise UserError(f"cannot make exactly {want} DDIM steps with an integer stride from {num_train_steps}")
    try:
        counts = [int(c) for c in spec.split(",")]
    except ValueError:
        raise UserError(f"bad step spec '{spec}': use a number like 50, sections like 10,20, or ddim50") from None
    if any(c <= 0 for c in counts):
        raise UserError(f"bad step spec '{spec}': step counts must be positive")
    size_per, extra = divmod(num_train_steps, len(counts))
    steps: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise UserError(f"cannot take {count} steps from a section of {size} timesteps")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        pos = 0.0
        for _ in range(count):  # accumulate the stride (not k * stride) to round exactly as DiT does
            steps.append(start + round(pos))
            pos += stride
        start += size
    return sorted(set(steps))


@dataclass
class Schedule:
    """A respaced diffusion schedule; index i in [0, N) runs the model at ``timesteps[i]``."""

    timesteps: np.ndarray  # int64, ascending training timesteps
    betas: np.ndarray  # float64, respaced
    alphas_cumprod: np.ndarray = field(init=False)
    alphas_cumprod_prev: np.ndarray = field(init=False)
    posterior_variance: np.ndarray = field(init=False)
    posterior_log_variance_clipped: np.ndarray = field(init=False)
    posterior_mean_coef1: np.ndarray = field(init=False)
    posterior_mean_coef2: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        b = self.betas
        ac = np.cumprod(1.0 - b)
        ac_prev = np.append(1.0, ac[:-1])
        self.alphas_cumprod, self.alphas_cumprod_prev = ac, ac_prev
        self.posterior_variance = b * (1.0 - ac_prev) / (1.0 - ac)
        # The first posterior variance is 0; its log is clipped to the next one's (as DiT does).
        pv = self.posterior_variance
        self.posterior_log_variance_clipped = np.log(np.append(pv[1], pv[1:])) if len(pv) > 1 else np.log(b)
        self.posterior_mean_coef1 = b * np.sqrt(ac_prev) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * np.sqrt(1.0 - b) / (1.0 - ac)

    @classmethod
    def create(cls, steps: str | int = 50, num_train_steps: int = 1000) -> Schedule:
        base = np.cumprod(1.0 - linear_betas(num_train_steps))
        kept = respaced_timesteps(num_train_steps, steps)
        betas, last = [], 1.0
        for t in kept:
            betas.append(1.0 - base[t] / last)
            last = base[t]
        return cls(timesteps=np.array(kept, dtype=np.int64), betas=np.array(betas, dtype=np.float64))

    def __len__(self) -> int:
        return len(self.timesteps)

    def tables(self) -> dict[str, torch.Tensor]:
        """Per-step float32 coefficient tables (index with the step index), for modules and graphs."""
        ac = self.alphas_cumprod
        raw = {
            "timestep": self.timesteps.astype(np.float64),
            "sqrt_alphas_cumprod": np.sqrt(ac),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1.0),
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": self.alphas_cumprod_prev,
            "log_betas": np.log(self.betas),
            "posterior_log_variance_clipped": self.posterior_log_variance_clipped,
            "posterior_mean_coef1": self.posterior_mean_coef1,
            "posterior_mean_coef2": self.posterior_mean_coef2,
        }
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in raw.items()}
