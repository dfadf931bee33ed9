"""One reverse-diffusion update: classifier-free guidance, then DDPM (learned range) or DDIM.

Every function takes the step index ``i`` (a 0-d integer tensor) and the float32 tables of
``Schedule.tables()``, so the same code runs eagerly and inside exported graphs.
"""

from __future__ import annotations

import torch

Tables = dict[str, torch.Tensor]


def cfg_combine(
    out_cond: torch.Tensor, out_uncond: torch.Tensor | None, scale: float, channels: int, cfg_channels: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Guided eps and the conditional branch's variance channels.

    ``cfg_channels=None`` guides all eps channels (diffusers); 3 guides the first three, as the
    official DiT and MinimaxDiffusion samplers do (their 4th latent channel keeps the cond eps).
    """
    eps_c = out_cond[:, :channels]
    var = out_cond[:, channels:] if out_cond.shape[1] > channels else None
    if out_uncond is None:
        return eps_c, var
    k = channels if cfg_channels is None else min(cfg_channels, channels)
    eps_u = out_uncond[:, :k]
    guided = eps_u + scale * (eps_c[:, :k] - eps_u)
    eps = guided if k == channels else torch.cat([guided, eps_c[:, k:]], dim=1)
    return eps, var


def _at(tab: Tables, name: str, i: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return tab[name][i].to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def predict_x0(x: torch.Tensor, eps: torch.Tensor, i: torch.Tensor, tab: Tables) -> torch.Tensor:
    return _at(tab, "sqrt_recip_alphas_cumprod", i, x) * x - _at(tab, "sqrt_recipm1_alphas_cumprod", i, x) * eps


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, i: torch.Tensor, tab: Tables) -> torch.Tensor:
    """The eps for which ``predict_x0`` gives ``x0`` (its inverse in eps)."""
    return (_at(tab, "sqrt_recip_alphas_cumprod", i, x) * x - x0) / _at(tab, "sqrt_recipm1_alphas_cumprod", i, x)


def ddpm_update(
    x: torch.Tensor, eps: torch.Tensor, var: torch.Tensor | None, i: torch.Tensor, noise: torch.Tensor, tab: Tables
) -> torch.Tensor:
    """Ancestral step x_t -> x_{t-1}; learned-range variance when ``var`` is given, else fixed small."""
    x0 = predict_x0(x, eps, i, tab)
    mean = _at(tab, "posterior_mean_coef1", i, x) * x0 + _at(tab, "posterior_mean_coef2", i, x) * x
    min_log = _at(tab, "posterior_log_variance_clipped", i, x)
    if var is None:
        log_var = min_log
    else:
        frac = (var + 1) / 2
        log_var = frac * _at(tab, "log_betas", i, x) + (1 - frac) * min_log
    nonzero = (i != 0).to(x.dtype)  # the last step adds no noise
    return mean + nonzero * torch.exp(0.5 * log_var) * noise


def ddim_update(
    x: torch.Tensor, eps: torch.Tensor, i: torch.Tensor, noise: torch.Tensor, tab: Tables, eta: float = 0.0
) -> torch.Tensor:
    """DDIM step (Song et al.); eta=0 is deterministic, eta=1 gives the posterior variance (DDPM's fixed-small)."""
    x0 = predict_x0(x, eps, i, tab)
    ab, ab_prev = _at(tab, "alphas_cumprod", i, x), _at(tab, "alphas_cumprod_prev", i, x)
    sigma = eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
    out = x0 * torch.sqrt(ab_prev) + torch.sqrt(1 - ab_prev - sigma**2) * eps
    if eta > 0:
        out = out + (i != 0).to(x.dtype) * sigma * noise
    return out
