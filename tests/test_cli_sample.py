"""``igds-fast sample`` end to end, as a user runs it (subprocess: exit codes and stderr included)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from igds_fast.guidance.step import GuidedStep, StepConfig
from igds_fast.imageio import to_uint8
from igds_fast.models.dit import DiT, DiTConfig
from igds_fast.models.loading import load_denoiser, save_denoiser
from igds_fast.sampling import run_chain
from igds_fast.seeds import SampleNoise
from tests.conftest import randomize_, rel_err, run_cli_in_process

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]
PAD = 2  # grid padding between tiles (igds_fast.imageio.grid)



def cli(*args: str) -> subprocess.CompletedProcess:
    """The real command in a fresh interpreter (~2 s each: used for the exit-code checks)."""
    return subprocess.run(
        [sys.executable, "-m", "igds_fast.cli", "sample", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def in_process(*args: str) -> subprocess.CompletedProcess:
    """``igds_fast.cli.main()`` (its error handling included) in this interpreter: fast."""
    code, out, err = run_cli_in_process("sample", *args)
    return subprocess.CompletedProcess(args, code, out, err)


def ok(*args: str) -> subprocess.CompletedProcess:
    res = in_process(*args)
    assert res.returncode == 0, res.stderr
    return res


def fails_with(*args: str, words: tuple[str, ...] = (), subprocess: bool = True) -> str:
    res = cli(*args) if subprocess else in_process(*args)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def pixel_model(tmp_path_factory):
    """A tiny random pixel-space DiT (3x8x8, 10 classes) in our safetensors format."""
    cfg = DiTConfig(input_size=8, patch_size=2, in_channels=3, hidden_size=64, depth=2, num_heads=1, num_classes=10)
    model = randomize_(DiT(cfg), int(torch.randint(0, 2**31 - 1, ())), scale=0.5).eval()
    path = tmp_path_factory.mktemp("pixel") / "dit.safetensors"
    return save_denoiser(model, path)


def sample(model: Path, tmp: Path, name: str, *extra: str, classes: str = "1,4,7", n: int = 2):
    out, lat = tmp / f"{name}.png", tmp / f"{name}.npy"
    ok(
        "--denoiser",
        model,
        "--classes",
        classes,
        "--n-per-class",
        n,
        "--steps",
        "5",
        "--out",
        out,
        "--latents-out",
        lat,
        *extra,
    )
    return Image.open(out), np.load(lat)


def test_writes_grid_and_latents(pixel_model, tmp_path):
    img, lat = sample(pixel_model, tmp_path, "a")
    assert lat.shape == (6, 3, 8, 8) and lat.dtype == np.float32
    assert np.isfinite(lat).all() and lat.std() > 0
    # rows = classes (3), columns = samples per class (2), 8 px tiles with 2 px padding
    assert img.size == (2 * (8 + PAD) + PAD, 3 * (8 + PAD) + PAD)
    arr = np.asarray(img.convert("RGB"))
    tiles = to_uint8(torch.from_numpy(lat)).numpy()  # pixel space: the image is the clamped latent
    for k in range(6):
        r, c = divmod(k, 2)
        y0, x0 = PAD + r * (8 + PAD), PAD + c * (8 + PAD)
        np.testing.assert_array_equal(arr[y0 : y0 + 8, x0 : x0 + 8], tiles[k], err_msg=f"tile {k}")


def test_seed_rule(pixel_model, tmp_path):
    _, a = sample(pixel_model, tmp_path, "a", "--seed", "3")
    _, b = sample(pixel_model, tmp_path, "b", "--seed", "3")
    _, c = sample(pixel_model, tmp_path, "c", "--seed", "4")
    _, d = sample(pixel_model, tmp_path, "d", "--seed", "3", "--batch-size", "1")
    _, e = sample(pixel_model, tmp_path, "e", "--seed", "3", "--batch-size", "4")  # batches of 4 + 2
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-2  # and per sample: no two samples share noise
    assert all(np.abs(a[k] - c[k]).max() > 1e-2 for k in range(len(a)))
    # Batch size changes only float round-off: on CPU a batch of 1 runs GEMV where larger batches run
    # GEMM (measured ~3e-7 relative after the chain; batches of 4 and 16 agree bit for bit).
    # Noise taken from another sample would differ at O(1).
    assert rel_err(d, e) < 1e-5 and rel_err(a, d) < 1e-5
    assert max(rel_err(d[k], a[k]) for k in range(len(a))) < 1e-5
    # a sample's result depends on (seed, class, index) only: class 4 alone equals its rows above
    _, f = sample(pixel_model, tmp_path, "f", "--seed", "3", classes="4")
    assert rel_err(f, a[2:4]) < 1e-5


def test_init_noise_is_used(pixel_model, tmp_path):
    x_init = np.random.default_rng().standard_normal((4, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "noise.npy", x_init)
    args = ("--sampler", "ddim", "--eta", "0", "--init-noise", tmp_path / "noise.npy")
    _, a = sample(pixel_model, tmp_path, "a", *args, "--seed", "1", classes="2,5")
    _, b = sample(pixel_model, tmp_path, "b", *args, "--seed", "2", classes="2,5")
    _, c = sample(pixel_model, tmp_path, "c", "--sampler", "ddim", "--seed", "1", classes="2,5")
    np.testing.assert_array_equal(a, b)  # DDIM eta=0 from the given noise: the seed no longer matters
    assert np.abs(a - c).max() > 1e-2
    # and it is exactly the library's chain from that noise (CLI defaults: CFG 4 on 3 channels)
    model = load_denoiser(pixel_model)
    step = GuidedStep(model, StepConfig(steps="5", sampler="ddim", cfg_scale=4.0, cfg_channels=3, guidance="off"))
    res = run_chain(
        step,
        len(step.schedule),
        torch.tensor([2, 2, 5, 5]),
        SampleNoise([0, 1, 2, 3], (3, 8, 8)),
        x_init=torch.from_numpy(x_init),
    )
    np.testing.assert_allclose(a, res.x0.numpy(), rtol=1e-5, atol=1e-5)


needs_diffusers = pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="needs diffusers")


@pytest.fixture(scope="module")
def latent_model(tmp_path_factory):
    """A tiny 4-channel latent DiT and a tiny AutoencoderKL folder (x2 upsampling)."""
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("latent")
    cfg = DiTConfig(input_size=4, patch_size=2, in_channels=4, hidden_size=64, depth=1, num_heads=1, num_classes=5)
    save_denoiser(randomize_(DiT(cfg), 1, scale=0.5), root / "dit.safetensors")
    torch.manual_seed(0)
    AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=8,
    ).save_pretrained(root / "vae")
    return root


@needs_diffusers
def test_latent_model_with_vae(latent_model, tmp_path):
    img, lat = sample(
        latent_model / "dit.safetensors", tmp_path, "v", "--vae", latent_model / "vae", classes="0,4", n=3
    )
    assert lat.shape == (6, 4, 4, 4) and np.isfinite(lat).all()
    assert img.size == (3 * (8 + PAD) + PAD, 2 * (8 + PAD) + PAD)  # 4 px latents -> 8 px images
    fails_with(
        "--denoiser",
        latent_model / "dit.safetensors",
        "--classes",
        "1",
        "--out",
        tmp_path / "x.png",
        words=("4-channel", "--vae"),
    )


def test_bf16_pipeline_decodes_in_bf16(tmp_path):
    """Under the bf16 precision the VAE decodes in bf16 (2.5-3.5x faster on an AMX CPU), returned as
    float32 like every other decode. This random-init AE decodes within ~1.0-1.1% of fp32 (bound 2e-2
    here); the shipped, trained VAE within 0.5% (bound 1e-2, tests/test_embedded.py)."""
    from igds_fast.config import step_config
    from igds_fast.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
    from igds_fast.sampling.pipeline import build_pipeline

    cfg = DiTConfig(input_size=4, patch_size=2, in_channels=4, hidden_size=64, depth=1, num_heads=1, num_classes=5)
    save_denoiser(randomize_(DiT(cfg), 1, scale=0.5), tmp_path / "dit.safetensors")
    torch.manual_seed(0)
    AutoencoderKL(
        AutoencoderKLConfig(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)
    ).save_pretrained(tmp_path / "vae")
    z = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    out = {}
    for dtype in ("fp32", "bf16"):
        pipe = build_pipeline(
            tmp_path / "dit.safetensors", tmp_path / "vae", None, step_config({"guidance": "off"}), dtype=dtype
        )
        out[dtype] = pipe.decode(z)
        assert next(pipe.vae.parameters()).dtype == (torch.bfloat16 if dtype == "bf16" else torch.float32)
    assert out["bf16"].dtype == torch.float32 and out["bf16"].shape == (3, 3, 8, 8)
    assert 0 < rel_err(out["bf16"], out["fp32"]) < 2e-2


@pytest.mark.parametrize(
    "flags, words",
    [
        (("--sampler", "euler"), ("sampler", "euler")),
        (("--cfg-channels", "0"), ("--cfg-channels",)),
        (("--classes", "3,10"), ("class 10", "0..9")),
    ],
)
def test_bad_flags_exit_2(pixel_model, tmp_path, flags, words):
    args = {"--classes": "1", "--out": str(tmp_path / "g.png")}
    args.update(dict(zip(flags[::2], flags[1::2], strict=True)))
    fails_with("--denoiser", pixel_model, *[x for kv in args.items() for x in kv], words=words)
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize(
    "flags, words",
    [
        (("--steps", "ddimX"), ("ddimX",)),
        (("--steps", "0"), ("step",)),
        (("--n-per-class", "0"), ("--n-per-class",)),
        (("--batch-size", "0"), ("--batch-size",)),
        (("--cfg-channels", "three"), ("--cfg-channels",)),
        (("--cfg-scale", "0.5"), ("--cfg-scale",)),
        (("--classes", "-1"), ("class -1",)),
        (("--classes", ","), ("--classes",)),
        (("--guidance", "igds"), ("critics",)),
        (("--device", "tpu"), ("device",)),
        (("--dtype", "fp8"), ("dtype",)),
        (("--weighting", "linear"), ("--weighting", "linear", "flat")),
        (("--diversity", "x0"), ("no such option", "--diversity")),  # removed from the product
        (("--clip-guard", "1.5"), ("--clip-guard", "[0, 1]")),
        (("--clip-guard", "nan"), ("--clip-guard", "finite")),
    ],
)
def test_more_bad_flags_in_process(pixel_model, tmp_path, flags, words):
    args = {"--classes": "1", "--out": str(tmp_path / "g.png")}
    args.update(dict(zip(flags[::2], flags[1::2], strict=True)))
    fails_with("--denoiser", pixel_model, *[x for kv in args.items() for x in kv], words=words, subprocess=False)
    assert not (tmp_path / "g.png").exists()


def test_missing_paths_exit_2(pixel_model, tmp_path):
    fails_with(
        "--denoiser",
        tmp_path / "nope.safetensors",
        "--classes",
        "1",
        "--out",
        tmp_path / "g.png",
        words=("nope.safetensors", "does not exist"),
    )
    fails_with(
        "--denoiser",
        pixel_model,
        "--classes",
        "1",
        "--init-noise",
        tmp_path / "none.npy",
        "--out",
        tmp_path / "g.png",
        words=("none.npy",),
        subprocess=False,
    )
    fails_with(
        "--denoiser",
        pixel_model,
        "--classes",
        "1",
        "--out",
        tmp_path / "no" / "g.png",
        words=("no",),
        subprocess=False,
    )


def test_wrong_init_noise_shape_exit_2(pixel_model, tmp_path):
    np.save(tmp_path / "n.npy", np.zeros((3, 3, 8, 8), dtype=np.float32))  # 2 classes x 2 = 4 needed
    fails_with(
        "--denoiser",
        pixel_model,
        "--classes",
        "1,2",
        "--n-per-class",
        "2",
        "--init-noise",
        tmp_path / "n.npy",
        "--out",
        tmp_path / "g.png",
        words=("--init-noise", "(3, 3, 8, 8)", "(4, 3, 8, 8)"),
    )
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize(
    "case, words",
    [
        ("noise-random-bytes", ("--init-noise", "not a NumPy .npy array")),
        ("noise-is-a-folder", ("--init-noise", "is a folder")),
        ("out-is-a-folder", ("--out", "is a folder")),
        ("out-not-png", ("--out", "must end in .png")),
        ("latents-not-npy", ("--latents-out", "must end in .npy")),
        ("eta-negative", ("--eta", "[0, 1]")),
        ("no-images-without-latents", ("--no-images", "--latents-out")),
    ],
)
def test_bad_outputs_and_inputs_exit_2_before_sampling(pixel_model, tmp_path, case, words):
    """Each of these once raised a traceback (after all the sampling, for --out DIR) or was accepted."""
    (tmp_path / "junk.npy").write_bytes(os.urandom(300))
    (tmp_path / "dir").mkdir()
    extra = {
        "noise-random-bytes": ["--init-noise", tmp_path / "junk.npy"],
        "noise-is-a-folder": ["--init-noise", tmp_path / "dir"],
        "out-is-a-folder": ["--out", tmp_path / "dir"],
        "out-not-png": ["--out", tmp_path / "x.txt"],
        "latents-not-npy": ["--latents-out", tmp_path / "lat.txt"],
        "eta-negative": ["--sampler", "ddim", "--eta", "-1"],
        "no-images-without-latents": ["--no-images"],
    }[case]
    flags = [x for x in extra if str(x).startswith("--no-")]  # switches take no value
    pairs = [x for x in extra if x not in flags]
    args = {"--classes": "1", "--out": str(tmp_path / "g.png")}
    args.update(dict(zip(pairs[::2], map(str, pairs[1::2]), strict=True)))
    flat = [x for kv in args.items() for x in kv] + flags
    fails_with("--denoiser", pixel_model, *flat, words=words, subprocess=False)
    assert not (tmp_path / "g.png").exists() and not list(tmp_path.glob("**/.*.tmp"))
    assert not list((tmp_path / "dir").iterdir())


@needs_diffusers
def test_latents_only_for_a_latent_model_without_a_vae(latent_model, tmp_path):
    """A data platform may store latents only: no VAE needed, no grid written."""
    lat = tmp_path / "lat.npy"
    res = ok(
        "--denoiser", latent_model / "dit.safetensors", "--classes", "0,4", "--n-per-class", "2", "--steps", "5",
        "--latents-out", lat, "--no-images", "--out", tmp_path / "never.png",
    )  # fmt: skip
    assert "wrote" in res.stdout and not (tmp_path / "never.png").exists()
    got = np.load(lat)
    assert got.shape == (4, 4, 4, 4) and np.isfinite(got).all()
    # the same latents as with the VAE (decoding does not change the chain)
    _, ref = sample(latent_model / "dit.safetensors", tmp_path, "v", "--vae", latent_model / "vae", classes="0,4")
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_cli_waits_passively_unless_the_user_chose_an_openmp_policy(given, expected):
    """Busy-waiting OpenMP threads collapse on shared cores (README, "Shared cores"): the CLI sets
    OMP_WAIT_POLICY=PASSIVE before torch loads, and leaves a policy the user set alone."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    code = (
        "import os, sys; import igds_fast.cli; from igds_fast.cli import _env; "
        "import torch; print(os.environ['OMP_WAIT_POLICY'], _env.TORCH_WAS_LOADED, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == [expected, "False", "True"]  # set before torch loaded, then torch loads


