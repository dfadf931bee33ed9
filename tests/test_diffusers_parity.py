"""Our loader + DDIM sampler + VAE wrapper against diffusers' own DiT stack (DiTPipeline).

A small random ``DiTTransformer2DModel`` (every parameter randomised, the per-block embedder copied
from block 0 as diffusers' conversion does) and a small random ``AutoencoderKL`` stand in for
facebook/DiT-XL-2-256; the samplers must agree to float32 round-off.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

from igds_fast.guidance.step import GuidedStep, StepConfig  # noqa: E402
from igds_fast.models.convert import from_diffusers_state_dict  # noqa: E402
from igds_fast.models.dit import DiT  # noqa: E402
from igds_fast.models.loading import load_denoiser  # noqa: E402
from igds_fast.models.vae import LatentVAE  # noqa: E402
from igds_fast.sampling import run_chain  # noqa: E402
from igds_fast.seeds import SampleNoise  # noqa: E402
from tests.conftest import randomize_, rel_err  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
LATENT = 8  # latent side; the VAE upsamples x2 -> 16 px images


def make_transformer(seed: int, heads: int = 2, head_dim: int = 16) -> DiTTransformer2DModel:
    tr = DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=LATENT,
        patch_size=2,
        num_embeds_ada_norm=1000,  # DiTPipeline hard-codes the null class 1000
    )
    randomize_(tr, seed)
    emb0 = tr.transformer_blocks[0].norm1.emb.state_dict()
    for blk in tr.transformer_blocks[1:]:
        blk.norm1.emb.load_state_dict(emb0)
    return tr.eval()


def make_vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=2 * LATENT,
    )
    return vae.eval()


def dit_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        num_train_timesteps=1000,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(diffusers transformer, vae, pipeline, saved transformer folder); fresh random weights per run."""
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    tr, vae = make_transformer(seed), make_vae(seed + 1)
    folder = tmp_path_factory.mktemp("dit_diffusers")
    tr.save_pretrained(folder)
    pipe = DiTPipeline(transformer=tr, vae=vae, scheduler=dit_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return tr, vae, pipe, folder


def run_reference(pipe: DiTPipeline, labels: list[int], seed: int, steps: int) -> tuple[torch.Tensor, np.ndarray]:
    """DiTPipeline's final latents (captured at the VAE's input) and its np images in [0, 1]."""
    vae = pipe.vae
    captured = {}
    decode = vae.decode

    def spy(z, *args, **kw):
        captured["z"] = z.detach().clone()
        return decode(z, *args, **kw)

    vae.decode = spy
    try:
        images = pipe(
            labels,
            guidance_scale=4.0,
            generator=torch.Generator().manual_seed(seed),
            num_inference_steps=steps,
            output_type="np",
        ).images
    finally:
        del vae.decode  # back to the class method
    return captured["z"] * vae.config.scaling_factor, images


def run_ours(folder, vae, labels: list[int], seed: int, steps: int, cfg_channels=None):
    model = load_denoiser(folder)
    step = GuidedStep(
        model,
        StepConfig(
            steps=f"ddim{steps}",
            sampler="ddim",
            eta=0.0,
            cfg_scale=4.0,
            cfg_channels=cfg_channels,
            guidance="off",
        ),
    )
    assert len(step.schedule) == steps
    shape = (len(labels), model.in_channels, model.input_size, model.input_size)
    x_init = randn_tensor(shape, generator=torch.Generator().manual_seed(seed))  # what DiTPipeline draws
    noise = SampleNoise(list(range(len(labels))), shape[1:])
    res = run_chain(step, len(step.schedule), torch.tensor(labels), noise, x_init=x_init)
    with torch.no_grad():
        images = ((LatentVAE(vae).eval().decode(res.x0) + 1) / 2).clamp(0, 1)
    return res.x0, images.permute(0, 2, 3, 1).numpy()


def test_loaded_transformer_matches_diffusers_forward(stack):
    tr, _, _, folder = stack
    model = load_denoiser(folder)
    assert isinstance(model, DiT)
    assert (model.config.time_freq_shift, model.config.mlp_norm_eps) == (1, 1e-5)
    assert model.num_classes == 1000 and model.learn_sigma and model.in_channels == 4
    x = torch.randn(5, 4, LATENT, LATENT)
    t = torch.randint(0, 1000, (5,))
    y = torch.tensor([0, 17, 999, 1000, 1000])  # 1000 = the null class
    with torch.no_grad():
        ref = tr(x, timestep=t, class_labels=y).sample
        out = model(x, t, y)
    err = rel_err(out, ref)
    assert err < 1e-6, err  # measured: bit-exact (0.0)


@pytest.mark.parametrize("steps", [50, 10])
def test_ddim_chain_matches_dit_pipeline(stack, steps):
    _, vae, pipe, folder = stack
    labels = [int(v) for v in torch.randint(0, 1000, (3,))] + [999]
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    ref_latents, ref_images = run_reference(pipe, labels, seed, steps)
    latents, images = run_ours(folder, vae, labels, seed, steps)
    err_lat = rel_err(latents, ref_latents)
    err_img = rel_err(images, ref_images)
    assert err_lat < 1e-4, f"latents rel err {err_lat:.3g}"
    assert err_img < 1e-4, f"images rel err {err_img:.3g}"
    # Sensitivity: DiT's 3-channel CFG is a different sampler, and the comparison must see it.
    latents3, _ = run_ours(folder, vae, labels, seed, steps, cfg_channels=3)
    assert rel_err(latents3, ref_latents) > 1e-3


def test_official_layout_differs_only_by_freq_shift_and_eps(tmp_path):
    """The same weights in the official layout load as an official DiT (freq shift 0, MLP LayerNorm
    eps 1e-6); switching exactly those two settings reproduces diffusers' transformer.

    Official checkpoints do not store the head count; for widths that are not an official variant's
    the loader assumes 64-wide heads, so this stand-in uses 2 heads of 64."""
    tr = make_transformer(int(torch.randint(0, 2**31 - 1, ()).item()), heads=2, head_dim=64)
    # Shrink the residual stream so the LayerNorm eps (1e-5 vs 1e-6) is visible in the output.
    k = 1e-3
    with torch.no_grad():
        tr.pos_embed.pos_embed.mul_(k)
        for lin in [tr.pos_embed.proj] + [m for b in tr.transformer_blocks for m in (b.attn1.to_out[0], b.ff.net[2])]:
            lin.weight.mul_(k)
            lin.bias.mul_(k)
    folder = tmp_path / "transformer"
    tr.save_pretrained(folder)
    loaded_diffusers_cfg = load_denoiser(folder).config
    sd = from_diffusers_state_dict(tr.state_dict(), loaded_diffusers_cfg, "test")
    sd["pos_embed"] = tr.pos_embed.pos_embed.detach().clone()  # the (shrunk) table the model uses
    torch.save(sd, tmp_path / "official.pt")

    official = load_denoiser(tmp_path / "official.pt")
    assert (official.config.time_freq_shift, official.config.mlp_norm_eps) == (0, 1e-6)

    x = torch.randn(4, 4, LATENT, LATENT)
    t = torch.tensor([0, 333, 999, 640])
    y = torch.tensor([5, 1000, 999, 0])
    with torch.no_grad():
        ref = tr(x, timestep=t, class_labels=y).sample

    def variant(shift: int, eps: float) -> float:
        m = DiT(dataclasses.replace(official.config, time_freq_shift=shift, mlp_norm_eps=eps))
        m.load_state_dict(official.state_dict())
        with torch.no_grad():
            return rel_err(m.eval()(x, t, y), ref)

    with torch.no_grad():
        assert rel_err(official(x, t, y), ref) > 1e-2
    assert variant(1, 1e-5) < 1e-5  # both switches: diffusers' numbers
    assert variant(0, 1e-5) > 1e-2  # the frequency shift alone matters
    assert variant(1, 1e-6) > 1e-2  # the LayerNorm eps alone matters
    # and the official config with both switches is exactly the diffusers-folder config
    assert dataclasses.replace(official.config, time_freq_shift=1, mlp_norm_eps=1e-5) == loaded_diffusers_cfg


def test_nan_fails_the_comparison():
    ref = torch.randn(2, 3)
    bad = ref.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(AssertionError):
        rel_err(bad, ref)
    with pytest.raises(AssertionError):
        rel_err(ref, bad)
