"""The guided step: the one definition of x_t -> x_{t-1} that every backend runs.

    eps_cfg   = classifier-free guided eps of the denoiser (one pass on 2B)
    J         = sum_b log q(y_b | x_b, t) + beta * sum_b H2_hat(class of b)     (n x our objective)
    eps_tilde = eps_cfg - s * sqrt(1 - alphabar_t) * grad_x J                  (inside the window)
    x_{t-1}   = DDPM (learned range) or DDIM update with eps_tilde

The critics are noise-conditional, so the gradient never flows through the denoiser. The input
gradient is taken with ``torch.func.grad``: eager runs it as is, and the exporter traces it into
ordinary ops (make_fx), so exported engines compute exactly this function.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import StepConfig
from ..diffusion.schedule import Schedule
from ..diffusion.updates import cfg_combine, ddim_update, ddpm_update
from ..errors import UserError
from ..models.critics import NoiseCritic
from ..models.loading import denoiser_shape
from .bounds import class_log_prob, collision_entropy, knn_entropy


class GuidedStep(nn.Module):
    """(x_t, i, y, noise, memory, memory_mask) -> (x_{t-1}, features, log q, H2) for one schedule.

    x: (B, C, H, W) float32; i: integer step index (0-d or 1 element) into the respaced schedule (N-1 first);
    y: (B,) denoiser class labels; noise: (B, C, H, W) for the ancestral update;
    memory: (M, D) critic features of earlier samples at this step; memory_mask: (B, M).
    Returned features are the critic's at (x_t, t) and feed later batches' memory.
    """

    def __init__(self, denoiser: nn.Module, cfg: StepConfig, critic: NoiseCritic | None = None):
        super().__init__()
        self.cfg = cfg.validate()
        self.denoiser = denoiser
        self.schedule = Schedule.create(cfg.steps)
        self.num_classes = int(denoiser.num_classes)
        self.channels = int(denoiser.in_channels)
        self.shape = denoiser_shape(denoiser)  # (C, H, W) of the denoiser space
        self.learn_sigma = bool(denoiser.learn_sigma)
        for name, tab in self.schedule.tables().items():
            self.register_buffer(f"tab_{name}", tab, persistent=False)
        t = self.schedule.timesteps
        on = torch.tensor(((t >= cfg.window_lo) & (t <= cfg.window_hi)).astype("float32"))
        self.register_buffer("guide_on", on, persistent=False)
        self.critic = critic if cfg.guidance == "igds" else None
        if cfg.guidance == "igds":
            if critic is None:
                raise UserError("--guidance igds needs critics (--critics PATH); or pass --guidance off")
            check_critic_matches(critic, denoiser)
            lut = torch.full((self.num_classes + 1,), -1, dtype=torch.long)
            lut[torch.tensor(critic.config.class_ids)] = torch.arange(critic.config.num_classes)
            self.register_buffer("label_to_critic", lut, persistent=False)

    @property
    def tables(self) -> dict[str, torch.Tensor]:
        return {k[4:]: v for k, v in self.named_buffers() if k.startswith("tab_")}

    @property
    def feat_dim(self) -> int:
        return self.critic.config.feat_dim if self.critic is not None else 1

    def check_labels(self, labels: list[int] | torch.Tensor) -> None:
        """Refuse classes the denoiser or critic does not know, before any work starts."""
        labels = [int(v) for v in labels]
        bad = [v for v in labels if not 0 <= v < self.num_classes]
        if bad:
            raise UserError(f"class {bad[0]} is not in the model (it has classes 0..{self.num_classes - 1})")
        if self.critic is not None:
            missing = sorted({v for v in labels if int(self.label_to_critic[v]) < 0})
            if missing:
                raise UserError(
                    f"the critics were trained for other classes (label {missing[0]} is not among their "
                    f"{self.critic.config.num_classes}); train critics for these classes"
                )

    def eps(self, x: torch.Tensor, i: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Classifier-free guided eps and variance channels (one denoiser pass on 2B, or B at scale 1).
        ``i``: the 1-element step index (``step_index``)."""
        t = self.tab_timestep[i].expand(x.shape[0])
        dt = next(self.denoiser.parameters()).dtype
        if self.cfg.cfg_scale == 1.0:
            out = self.denoiser(x.to(dt), t, y).float()
            return cfg_combine(out, None, 1.0, self.channels, self.cfg.cfg_channels)
        null = torch.full_like(y, self.num_classes)
        out = self.denoiser(torch.cat([x, x]).to(dt), torch.cat([t, t]), torch.cat([y, null])).float()
        cond, uncond = out.chunk(2)
        return cfg_combine(cond, uncond, self.cfg.cfg_scale, self.channels, self.cfg.cfg_channels)

    def objective(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """n x J for the batch, and (features, log q, H2) per sample as auxiliaries."""
        critic = self.critic
        cidx = self.label_to_critic[y]
        logits, feats = critic(x, t)
        log_q = class_log_prob(logits, cidx)
        if self.cfg.entropy == "knn":
            h2 = knn_entropy(feats, y, memory, memory_mask)
        else:
            h2, _ = collision_entropy(feats, y, critic.sigma_for(t, cidx), memory, memory_mask)
        total = log_q.sum() + self.cfg.beta * h2.sum()
        return total, (feats.detach(), log_q.detach(), h2.detach())

    def guidance_grad(
        self,
        x: torch.Tensor,
        i: torch.Tensor,
        y: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """grad_x of n x J at (x_t, t), and the per-sample auxiliaries (features, log q, H2)."""
        b = x.shape[0]
        if memory is None or memory_mask is None:  # no earlier samples: an all-zero mask counts no pairs
            memory = torch.zeros(1, self.feat_dim, device=x.device)
            memory_mask = torch.zeros(b, 1, device=x.device)
        t = self.tab_timestep[i].expand(b)
        grad_fn = torch.func.grad(self.objective, has_aux=True)
        with torch.enable_grad():
            grad, (feats, log_q, h2) = grad_fn(x, t, y, memory.float(), memory_mask.float())
        return grad, feats, log_q, h2

    def guide(self, eps: torch.Tensor, grad: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """eps_tilde = eps - s_t * sqrt(1 - alphabar_t) * grad (s_t = 0 outside the window)."""
        s = self.cfg.guidance_scale * self.guide_on[i]
        return eps - s * self.tab_sqrt_one_minus_alphas_cumprod[i] * grad

    def update(
        self, x: torch.Tensor, eps: torch.Tensor, var: torch.Tensor | None, i: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """x_{t-1} from eps: DDIM(eta), or ancestral DDPM with the learned-range variance."""
        if self.cfg.sampler == "ddim":
            return ddim_update(x, eps, i, noise, self.tables, self.cfg.eta)
        return ddpm_update(x, eps, var if self.learn_sigma else None, i, noise, self.tables)

    def forward(
        self,
        x: torch.Tensor,
        i: torch.Tensor,
        y: torch.Tensor,
        noise: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x.float()
        i = step_index(i)
        y = y.long()
        eps, var = self.eps(x, i, y)
        if self.critic is not None:
            grad, feats, log_q, h2 = self.guidance_grad(x, i, y, memory, memory_mask)
            eps = self.guide(eps, grad, i)
        else:
            b = x.shape[0]
            feats = torch.zeros(b, 1, device=x.device)
            log_q = torch.zeros(b, device=x.device)
            h2 = torch.zeros(b, device=x.device)
        return self.update(x, eps, var, i, noise), feats, log_q, h2


def step_index(i: torch.Tensor | int) -> torch.Tensor:
    """The step index as a 1-element int64 tensor: ``table[i]`` is then a tensor gather, traceable as is."""
    return torch.as_tensor(i).long().reshape(1)


def check_critic_matches(critic: NoiseCritic, denoiser: nn.Module) -> None:
    """The critic must see the denoiser's input space (channels and size) and its label space."""
    c = critic.config
    if (c.in_channels, c.input_size) != (int(denoiser.in_channels), int(denoiser.input_size)):
        raise UserError(
            f"critics expect inputs {c.in_channels}x{c.input_size}x{c.input_size}, the denoiser works on "
            f"{denoiser.in_channels}x{denoiser.input_size}x{denoiser.input_size}; train critics for this denoiser"
        )
    if max(c.class_ids) >= int(denoiser.num_classes):
        raise UserError(
            f"critics use class label {max(c.class_ids)}, the denoiser has only {denoiser.num_classes} classes"
        )
