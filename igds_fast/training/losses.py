"""DiT's training objective: eps MSE plus the variational bound that trains the learned variance.

The VLB term sees the predicted eps through a stop-gradient (improved DDPM's hybrid loss), so
the MSE alone shapes the mean and the VLB alone shapes the variance interpolation.
"""

from __future__ import annotations

import math

import torch

from ..diffusion.updates import Tables, _at, predict_x0


def _normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """-log p(x) of 8-bit data in [-1, 1] under a Gaussian integrated over each pixel's bin."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _std_normal_cdf(inv_std * (centered + 1.0 / 255))
    cdf_min = _std_normal_cdf(inv_std * (centered - 1.0 / 255))
    log_probs = torch.where(
        x < -0.999,
        torch.log(cdf_plus.clamp_min(1e-12)),
        torch.where(
            x > 0.999, torch.log((1 - cdf_min).clamp_min(1e-12)), torch.log((cdf_plus - cdf_min).clamp_min(1e-12))
        ),
    )
    return -log_probs


def q_sample(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, tab: Tables) -> torch.Tensor:
    return _at(tab, "sqrt_alphas_cumprod", t, x0) * x0 + _at(tab, "sqrt_one_minus_alphas_cumprod", t, x0) * eps


def hybrid_loss(
    out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, tab: Tables
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mse, vb) per sample, vb in bits per dimension. ``tab`` is a full 1000-step schedule."""
    c = x0.shape[1]
    eps_pred, var = out[:, :c], out[:, c:]
    mse = ((eps - eps_pred) ** 2).mean(dim=(1, 2, 3))
    if var.shape[1] == 0:
        return mse, torch.zeros_like(mse)
    frozen = eps_pred.detach()
    x0_pred = predict_x0(x_t, frozen, t, tab)
    mean_p = _at(tab, "posterior_mean_coef1", t, x0) * x0_pred + _at(tab, "posterior_mean_coef2", t, x0) * x_t
    min_log = _at(tab, "posterior_log_variance_clipped", t, x0)
    frac = (var + 1) / 2
    logvar_p = frac * _at(tab, "log_betas", t, x0) + (1 - frac) * min_log
    mean_q = _at(tab, "posterior_mean_coef1", t, x0) * x0 + _at(tab, "posterior_mean_coef2", t, x0) * x_t
    kl = _normal_kl(mean_q, min_log.expand_as(mean_q), mean_p, logvar_p).mean(dim=(1, 2, 3))
    nll = discretized_gaussian_nll(x0, mean_p, 0.5 * logvar_p).mean(dim=(1, 2, 3))
    vb = torch.where(t == 0, nll, kl) / math.log(2.0)
    return mse, vb
