"""Schedule tables and update rules against float64 references written out here from the formulas
of DiT's gaussian_diffusion.py / respace.py (not calling the library)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from igds_fast.diffusion.schedule import Schedule, linear_betas, respaced_timesteps
from igds_fast.diffusion.updates import cfg_combine, ddim_update, ddpm_update
from igds_fast.errors import UserError
from igds_fast.guidance.step import GuidedStep, StepConfig
from tests.conftest import rel_err

pytestmark = pytest.mark.usefixtures("single_thread")
T = 1000
SPECS = ["50", "25", "10,15", "ddim50", "250", "ddim25", "7,3,1", "1000"]


# ----------------------------------------------------------------------------- references
def ref_timesteps(spec: str) -> list[int]:
    if spec.startswith("ddim"):
        n = int(spec[4:])
        stride = next(s for s in range(1, T) if math.ceil(T / s) == n)
        return list(range(0, T, stride))
    counts = [int(c) for c in spec.split(",")]
    per, extra = T // len(counts), T % len(counts)
    out, start = [], 0
    for k, n in enumerate(counts):
        size = per + (k < extra)
        stride = 1.0 if n == 1 else (size - 1) / (n - 1)
        pos = 0.0
        for _ in range(n):
            out.append(start + round(pos))
            pos += stride
        start += size
    return sorted(set(out))


def ref_tables(spec: str) -> dict[str, np.ndarray]:
    """float64 tables of a respaced linear schedule, computed in log space step by step."""
    beta = [1e-4 + (0.02 - 1e-4) * k / (T - 1) for k in range(T)]
    log_ab = np.cumsum([math.log1p(-b) for b in beta])
    keep = ref_timesteps(spec)
    ab = np.exp(log_ab[keep])
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    betas = 1.0 - ab / ab_prev
    post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
    log_clip = np.log(np.concatenate([[post_var[1]], post_var[1:]]))
    return {
        "timesteps": np.array(keep, dtype=np.float64),
        "betas": betas,
        "alphas_cumprod": ab,
        "alphas_cumprod_prev": ab_prev,
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": log_clip,
        "posterior_mean_coef1": betas * np.sqrt(ab_prev) / (1.0 - ab),
        "posterior_mean_coef2": (1.0 - ab_prev) * np.sqrt(1.0 - betas) / (1.0 - ab),
    }


def ref_ddpm(x, out, ref: dict, i: int, noise):
    """DiT p_sample with learned-range variance, clip_denoised=False, in float64."""
    x, out, noise = (np.asarray(a, dtype=np.float64) for a in (x, out, noise))
    c = x.shape[1]
    eps, v = out[:, :c], out[:, c:]
    ab = ref["alphas_cumprod"][i]
    x0 = x / math.sqrt(ab) - math.sqrt(1.0 / ab - 1.0) * eps
    mean = ref["posterior_mean_coef1"][i] * x0 + ref["posterior_mean_coef2"][i] * x
    frac = (v + 1.0) / 2.0
    log_var = frac * math.log(ref["betas"][i]) + (1.0 - frac) * ref["posterior_log_variance_clipped"][i]
    return mean + (i != 0) * np.exp(0.5 * log_var) * noise


def ref_ddim(x, eps, ref: dict, i: int, noise, eta: float):
    x, eps, noise = (np.asarray(a, dtype=np.float64) for a in (x, eps, noise))
    ab, abp = ref["alphas_cumprod"][i], ref["alphas_cumprod_prev"][i]
    x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    sigma = eta * math.sqrt((1 - abp) / (1 - ab)) * math.sqrt(1 - ab / abp)
    return x0 * math.sqrt(abp) + math.sqrt(1 - abp - sigma**2) * eps + (i != 0) * sigma * noise


# ----------------------------------------------------------------------------- timesteps, tables
@pytest.mark.parametrize("spec", SPECS)
def test_respaced_timesteps_match_reference(spec):
    got = respaced_timesteps(T, spec)
    assert got == ref_timesteps(spec)
    assert got == sorted(got) and len(set(got)) == len(got)
    assert all(0 <= t < T for t in got)


def test_known_timestep_values():
    assert respaced_timesteps(T, "ddim50") == list(range(0, 1000, 20))
    assert respaced_timesteps(T, "10") == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    fifty = respaced_timesteps(T, 50)
    assert len(fifty) == 50 and fifty[:4] == [0, 20, 41, 61] and fifty[-1] == 999
    assert len(respaced_timesteps(T, "250")) == 250
    sections = respaced_timesteps(T, "10,15")
    assert len(sections) == 25 and sections[9] == 499 and sections[10] == 500 and sections[-1] == 999


def test_linear_betas():
    b = linear_betas(T)
    assert b.dtype == np.float64 and b.shape == (T,)
    assert b[0] == pytest.approx(1e-4, rel=1e-12) and b[-1] == pytest.approx(0.02, rel=1e-12)
    np.testing.assert_allclose(np.diff(b), (0.02 - 1e-4) / (T - 1), rtol=1e-9)


@pytest.mark.parametrize("spec", SPECS)
def test_schedule_tables_match_float64_reference(spec):
    s = Schedule.create(spec)
    ref = ref_tables(spec)
    assert len(s) == len(ref["timesteps"])
    np.testing.assert_array_equal(s.timesteps, ref["timesteps"].astype(np.int64))
    for name in ref:
        if name == "timesteps":
            continue
        got = getattr(s, name)
        assert got.dtype == np.float64, name
        np.testing.assert_allclose(got, ref[name], rtol=1e-10, atol=0, err_msg=name)
    assert s.posterior_variance[0] == 0.0  # the clipped log replaces log(0)
    assert np.isfinite(s.posterior_log_variance_clipped).all()
    # float32 tables for modules/graphs: same numbers, rounded once
    tab = s.tables()
    for name in (
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
    ):
        assert tab[name].dtype == torch.float32
        np.testing.assert_allclose(tab[name].double().numpy(), ref[name], rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(tab["log_betas"].double().numpy(), np.log(ref["betas"]), rtol=1e-6)
    np.testing.assert_array_equal(tab["timestep"].numpy(), ref["timesteps"])


def test_full_schedule_is_unrespaced():
    s = Schedule.create("1000")
    np.testing.assert_allclose(s.betas, linear_betas(T), rtol=1e-9)


@pytest.mark.parametrize(
    "spec", ["", "abc", "0", "-5", "10,x", "0,10", "1001", "ddim", "ddimX", "ddim0", "ddim1001", "2000,1"]
)
def test_bad_step_specs_are_user_errors(spec):
    with pytest.raises(UserError):
        respaced_timesteps(T, spec)
    with pytest.raises(UserError):
        Schedule.create(spec)


# ----------------------------------------------------------------------------- updates
@pytest.mark.parametrize("spec", ["50", "ddim25", "10,15"])
def test_ddpm_learned_range_update_matches_reference(spec):
    s = Schedule.create(spec)
    tab, ref = s.tables(), ref_tables(spec)
    b, c = 3, 4
    for i in (len(s) - 1, len(s) // 2, 1, 0):
        x = torch.randn(b, c, 6, 6)
        out = torch.randn(b, 2 * c, 6, 6)
        out[:, c:] = out[:, c:].tanh()  # variance channels live in [-1, 1]
        noise = torch.randn(b, c, 6, 6)
        got = ddpm_update(x, out[:, :c], out[:, c:], torch.tensor(i), noise, tab)
        want = ref_ddpm(x, out, ref, i, noise)
        assert rel_err(got, want) < 1e-5, (spec, i)
        if i == 0:  # last step: no noise at all
            again = ddpm_update(x, out[:, :c], out[:, c:], torch.tensor(i), torch.randn_like(noise), tab)
            assert torch.equal(got, again)


def test_ddpm_fixed_variance_without_sigma_channels():
    s = Schedule.create("50")
    tab, ref = s.tables(), ref_tables("50")
    i = 30
    x, eps, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    got = ddpm_update(x, eps, None, torch.tensor(i), noise, tab)
    # var = None -> the clipped posterior variance, i.e. learned-range fraction 0 (v = -1)
    want = ref_ddpm(x, torch.cat([eps, -torch.ones_like(eps)], 1), ref, i, noise)
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_update_matches_reference(eta):
    spec = "ddim50"
    tab, ref = Schedule.create(spec).tables(), ref_tables(spec)
    for i in (49, 20, 1, 0):
        x, eps, noise = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
        got = ddim_update(x, eps, torch.tensor(i), noise, tab, eta=eta)
        want = ref_ddim(x, eps, ref, i, noise, eta)
        assert rel_err(got, want) < 1e-5, (eta, i)
    if eta == 0.0:  # deterministic: the noise argument is ignored
        a = ddim_update(x, eps, torch.tensor(7), torch.randn_like(noise), tab)
        b = ddim_update(x, eps, torch.tensor(7), torch.randn_like(noise), tab)
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- classifier-free guidance
def test_cfg_combine_channels():
    c, s = 4, 4.0
    cond, uncond = torch.randn(2, 2 * c, 3, 3), torch.randn(2, 2 * c, 3, 3)
    eps_all, var_all = cfg_combine(cond, uncond, s, c, None)
    eps3, var3 = cfg_combine(cond, uncond, s, c, 3)
    want_all = uncond[:, :c] + s * (cond[:, :c] - uncond[:, :c])
    assert rel_err(eps_all, want_all) < 1e-6
    # DiT/Minimax: channels 0..2 guided, channel 3 keeps the conditional eps
    assert rel_err(eps3[:, :3], want_all[:, :3]) < 1e-6
    assert torch.equal(eps3[:, 3], cond[:, 3])
    assert rel_err(eps3[:, 3], want_all[:, 3]) > 1e-2
    # the variance channels are the conditional branch's either way
    assert torch.equal(var_all, cond[:, c:]) and torch.equal(var3, cond[:, c:])
    # cfg_channels >= channels is "all"; no uncond -> cond
    eps9, _ = cfg_combine(cond, uncond, s, c, 9)
    assert torch.equal(eps9, eps_all)
    eps_c, var_c = cfg_combine(cond, None, s, c, 3)
    assert torch.equal(eps_c, cond[:, :c]) and torch.equal(var_c, cond[:, c:])
    # no sigma channels
    eps_n, var_n = cfg_combine(cond[:, :c], uncond[:, :c], s, c, None)
    assert var_n is None and torch.equal(eps_n, eps_all)


class StubDenoiser(torch.nn.Module):
    """Deterministic denoiser with class-dependent output; records the labels it was called with."""

    num_classes, in_channels, input_size, learn_sigma = 5, 4, 4, True

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(8, 4) * 0.5)
        self.table = torch.nn.Parameter(torch.randn(6, 8))
        self.seen: list[torch.Tensor] = []

    def forward(self, x, t, y):
        self.seen.append(y.clone())
        out = torch.einsum("oc,bchw->bohw", self.w, x) + self.table[y][:, :, None, None]
        out = out * (1 + t.float() / 1000)[:, None, None, None]
        return torch.cat([out[:, :4], out[:, 4:].tanh()], 1)


@pytest.mark.parametrize("cfg_channels", [3, None])
@pytest.mark.parametrize("cfg_scale", [4.0, 1.0])
def test_guided_step_off_is_cfg_then_ddpm(cfg_channels, cfg_scale):
    """GuidedStep with guidance off = DiT's forward_with_cfg (null class = num_classes) + p_sample."""
    den = StubDenoiser()
    step = GuidedStep(den, StepConfig(steps="25", cfg_scale=cfg_scale, cfg_channels=cfg_channels, guidance="off"))
    ref = ref_tables("25")
    x, noise = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4)
    y = torch.tensor([0, 4, 2])
    i = 17
    with torch.no_grad():
        got, *_ = step(x, torch.tensor(i, dtype=torch.int32), y, noise)
        t = torch.full((3,), int(ref["timesteps"][i]))
        den.seen.clear()
        cond = den(x, t, y).double()
        uncond = den(x, t, torch.full_like(y, 5)).double()
    k = 4 if cfg_channels is None else cfg_channels
    eps = cond[:, :4].clone()
    eps[:, :k] = uncond[:, :k] + cfg_scale * (cond[:, :k] - uncond[:, :k])
    want = ref_ddpm(x, torch.cat([eps, cond[:, 4:]], 1), ref, i, noise)
    assert rel_err(got, want) < 1e-5


