"""IGDS guidance: the guided step's gradient, the bounds, beta(IPC), and that guidance moves
the bounds the right way with a critic trained on real Imagenette."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from igds_fast.backends.io import rel_error
from igds_fast.diffusion.schedule import Schedule
from igds_fast.diffusion.updates import predict_x0
from igds_fast.errors import UserError
from igds_fast.guidance.bounds import (
    barber_agakov,
    class_log_prob,
    soft_nearest_similarity,
)
from igds_fast.guidance.step import (
    CONFIDENT_BOUND_NATS,
    GuidedStep,
    StepConfig,
    prototype_weights,
    unit_rms,
)
from igds_fast.models.critics import CriticConfig, NoiseCritic, load_critic, save_critic
from igds_fast.models.dit import DiT, DiTConfig
from igds_fast.sampling import run_chain
from igds_fast.seeds import SampleNoise, sample_seed
from igds_fast.subsets import subset
from igds_fast.training.train_critic import TrainCriticConfig, train_critic

from .conftest import DATA_ROOT, randomize_

pytestmark = pytest.mark.usefixtures("single_thread")

DATA = DATA_ROOT / "imagenette-64"
WNIDS = [c.wnid for c in subset("imagenette")]


def small_dit(size: int = 16, seed: int = 0) -> DiT:
    dit = DiT(
        DiTConfig(
            input_size=size,
            patch_size=4,
            in_channels=3,
            hidden_size=48,
            depth=2,
            num_heads=2,
            num_classes=10,
            wnids=WNIDS,
        )
    )
    return randomize_(dit, seed, scale=0.3).eval().requires_grad_(False)


class GaussianDenoiser(torch.nn.Module):
    """The exact eps-predictor for data ~ N(0, sd^2 I): a fixed denoiser whose samples have a sane
    scale, so that what guidance changes is all that changes (variance channels at mid-range)."""

    def __init__(self, size: int = 16, sd: float = 0.5):
        super().__init__()
        self.num_classes, self.in_channels, self.input_size, self.learn_sigma = 10, 3, size, True
        self.sd = sd
        self.register_buffer("abar", torch.tensor(Schedule.create(1000).alphas_cumprod, dtype=torch.float32))
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ab = self.abar[t.long()].reshape(-1, 1, 1, 1)
        eps = (1 - ab).sqrt() * x / (ab * self.sd**2 + 1 - ab)
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)


def random_critic(size: int = 16, seed: int = 1, arch: str = "vit") -> NoiseCritic:
    c = NoiseCritic(
        CriticConfig(
            in_channels=3,
            input_size=size,
            patch_size=4,
            width=32 if arch == "vit" else 8,
            depth=1,
            heads=2,
            arch=arch,
            feat_dim=8,
            class_ids=list(range(10)),
            wnids=WNIDS,
        )
    )
    randomize_(c, seed)
    c.kernel_sigma.uniform_(0.3, 1.0)
    return c.eval().requires_grad_(False)


def _fd_check(fn, z: torch.Tensor, grad: torch.Tensor, g: torch.Generator) -> None:
    for _ in range(3):
        d = torch.randn(z.shape, generator=g, dtype=torch.float64)
        h = 1e-6
        fd = (fn(z + h * d)[0] - fn(z - h * d)[0]) / (2 * h)
        analytic = (grad * d).sum()
        assert torch.isfinite(analytic)
        assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(float(analytic)))


@pytest.mark.parametrize("arch", ["vit", "conv"])
def test_guidance_gradients_match_float64_finite_differences(arch):
    cfg = StepConfig(steps="10", guidance="igds", guidance_scale=1.0, beta=0.7, window_hi=999, clip_guard=0.0)
    step = GuidedStep(small_dit(), cfg, random_critic(arch=arch)).double()
    g = torch.Generator().manual_seed(torch.seed() % 2**31)  # fresh inputs every run
    x = torch.randn(6, 3, 16, 16, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, 16, 16, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    mem = torch.nn.functional.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=1)
    mask = torch.tensor([[1, 1, 0, 0]] * 3 + [[0, 0, 1, 0]] * 2 + [[0, 0, 0, 1]], dtype=torch.float64)
    i = torch.tensor([4])
    t = step.tab_timestep[i].double().expand(6)
    cidx = step.label_to_critic[y]
    g_proto, g_div, _, _, _ = step.guidance_grad(x, i, y, eps, mem, mask)
    # The diversity term is differentiated in x0_hat = sqrt(1/abar) x - sqrt(1/abar - 1) eps, held fixed
    # while the prototype term's input x_t moves, and the other way round.
    x0 = step.tab_sqrt_recip_alphas_cumprod[4].double() * x - step.tab_sqrt_recipm1_alphas_cumprod[4].double() * eps
    _fd_check(lambda z: step.joint_objective(z, x0, t, y, cidx, mem, mask), x, g_proto, g)
    _fd_check(lambda z: step.joint_objective(x, z, t, y, cidx, mem, mask), x0, g_div, g)
    assert float(g_div.abs().sum()) > 0 and float(g_proto.abs().sum()) > 0


def test_conv_critic_roundtrips_and_files_without_an_arch_load_as_vit(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    conv = random_critic(arch="conv")
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0.0, 500.0, 999.0])
    back = load_critic(save_critic(conv, tmp_path / "conv.safetensors"))
    assert back.config.arch == "conv" and hasattr(back, "stages") and not hasattr(back, "blocks")
    assert all(torch.equal(a, b) for a, b in zip(conv(x, t), back(x, t), strict=True))
    assert float((conv(x, t)[0] - conv(x, t.flip(0))[0]).abs().max()) > 1e-3  # t modulates the trunk
    # A file written before --arch existed (no "arch" in its config) is the vit it always was.
    vit = save_critic(random_critic(), tmp_path / "vit.safetensors")
    with safe_open(str(vit), "pt") as f:
        meta = dict(f.metadata())
    cfg = json.loads(meta["config"])
    del cfg["arch"]
    save_file(load_file(str(vit)), str(tmp_path / "old.safetensors"), metadata={**meta, "config": json.dumps(cfg)})
    assert load_critic(tmp_path / "old.safetensors").config.arch == "vit"
    # A vit critic draws its initial weights in the first critics' order (patch_in, pos, t_mlp, blocks),
    # so a seed gives the weights it always gave and the shipped recipe retrains to the same critic.
    cfg = CriticConfig(in_channels=4, input_size=8, patch_size=2, width=16, depth=1, heads=2, class_ids=[0, 1])
    torch.manual_seed(0)
    critic = NoiseCritic(cfg)
    torch.manual_seed(0)
    patch_in, pos, t_in = torch.nn.Linear(16, 16), torch.randn(1, 16, 16) * 0.02, torch.nn.Linear(256, 16)
    assert torch.equal(critic.patch_in.weight, patch_in.weight) and torch.equal(critic.pos, pos)
    assert torch.equal(critic.t_mlp[0].weight, t_in.weight)


def test_critic_training_resumes_a_vit_state_saved_before_arch_existed():
    from igds_fast.training.train_critic import config_key, resumable_config

    vit = random_critic().config
    old = json.loads(config_key(vit))
    del old["arch"]
    old = json.dumps(old, sort_keys=True)
    assert resumable_config(config_key(vit), vit) and resumable_config(old, vit)
    conv = dataclasses.replace(vit, arch="conv")
    assert not resumable_config(old, conv) and not resumable_config(config_key(vit), conv)
    assert not resumable_config(config_key(dataclasses.replace(vit, width=64)), vit)


def test_guided_eps_is_cfg_eps_minus_normalised_terms():
    """x_prev = DDPM(eps_cfg - sqrt(1-abar) w_t (s n(g_proto) + beta n(g_div))), and only in the window."""
    dit, critic = small_dit(), random_critic()
    s, beta = 3.0, 0.5
    cfg = StepConfig(
        steps="10",
        guidance="igds",
        guidance_scale=s,
        beta=beta,
        window_lo=300,
        window_hi=999,
        clip_guard=0.0,
    )
    step, off = GuidedStep(dit, cfg, critic), GuidedStep(dit, StepConfig(steps="10", guidance="off"))
    x, noise = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    y = torch.tensor([3, 3, 5, 5])
    sched = Schedule.create("10")
    for i in (9, 5, 0):
        out = step(x, torch.tensor(i), y, noise)[0]
        ii = torch.tensor([i])
        eps, _ = off.eps(x, ii, y)
        g_proto, g_div, *_ = step.guidance_grad(x, ii, y, eps)
        assert abs(float(unit_rms(g_proto).pow(2).mean()) - 1) < 1e-4
        in_window = 300 <= sched.timesteps[i] <= 999
        # The update is affine in eps: x_prev(eps - d) = x_prev(eps) - coef * d, coef = c1 * sqrt(1/abar - 1).
        coef = float(sched.posterior_mean_coef1[i] * math.sqrt(1 / sched.alphas_cumprod[i] - 1))
        w = float(step.guide_weight[i])
        shift = math.sqrt(1 - sched.alphas_cumprod[i]) * w * (s * unit_rms(g_proto) + beta * unit_rms(g_div))
        if not in_window:
            shift = torch.zeros_like(shift)
        ref = off(x, torch.tensor(i), y, noise)[0] + coef * shift
        assert torch.linalg.norm(out - ref) / torch.linalg.norm(ref) < 1e-5
        assert in_window == bool((out - off(x, torch.tensor(i), y, noise)[0]).abs().max() > 0)


def test_prototype_weights_follow_the_critics_bound():
    critic = random_critic()
    critic.metrics = {
        "trained": {"buckets": [{"t": [0, 499], "ba_bound_nats": 0.8}, {"t": [500, 999], "ba_bound_nats": -0.1}]}
    }
    w = prototype_weights(critic, [999, 600, 400, 0])
    assert w.tolist() == [0.0, 0.0, 1.0, 1.0]  # negative bound: no guidance; best bucket: full scale
    # a critic that knows little anywhere (best bound 0.1 nats) guides weakly everywhere
    critic.metrics = {
        "trained": {"buckets": [{"t": [0, 499], "ba_bound_nats": 0.1}, {"t": [500, 999], "ba_bound_nats": 0.05}]}
    }
    w = prototype_weights(critic, [999, 0]).tolist()
    assert w == pytest.approx([0.05 / CONFIDENT_BOUND_NATS, 0.1 / CONFIDENT_BOUND_NATS], rel=1e-6)
    critic.metrics = {}
    assert prototype_weights(critic, [999, 0]).tolist() == [1.0, 1.0]  # no measurement: unweighted


def test_soft_nearest_similarity():
    z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 0, 1])
    s = soft_nearest_similarity(z, labels, temperature=1e-3)
    assert abs(float(s[0]) - float(z[0] @ z[1])) < 1e-3  # a hard max at low temperature
    assert float(s[3]) == 0.0  # alone in its class, no memory: no term
    mem = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0]]), dim=1)
    s = soft_nearest_similarity(z, labels, mem, torch.tensor([[0.0], [0.0], [0.0], [1.0]]), temperature=1e-3)
    assert abs(float(s[3]) - 1.0) < 1e-3  # its memory twin counts


def test_barber_agakov_bound_and_class_log_prob():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    lq = class_log_prob(logits, torch.tensor([0, 1]))
    assert torch.allclose(lq, torch.log_softmax(logits, -1).diagonal())
    assert barber_agakov(torch.zeros(4), torch.tensor([0, 1, 0, 1]), 2) == pytest.approx(math.log(2))


def test_critics_that_do_not_fit_the_denoiser_are_refused():
    dit = small_dit()
    wrong_size = NoiseCritic(
        CriticConfig(
            in_channels=3, input_size=8, patch_size=4, width=16, depth=1, heads=2, class_ids=[0, 1], wnids=WNIDS[:2]
        )
    )
    with pytest.raises(UserError, match=r"critics expect inputs 3x8x8, the denoiser works on 3x16x16"):
        GuidedStep(dit, StepConfig(clip_guard=0.0), wrong_size)
    latent = NoiseCritic(
        CriticConfig(
            in_channels=4, input_size=16, patch_size=4, width=16, depth=1, heads=2, class_ids=[0, 1], wnids=WNIDS[:2]
        )
    )
    with pytest.raises(UserError, match="critics expect inputs 4x16x16"):
        GuidedStep(dit, StepConfig(clip_guard=0.0), latent)
    two = NoiseCritic(
        CriticConfig(
            in_channels=3, input_size=16, patch_size=4, width=16, depth=1, heads=2, class_ids=[0, 1], wnids=WNIDS[:2]
        )
    )
    step = GuidedStep(dit, StepConfig(clip_guard=0.0), two)
    with pytest.raises(UserError, match="critics were trained for other classes"):
        step.check_labels([0, 1, 7])
    with pytest.raises(UserError, match="needs critics"):
        GuidedStep(dit, StepConfig(clip_guard=0.0), None)


# --- with a critic trained on real data --------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[torch.nn.Module, NoiseCritic]:
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA} (set IGDS_DATA)")
    dit = small_dit()  # only its input space and class names matter to the critic
    out = tmp_path_factory.mktemp("critic")
    cfg = TrainCriticConfig(
        data=str(DATA / "train"),
        val=str(DATA / "val"),
        wnids=WNIDS,
        out=str(out),
        steps=250,
        batch_size=64,
        lr=2e-3,
        width=64,
        depth=2,
        heads=2,
        feat_dim=16,
        eval_images=300,
    )
    path = train_critic(cfg, dit, _pixel(), progress=False)
    return GaussianDenoiser(), load_critic(path).requires_grad_(False)


def _pixel():
    from igds_fast.models.vae import PixelSpace

    return PixelSpace()


def test_information_bound_positive_rises_with_training_and_below_ln_k(trained):
    _, critic = trained
    m = critic.metrics
    trained_bound, untrained_bound = m["trained"]["ba_bound_nats"], m["untrained"]["ba_bound_nats"]
    assert 0 < trained_bound < math.log(10)
    assert trained_bound > untrained_bound + 0.05
    for b in m["trained"]["buckets"]:
        assert b["ba_bound_nats"] <= math.log(10) + 1e-9
    low_t = m["trained"]["buckets"][0]
    assert low_t["acc"] > 0.2  # well above chance (0.1) on clean-ish held-out images


def _final_bounds(step: GuidedStep, critic: NoiseCritic, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean log q(y|x) and the mean soft nearest-neighbour similarity of final samples, scored by
    the critic at t = 0 (lower similarity: a more spread-out class)."""
    t = torch.zeros(len(x))
    with torch.no_grad():
        logits, feats = critic(x, t)
        cidx = step.label_to_critic[y]
        return float(class_log_prob(logits, cidx).mean()), float(soft_nearest_similarity(feats, y).mean())


