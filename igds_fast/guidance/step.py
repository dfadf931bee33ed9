"""The guided step: the one definition of x_t -> x_{t-1} that every backend runs.

    eps_cfg   = classifier-free guided eps of the denoiser (one pass on 2B)
    g_proto   = grad_x sum_b log q(y_b | x_t, t)                       the prototype term (I(X;Y))
    g_div     = grad of the diversity term: on the clean estimate x0_hat, its features f(x0_hat, t=0)
                repelled from their nearest same-class neighbours (batch + the class's final samples of
                earlier chunks): a soft minimum of cosine distances, gradient through x0_hat
    eps_tilde = eps_cfg - sqrt(1 - alphabar_t) * w_t * (s * n(g_proto) + beta * n(g_div))
    x_{t-1}   = DDPM (learned range) or DDIM update with eps_tilde

n(g) scales each sample's gradient to unit RMS, so s and beta are in units of eps (the two terms
have separate, comparable scales). w_t weights both terms by the critic's held-out Barber-Agakov
bound at t (``weighting="ba"``: 0 where the critic knows nothing, 1 where it knows most; both
terms read the critic); both act only inside the window [window_lo, window_hi]. Two guards then
edit eps_tilde through the clean estimate it implies: ``clip_guard`` moves x0_hat against the part of
its decoded pixels beyond [-1, 1] (``keep_decoded_in_range``, through the decoder); ``range_guard``
(pixel models) keeps it inside [-1, 1] (``keep_in_range``).

The critics are noise-conditional, so the gradient never flows through the denoiser (eps_cfg is a
constant of the gradient). Gradients are taken with ``torch.func.grad``: eager runs it as is, and
the exporter traces it into ordinary ops (make_fx), so exported engines compute exactly this.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..config import StepConfig
from ..diffusion.schedule import Schedule
from ..diffusion.updates import cfg_combine, ddim_update, ddpm_update, eps_from_x0, predict_x0
from ..errors import UserError
from ..models.critics import NoiseCritic
from ..models.loading import denoiser_shape
from ..models.vae import decode_unclipped
from .bounds import class_log_prob, soft_nearest_similarity


class GuidedStep(nn.Module):
    """(x_t, i, y, noise, memory, memory_mask) -> (x_{t-1}, features, log q, H2) for one schedule.

    x: (B, C, H, W) float32; i: integer step index (0-d or 1 element) into the respaced schedule (N-1 first);
    y: (B,) denoiser class labels; noise: (B, C, H, W) for the ancestral update;
    memory: (M, D) critic features of the class's earlier samples; memory_mask: (B, M).
    Returned features feed later chunks' memory: f(x0_hat, 0) (at the last step, of the unguided clean
    estimate: the final sample before that step's guidance).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        cfg: StepConfig,
        critic: NoiseCritic | None = None,
        pixel_space: bool = False,
        decoder: nn.Module | None = None,
    ):
        super().__init__()
        self.cfg = cfg.validate()
        # clip_guard reads the decoded clean estimate: the codec (a VAE, or PixelSpace's identity)
        clips = cfg.guidance == "igds" and cfg.clip_guard > 0
        self.decoder = decoder if clips else None
        if clips and decoder is None:
            raise UserError("--clip-guard reads the decoded images: pass the denoiser's --vae, or --clip-guard 0")
        # Images in [-1, 1]: guidance may not push the clean estimate out of that range (latents have none).
        self.range_guard = bool(pixel_space and cfg.range_guard)
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
        weight = (
            prototype_weights(critic, t) if cfg.guidance == "igds" and cfg.weighting == "ba" else torch.ones(len(t))
        )
        self.register_buffer("guide_weight", on * weight, persistent=False)
        if cfg.guidance == "igds":
            if critic is None:
                raise UserError("--guidance igds needs critics (--critics PATH); or pass --guidance off")
            check_critic_matches(critic, denoiser)
            lut = torch.full((self.num_classes + 1,), -1, dtype=torch.long)
            lut[torch.tensor(critic.config.class_ids)] = torch.arange(critic.config.num_classes)
            self.register_buffer("label_to_critic", lut, persistent=False)
        self.plain_steps = self.find_plain_steps(on)

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

    def critic_outputs(self, z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) in z's dtype of the critic run in its weights' dtype (a bf16 critic:
        the gradient w.r.t. the fp32 input flows back through the casts)."""
        logits, feats = self.critic(z.to(self.critic.dtype), t)
        return logits.to(z.dtype), feats.to(z.dtype)

    def joint_objective(
        self,
        x: torch.Tensor,
        x0: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        cidx: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """sum_b log q(y_b | x_t, t) + the diversity term of x0_hat, from one critic
        pass on the 2B inputs [x_t; x0_hat] (the critic treats samples independently, so the gradient
        w.r.t. x_t is the prototype term's and the one w.r.t. x0_hat the diversity term's)."""
        b = x.shape[0]
        logits, feats = self.critic_outputs(torch.cat([x, x0]), torch.cat([t, torch.zeros_like(t)]))
        log_q = class_log_prob(logits[:b], cidx)
        value = -soft_nearest_similarity(feats[b:], y, memory, memory_mask)  # higher = farther from neighbours
        return log_q.sum() + value.sum(), (feats[b:].detach(), log_q.detach(), value.detach())

    def guidance_grad(
        self,
        x: torch.Tensor,
        i: torch.Tensor,
        y: torch.Tensor,
        eps: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(g_proto, g_div, features, log q, diversity value): both gradients w.r.t. x_t, unscaled."""
        b = x.shape[0]
        if memory is None or memory_mask is None:  # no earlier samples: an all-zero mask counts no pairs
            memory = torch.zeros(1, self.feat_dim, device=x.device)
            memory_mask = torch.zeros(b, 1, device=x.device)
        memory, memory_mask = memory.float(), memory_mask.float()
        t = self.tab_timestep[i].expand(b)
        cidx = self.label_to_critic[y]
        with torch.enable_grad():
            # d x0_hat / d x_t = 1/sqrt(alphabar) (eps is a constant): a positive scalar, which the
            # per-sample normalisation of the guided step removes; so differentiate in x0_hat.
            x0 = predict_x0(x, eps, i, self.tables)
            (g_proto, g_div), (feats, log_q, value) = torch.func.grad(
                self.joint_objective, argnums=(0, 1), has_aux=True
            )(x, x0, t, y, cidx, memory, memory_mask)
        return g_proto, g_div, feats, log_q, value

    def guide(self, eps: torch.Tensor, g_proto: torch.Tensor, g_div: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """eps_tilde = eps - sqrt(1 - alphabar_t) * w_t * (s * n(g_proto) + beta * n(g_div)), 0 outside the window."""
        w = self.guide_weight[i]  # the critic's informativeness at t: both terms use its features
        s, beta = self.cfg.guidance_scale * w, self.cfg.beta * w
        shift = s * unit_rms(g_proto) + beta * unit_rms(g_div)
        return eps - self.tab_sqrt_one_minus_alphas_cumprod[i] * shift

    def keep_in_range(self, x: torch.Tensor, eps: torch.Tensor, guided: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """The guided eps, except where it would move the clean estimate x0_hat outside [-1, 1] (or
        further outside, where the unguided estimate already is): there x0_hat stops at the edge."""
        x0_free = predict_x0(x, eps, i, self.tables)
        lo = torch.minimum(x0_free, torch.full_like(x0_free, -1.0))
        hi = torch.maximum(x0_free, torch.ones_like(x0_free))
        return self.keep_within(x, guided, i, lo, hi)

    def keep_decoded_in_range(self, x: torch.Tensor, guided: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """The guided eps, with x0_hat moved against r, its decoded pixels' excess beyond [-1, 1]:
        x0_hat - clip_guard * (|r|^2 / |J^T r|^2) * J^T r per sample (J^T r: the gradient of |r|^2 / 2),
        inside the window, the move capped at clip_guard * |x0_hat|. The step length removes all of r
        where the decoder is a scaled isometry (a pixel model at clip_guard 1: x0_hat clamped); an image
        with nothing to clip is unchanged."""
        x0 = predict_x0(x, guided, i, self.tables)
        # math attention in a VAE's mid-block: its backward is plain ops (the fused kernels' has no ONNX form)
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            g, r2 = torch.func.grad(self.excess_objective, has_aux=True)(x0)
        g_norm = g.flatten(1).norm(dim=1)
        # |J^T r| can be tiny where the decoder barely responds: the move c |g| never exceeds
        # clip_guard * |x0_hat| (a pixel model's never does; the embedded model's largest was 0.056 |x0_hat|)
        c = self.cfg.clip_guard * torch.minimum(
            r2 / g_norm.pow(2).clamp_min(1e-20), x0.flatten(1).norm(dim=1) / g_norm.clamp_min(1e-10)
        )
        # x0_hat = a x_t - b eps, so moving x0_hat by -c g moves eps by +c g / b: written on eps, the
        # edit is exactly nothing outside the window (``plain_steps`` relies on it)
        c = (c * self.guide_on[i]).view((-1,) + (1,) * (x0.dim() - 1))
        return guided + c * g / self.tab_sqrt_recipm1_alphas_cumprod[i]

    def excess_objective(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """|r|^2 / 2 summed over the batch, and |r|^2 per sample: r = D(x0) - clamp(D(x0), -1, 1)."""
        images = decode_unclipped(self.decoder, x0).to(x0.dtype)
        excess = images - images.clamp(-1, 1)
        r2 = excess.pow(2).flatten(1).sum(1)
        return 0.5 * r2.sum(), r2.detach()

    def keep_within(
        self, x: torch.Tensor, guided: torch.Tensor, i: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
    ) -> torch.Tensor:
        """The eps whose clean estimate is the guided one's clipped to [lo, hi] (broadcast)."""
        x0 = torch.maximum(torch.minimum(predict_x0(x, guided, i, self.tables), hi), lo)
        return eps_from_x0(x, x0, i, self.tables)

    def find_plain_steps(self, on: torch.Tensor) -> frozenset[int]:
        """``plain_steps``: the step indices where ``forward`` returns exactly what ``plain`` does for
        x_{t-1}: outside the window (``on`` 0) the guidance and the clip guard add exactly zero to eps.
        Never index 0 (its features and log q are what a set records), and none when the pixel range
        guard edits eps there too (it recomputes eps through x0_hat)."""
        if self.critic is None or self.range_guard:
            return frozenset()
        return frozenset(k for k in range(1, len(on)) if on[k] == 0)

    def plain(
        self, x: torch.Tensor, i: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, *_memory: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The step without the critic (no guidance work; memory inputs ignored): x_{t-1} of ``forward``
        at a ``plain_steps`` index, with zero features, log q and H2 (unused there: both terms weigh 0
        outside the window)."""
        x, i = x.float(), step_index(i)
        eps, var = self.eps(x, i, y.long())
        b = x.shape[0]
        zeros = torch.zeros(b, device=x.device)
        return self.update(x, eps, var, i, noise), torch.zeros(b, self.feat_dim, device=x.device), zeros, zeros

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
            g_proto, g_div, feats, log_q, h2 = self.guidance_grad(x, i, y, eps, memory, memory_mask)
            guided = self.guide(eps, g_proto, g_div, i)
            if self.decoder is not None:
                guided = self.keep_decoded_in_range(x, guided, i)
            eps = self.keep_in_range(x, eps, guided, i) if self.range_guard else guided
        else:
            b = x.shape[0]
            feats = torch.zeros(b, 1, device=x.device)
            log_q = torch.zeros(b, device=x.device)
            h2 = torch.zeros(b, device=x.device)
        return self.update(x, eps, var, i, noise), feats, log_q, h2


def unit_rms(g: torch.Tensor) -> torch.Tensor:
    """Each sample's gradient scaled to unit RMS (an all-zero gradient stays zero)."""
    rms = g.pow(2).mean(dim=tuple(range(1, g.dim())), keepdim=True).sqrt()
    return g / rms.clamp_min(1e-12)


# A critic whose best held-out bound is below this many nats gets proportionally weaker guidance
# everywhere (both shipped critics reach 0.8-0.9 nats at low t, so their weights are unchanged).
CONFIDENT_BOUND_NATS = 0.5


def prototype_weights(critic: NoiseCritic, timesteps: object) -> torch.Tensor:
    """w_t = max(0, BA_t) / max(max_t BA_t, CONFIDENT_BOUND_NATS) from the critic's held-out bound
    per t bucket (its metrics): zero where it is at chance, full where it knows most, and weaker
    everywhere for a critic that knows little anywhere. 1 everywhere for a critic without measured
    buckets (then guidance is not weighted)."""
    buckets = ((getattr(critic, "metrics", None) or {}).get("trained") or {}).get("buckets") or []
    if not buckets:
        return torch.ones(len(timesteps))
    best = max(max(b["ba_bound_nats"] for b in buckets), CONFIDENT_BOUND_NATS)
    out = []
    for t in timesteps:
        hit = [b for b in buckets if b["t"][0] <= int(t) <= b["t"][1]]
        out.append(max(0.0, hit[0]["ba_bound_nats"]) / best if hit else 0.0)
    return torch.tensor(out, dtype=torch.float32)


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