def test_every_step_option_is_a_flag_of_sample_distill_and_export():
    """One list of step options (the fields of config.StepConfig): a field added there and forgotten in a
    command would silently run at its default there. Retired options are flags of none."""
    import inspect

    from igds_fast.cli.distill import distill
    from igds_fast.cli.export import export
    from igds_fast.cli.sample import sample
    from igds_fast.config import RETIRED_STEP_FIELDS, STEP_FIELDS

    for command in (sample, distill, export):
        params = set(inspect.signature(command).parameters)
        assert set(STEP_FIELDS) <= params, (command.__name__, set(STEP_FIELDS) - params)
        assert not set(RETIRED_STEP_FIELDS) & params, command.__name__


def test_step_flags_reach_the_step_and_the_help_names_the_shipped_defaults(tmp_path):
    """A flag given on the command line is what the job runs; flags not given take StepConfig()'s values;
    --help shows no retired option and every step default unmangled."""
    from typer.testing import CliRunner

    from igds_fast.cli import app

    res = CliRunner().invoke(app, ["distill", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for gone in ("--moment-guard", "--spread-guard", "--envelope-guard", "--diversity"):
        assert gone not in res.output
    assert all(f"(default {v})" in res.output for v in ("0.4", "0.3", "300", "ba", "20"))
    res = CliRunner().invoke(app, ["distill", "--moment-guard", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and not (tmp_path / "x").exists()