def _sample(dit: torch.nn.Module, critic: NoiseCritic, scale: float, beta: float) -> tuple[float, float]:
    cfg = StepConfig(
        steps="10",
        cfg_scale=1.0,
        guidance="igds",
        guidance_scale=scale,
        beta=beta,
        window_hi=999,
        clip_guard=0.0,
    )
    step = GuidedStep(dit, cfg, critic)
    y = torch.tensor([2] * 8)
    noise = SampleNoise([sample_seed(7, 2, k) for k in range(8)], (3, 16, 16))
    res = run_chain(step, 10, y, noise)
    assert torch.isfinite(res.x0).all()
    return _final_bounds(step, critic, res.x0, y)


def test_prototype_guidance_raises_log_q(trained):
    dit, critic = trained
    lq_off, _ = _sample(dit, critic, scale=0.0, beta=0.0)
    lq_on, _ = _sample(dit, critic, scale=0.5, beta=0.0)
    assert lq_on > lq_off + 0.1, (lq_off, lq_on)


def test_diversity_term_spreads_the_class(trained):
    dit, critic = trained
    _, sim_zero = _sample(dit, critic, scale=0.5, beta=0.0)
    _, sim_beta = _sample(dit, critic, scale=0.5, beta=0.5)
    assert sim_beta < sim_zero - 0.02, (sim_zero, sim_beta)