def test_guided_step_ddim_eta0():
    den = StubDenoiser()
    step = GuidedStep(den, StepConfig(steps="ddim10", sampler="ddim", cfg_scale=2.5, cfg_channels=None, guidance="off"))
    ref = ref_tables("ddim10")
    x, y = torch.randn(2, 4, 4, 4), torch.tensor([1, 3])
    i = 9
    with torch.no_grad():
        got, *_ = step(x, torch.tensor(i), y, torch.randn(2, 4, 4, 4))
        t = torch.full((2,), 900)
        cond, uncond = den(x, t, y).double(), den(x, t, torch.full_like(y, 5)).double()
    eps = uncond[:, :4] + 2.5 * (cond[:, :4] - uncond[:, :4])
    assert rel_err(got, ref_ddim(x, eps, ref, i, np.zeros(x.shape), 0.0)) < 1e-5


@pytest.mark.parametrize(
    "kw",
    [
        {"sampler": "euler"},
        {"guidance": "maybe"},
        {"cfg_scale": 0.5},
        {"steps": "ten"},
        {"window_lo": 500, "window_hi": 100, "guidance": "off"},
    ],
)
def test_bad_step_config_is_user_error(kw):
    with pytest.raises(UserError):
        GuidedStep(StubDenoiser(), StepConfig(**{"guidance": "off", **kw}))