def test_range_guard_keeps_the_clean_estimate_in_the_image_range():
    """Pixel space: where guidance would push x0_hat past [-1, 1] it stops at the edge; elsewhere the
    guided eps is unchanged; latent models are not guarded."""
    cfg = StepConfig(
        steps="10", guidance="igds", guidance_scale=50.0, beta=0.0, weighting="flat", window_hi=999, clip_guard=0.0
    )
    step = GuidedStep(small_dit(), cfg, random_critic(), pixel_space=True)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 16, 16, generator=g)
    i = torch.tensor([5])
    eps = torch.randn(4, 3, 16, 16, generator=g)
    guided = eps - 3 * torch.randn(4, 3, 16, 16, generator=g)
    kept = step.keep_in_range(x, eps, guided, i)
    a, b = step.tab_sqrt_recip_alphas_cumprod[5], step.tab_sqrt_recipm1_alphas_cumprod[5]
    free, x0 = a * x - b * eps, a * x - b * kept
    assert bool((x0 <= torch.clamp(free, min=1.0) + 1e-5).all() and (x0 >= torch.clamp(free, max=-1.0) - 1e-5).all())
    inside = (a * x - b * guided).abs() <= 1
    assert torch.allclose(kept[inside], guided[inside], atol=1e-5)
    assert not GuidedStep(small_dit(), cfg, random_critic(), pixel_space=False).range_guard


def tiny_vae(seed: int = 3) -> torch.nn.Module:
    """A random 3-channel AutoencoderKL (16 px images <-> 3x8x8 latents) with a wide output, so its
    decoded images leave [-1, 1]."""
    from igds_fast.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
    from igds_fast.models.vae import LatentVAE

    conf = AutoencoderKLConfig(block_out_channels=(8, 8), latent_channels=3, norm_num_groups=4, sample_size=16)
    torch.manual_seed(seed)
    vae = AutoencoderKL(conf)
    randomize_(vae, seed, scale=3.0)
    return LatentVAE(vae).eval()


def test_clip_guard_on_a_pixel_model_clamps_the_clean_estimate():
    """Pixel space (the identity decoder): clip_guard 1 clamps the guided x0_hat to [-1, 1], 0.5 moves
    each excess halfway, in-range values and steps outside the window are untouched."""
    from igds_fast.models.vae import PixelSpace

    g = torch.Generator().manual_seed(9)
    x, eps = torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 3, 16, 16, generator=g)
    guided = eps - 3 * torch.randn(4, 3, 16, 16, generator=g)
    for frac in (1.0, 0.5):
        cfg = StepConfig(
            steps="10", guidance="igds", weighting="flat", window_hi=500, clip_guard=frac, guidance_scale=1.0, beta=0.0
        )
        step = GuidedStep(small_dit(), cfg, random_critic(), pixel_space=True, decoder=PixelSpace())
        i = torch.tensor([3])  # t = 300: inside the window
        a, b = step.tab_sqrt_recip_alphas_cumprod[3], step.tab_sqrt_recipm1_alphas_cumprod[3]
        x0_guided = a * x - b * guided
        assert bool((x0_guided.abs() > 1).any())
        x0 = a * x - b * step.keep_decoded_in_range(x, guided, i)
        want = x0_guided - frac * (x0_guided - x0_guided.clamp(-1, 1))
        assert rel_error(x0, want) < 1e-5, frac
        outside = torch.tensor([8])  # t = 800
        assert torch.allclose(step.keep_decoded_in_range(x, guided, outside), guided, atol=1e-6)


def test_clip_guard_through_a_vae_shrinks_what_the_decoder_clips():
    """A latent model: the guarded clean estimate decodes to less excess beyond [-1, 1] than the guided
    one, the more so at a larger clip_guard; a latent step without its VAE is refused, naming the flag."""
    vae = tiny_vae()
    g = torch.Generator().manual_seed(10)
    x, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    i = torch.tensor([1])

    def excess(step: GuidedStep, e: torch.Tensor) -> float:
        with torch.no_grad():
            img = vae.decode(predict_x0(x, e, i, step.tables))
        return float((img - img.clamp(-1, 1)).pow(2).sum())

    left = []
    for frac in (0.0, 0.3, 1.0):
        cfg = StepConfig(
            steps="10", guidance="igds", weighting="flat", clip_guard=frac, guidance_scale=1.0, beta=0.0, window_hi=999
        )
        step = GuidedStep(small_dit(8), cfg, random_critic(8), decoder=vae)
        with torch.no_grad():
            kept = eps if frac == 0 else step.keep_decoded_in_range(x, eps, i)
        left.append(excess(step, kept))
    assert left[0] > 0 and left[2] < left[1] < left[0], left
    with pytest.raises(UserError, match="--clip-guard"):
        GuidedStep(small_dit(8), StepConfig(clip_guard=0.5), random_critic(8))


def test_critic_augmentation_translates_each_sample_with_reflection():
    """random_shift: every output sample is its input moved by one offset in [-2, 2]^2, reflected at the
    border (as numpy's 'reflect' pad, then a crop); all 25 offsets occur; shift 0 is the identity."""
    import numpy as np

    from igds_fast.training.train_critic import random_shift

    x = torch.randn(400, 3, 6, 5)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(random_shift(x, 0, g), x)
    out = random_shift(x, 2, g).numpy()
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    seen = set()
    for k in range(len(x)):
        hits = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(out[k], padded[k, :, 2 + dy : 2 + dy + 6, 2 + dx : 2 + dx + 5])
        ]
        assert len(hits) == 1, k
        seen.add(hits[0])
    assert len(seen) == 25


def test_critic_timesteps_favour_low_noise_as_the_power_says():
    from igds_fast.training.train_critic import sample_t

    g = torch.Generator().manual_seed(0)
    for power, below_300 in ((1.0, 0.3), (2.0, math.sqrt(0.3))):
        t = sample_t(200_000, power, g, torch.device("cpu"))
        assert int(t.min()) >= 0 and int(t.max()) <= 999 and t.dtype == torch.int64
        assert float((t < 300).float().mean()) == pytest.approx(below_300, abs=0.005)


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_plain_steps_outside_the_window_sample_the_same_bits(clip: float):
    """Running ``plain`` (no critic) at ``plain_steps`` gives the full step's samples bit for bit, and
    its last-step features, log q and H2: outside the window guidance and clip guard add exactly zero.
    Index 0 is never plain; the pixel range guard, which edits eps everywhere, disables it."""
    cfg = StepConfig(steps="10", guidance="igds", guidance_scale=2.0, beta=0.5, window_hi=300, clip_guard=clip)
    step = GuidedStep(small_dit(), cfg, random_critic(), decoder=tiny_vae() if clip else None)
    assert step.plain_steps and 0 not in step.plain_steps
    assert step.plain_steps == frozenset(k for k in range(10) if int(step.tab_timestep[k]) > 300)
    y = torch.tensor([2, 2, 3, 3])
    g = torch.Generator().manual_seed(4)
    memory = (torch.randn(5, 8, generator=g), torch.ones(4, 5))
    calls = []

    def counted(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        calls.append(int(args[1]))
        return step.plain(*args)

    runs = [
        run_chain(
            step,
            10,
            y,
            SampleNoise([sample_seed(3, int(v), k) for k, v in enumerate(y)], (3, 16, 16)),
            memory=lambda i: memory,
            **extra,
        )  # fmt: skip
        for extra in ({}, {"plain": counted, "plain_steps": step.plain_steps})
    ]
    assert len(calls) == len(step.plain_steps)  # the fast run did take the plain path
    full, fast = runs
    assert torch.equal(full.x0, fast.x0) and torch.isfinite(full.x0).all()
    assert torch.equal(full.feats[0], fast.feats[0]) and torch.equal(full.log_q, fast.log_q)
    assert torch.equal(full.h2, fast.h2)
    assert not GuidedStep(
        small_dit(), dataclasses.replace(cfg, clip_guard=0.0), random_critic(), pixel_space=True
    ).plain_steps


def test_clip_guard_without_guidance_is_checked_then_dropped():
    """As beta: --guidance off records no clip guard (one digest and engine for guidance off), but a
    bad value is still refused, naming the flag."""
    from igds_fast.config import step_config

    assert step_config({"guidance": "off", "clip_guard": 0.5}).clip_guard == 0.0
    assert step_config({"clip_guard": 0.2}).clip_guard == 0.2
    with pytest.raises(UserError, match="--clip-guard"):
        step_config({"guidance": "off", "clip_guard": 1.5})


def test_the_dataclass_is_the_shipped_step():
    """StepConfig() is the step a default distill runs; options lay over it and only where given."""
    from igds_fast.config import CLIP_GUARD, DIVERSITY_WEIGHT, GUIDANCE_SCALE, GUIDANCE_WINDOW_HI, step_config

    shipped = StepConfig()
    assert (shipped.guidance_scale, shipped.beta, shipped.window_hi, shipped.clip_guard) == (
        GUIDANCE_SCALE,
        DIVERSITY_WEIGHT,
        GUIDANCE_WINDOW_HI,
        CLIP_GUARD,
    )
    assert step_config() == step_config(None, {"beta": None}) == shipped
    assert step_config({"steps": 10}, {"cfg_channels": "all"}) == dataclasses.replace(
        shipped, steps="10", cfg_channels=None
    )
    off = step_config({"guidance": "off"})
    assert (off.beta, off.clip_guard) == (0.0, 0.0) and StepConfig(guidance="off").validate() == off


@pytest.mark.parametrize(
    "retired",
    [
        ("moment_guard", True),
        ("spread_guard", True),
        ("envelope_guard", True),
        ("diversity", "collision"),
        ("diversity", "knn"),
    ],
)
def test_retired_options_read_at_their_neutral_value_and_are_refused_otherwise(retired):
    """Options removed from the product: a recipe or record holding one at the value every shipped step
    used reads as today's step; any other value is refused with a one-line reason naming the option."""
    from igds_fast.config import RETIRED_STEP_FIELDS, complete_step, step_config, step_identity

    name, value = retired
    neutral = {name: RETIRED_STEP_FIELDS[name]}
    assert step_config(neutral) == StepConfig()
    recorded = StepConfig().to_dict() | neutral
    assert complete_step(recorded) == StepConfig().to_dict()
    assert step_identity(recorded) == StepConfig().identity()
    for read in (step_config, complete_step, step_identity):
        with pytest.raises(UserError, match=f"{name}={value!r}.*no longer has") as e:
            read({name: value})
        assert "\n" not in str(e.value)
    assert not hasattr(StepConfig(), name)
