"""Our AutoencoderKL against diffusers': same keys, same outputs, from every file layout we accept.

Small random diffusers VAEs (every weight perturbed so no norm is the identity and no bias is zero)
are saved as a diffusers folder, as an old-diffusers .bin and as a CompVis/ldm single file; ours must
load each strictly and agree with diffusers to float32 round-off.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKL as DiffusersAutoencoderKL  # noqa: E402
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint  # noqa: E402

from igds_fast.errors import UserError  # noqa: E402
from igds_fast.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig, load_autoencoder_kl  # noqa: E402
from igds_fast.models.vae import LatentVAE, load_vae  # noqa: E402
from tests.conftest import rel_err  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
TOL = 1e-5
SIZE = 32

CONFIGS = {
    "2lvl-lpb1-g8": dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8),
    "2lvl-lpb2-g32": dict(block_out_channels=(32, 64), layers_per_block=2, norm_num_groups=32),
    "3lvl-noattn": dict(block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8),
    "1lvl": dict(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4),
}


def diffusers_vae(seed: int = 0, **kw) -> DiffusersAutoencoderKL:
    kw = {**CONFIGS["2lvl-lpb1-g8"], **kw}
    n = len(kw["block_out_channels"])
    torch.manual_seed(seed)
    vae = DiffusersAutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        latent_channels=4,
        sample_size=SIZE,
        mid_block_add_attention=kw.pop("mid_block_add_attention", n != 3),
        **kw,
    )
    with torch.no_grad():  # norms away from (1, 0), biases non-zero, convs reshuffled
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * (0.2 if p.dim() == 1 else 0.3 * float(p.std())))
    return vae.eval()


def to_ldm(state: dict[str, torch.Tensor], n_levels: int) -> dict[str, torch.Tensor]:
    """diffusers keys -> CompVis/ldm keys (decoder levels reversed, attention as 1x1 convs)."""
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, v in state.items():
        k = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
        if m := re.match(r"(\w+)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", k):
            k = f"{m[1]}.mid.attn_1.{attn[m[2]]}.{m[3]}"
            v = v[:, :, None, None] if v.dim() == 2 else v
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        k = re.sub(
            r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{n_levels - 1 - int(m[1])}.block.", k
        )
        k = re.sub(
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{n_levels - 1 - int(m[1])}.upsample.",
            k,
        )
        k = k.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        out[k] = v.contiguous()
    return out


def assert_parity(ours: torch.nn.Module, ref: DiffusersAutoencoderKL, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, SIZE, SIZE, generator=g) * 2 - 1
    ds = 2 ** (len(ref.config.block_out_channels) - 1)
    z = torch.randn(2, 4, SIZE // ds, SIZE // ds, generator=g)
    with torch.no_grad():
        post, ref_post = ours.encode(x), ref.encode(x).latent_dist
        assert rel_err(post.mean, ref_post.mean) < TOL
        assert rel_err(post.logvar, ref_post.logvar) < TOL
        assert rel_err(ours.decode(z), ref.decode(z).sample) < TOL


def one_line_error(fn, *needles: str) -> str:
    with pytest.raises(UserError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


@pytest.mark.parametrize("name", CONFIGS)
def test_diffusers_folder_parity(tmp_path: Path, name: str) -> None:
    ref = diffusers_vae(**CONFIGS[name])
    ref.save_pretrained(tmp_path)
    ours = load_autoencoder_kl(tmp_path)
    assert list(ours.state_dict()) == list(ref.state_dict())  # same names, same registration order
    assert ours.config.mid_block_add_attention == (name != "3lvl-noattn")
    assert_parity(ours, ref)


@pytest.mark.parametrize("name", ["2lvl-lpb2-g32", "3lvl-noattn"])
@pytest.mark.parametrize("prefix", ["", "first_stage_model."])
def test_ldm_single_file_parity(tmp_path: Path, name: str, prefix: str) -> None:
    conf = {**CONFIGS[name], "norm_num_groups": 32 if name == "2lvl-lpb2-g32" else 8}
    ref = diffusers_vae(seed=3, **conf)
    ldm = to_ldm(ref.state_dict(), len(ref.config.block_out_channels))
    assert "decoder.up.0.block.0.norm1.weight" in ldm and "encoder.down.0.block.0.norm1.weight" in ldm
    # our test-side layout is diffusers' own idea of ldm's: its converter maps it back exactly
    back = convert_ldm_vae_checkpoint(ldm, dict(ref.config))
    assert back.keys() == ref.state_dict().keys()
    assert all(torch.equal(back[k].reshape(v.shape), v) for k, v in ref.state_dict().items())
    file = tmp_path / "vae.safetensors"
    extra = {"loss.discriminator.main.0.weight": torch.zeros(2)} if prefix else {}  # ldm training leftovers
    save_file({prefix + k: v for k, v in ldm.items()} | extra, str(file))
    if conf["norm_num_groups"] != 32:  # ldm always uses 32 groups; a shape can't tell, so pass it here
        from igds_fast.models.autoencoder_kl import build, infer_config, read_state_dict, to_diffusers_keys

        state = to_diffusers_keys(read_state_dict(file))
        ours = build(infer_config(state, norm_num_groups=8), state, file)
    else:
        ours = load_autoencoder_kl(file)
        assert ours.config.scaling_factor == 0.18215 and ours.config.layers_per_block == 2
    assert ours.config.block_out_channels == tuple(conf["block_out_channels"])
    assert_parity(ours, ref)


def test_old_diffusers_attention_names_bin(tmp_path: Path) -> None:
    """diffusers < 0.14 folders (sd-vae-ft-mse's first upload) name the attention query/key/value/proj_attn."""
    ref = diffusers_vae(seed=4)
    ref.save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {
        re.sub(r"(to_q|to_k|to_v|to_out\.0)\.", lambda m: names[m[1]] + ".", k): v for k, v in ref.state_dict().items()
    }
    assert "encoder.mid_block.attentions.0.query.weight" in old
    torch.save(old, tmp_path / "diffusion_pytorch_model.bin")
    assert_parity(load_autoencoder_kl(tmp_path), ref)


def test_load_vae_layouts(tmp_path: Path) -> None:
    ref = diffusers_vae(seed=5, **CONFIGS["2lvl-lpb2-g32"])  # 32 groups: what a single ldm file implies
    ref.register_to_config(scaling_factor=0.5)
    ref.save_pretrained(tmp_path / "pipe" / "vae")
    ref_codec = LatentVAE(ref).eval()  # the wrapper still takes a diffusers AutoencoderKL
    file = tmp_path / "ldm.safetensors"
    save_file(to_ldm(ref.state_dict(), 2), str(file))
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    z = torch.randn(2, 4, SIZE // 2, SIZE // 2)
    for path in (tmp_path / "pipe", tmp_path / "pipe" / "vae", str(file)):
        codec = load_vae(path)
        assert isinstance(codec, LatentVAE) and isinstance(codec.vae, AutoencoderKL)
        assert (codec.channels, codec.downsample) == (4, 2)
        scale = 0.18215 if path == str(file) else 0.5  # a single ldm file has no config: SD's default scale
        assert codec.scaling_factor == scale
        with torch.no_grad():
            assert rel_err(codec.encode(x) / scale, ref_codec.encode(x) / 0.5) < TOL
            assert rel_err(codec.decode(z * scale), ref_codec.decode(z * 0.5)) < TOL
    assert load_vae(None).downsample == 1 and load_vae("none").channels == 3


def test_our_folder_and_file_roundtrip(tmp_path: Path) -> None:
    """Our save_pretrained writes a folder diffusers reads, and a file that alone still knows its config."""
    torch.manual_seed(6)
    cfg = AutoencoderKLConfig(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, scaling_factor=0.7)
    ours = AutoencoderKL(cfg).eval()
    ours.save_pretrained(tmp_path / "ae", dtype=torch.float16)
    ref = DiffusersAutoencoderKL.from_pretrained(tmp_path / "ae").float().eval()
    assert ref.config.scaling_factor == 0.7 and ref.config.norm_num_groups == 8
    again = load_autoencoder_kl(tmp_path / "ae")
    assert again.config == cfg and next(again.parameters()).dtype == torch.float32
    assert_parity(again, ref)
    single = load_autoencoder_kl(tmp_path / "ae" / "diffusion_pytorch_model.safetensors")
    assert single.config == cfg  # groups 8 from the metadata, not ldm's default 32


def test_bad_inputs(tmp_path: Path) -> None:
    one_line_error(lambda: load_vae(tmp_path / "nope"), "does not exist")
    (tmp_path / "empty").mkdir()
    one_line_error(lambda: load_vae(tmp_path / "empty"), "no config.json")
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "junk.safetensors"))
    one_line_error(lambda: load_vae(tmp_path / "junk.safetensors"), "neither diffusers nor ldm AutoencoderKL keys")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    one_line_error(lambda: load_vae(tmp_path / "broken.safetensors"), "cannot read VAE weights")

    ref = diffusers_vae(seed=7)
    ref.save_pretrained(tmp_path / "vae")
    weights = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    state = ref.state_dict()
    save_file({k: v for k, v in state.items() if k != "decoder.conv_out.bias"}, str(weights))
    one_line_error(lambda: load_vae(tmp_path / "vae"), "missing", "decoder.conv_out.bias")
    save_file({**state, "decoder.extra.weight": torch.zeros(1)}, str(weights))
    one_line_error(lambda: load_vae(tmp_path / "vae"), "unexpected", "decoder.extra.weight")
    conf = json.loads((tmp_path / "vae" / "config.json").read_text())
    (tmp_path / "vae" / "config.json").write_text(json.dumps({**conf, "layers_per_block": 2}))
    one_line_error(lambda: load_vae(tmp_path / "vae"), "missing", "resnets.1")
    (tmp_path / "vae" / "config.json").write_text(json.dumps({**conf, "up_block_types": ["AttnUpDecoderBlock2D"] * 2}))
    one_line_error(lambda: load_vae(tmp_path / "vae"), "up_block_types", "not supported")
    weights.unlink()
    one_line_error(lambda: load_vae(tmp_path / "vae"), "diffusion_pytorch_model.safetensors")


def test_vae_module_does_not_import_diffusers(tmp_path: Path) -> None:
    ref = diffusers_vae(seed=8)
    ref.save_pretrained(tmp_path / "vae")
    z = torch.randn(1, 4, SIZE // 2, SIZE // 2)
    with torch.no_grad():
        expected = ref.decode(z / 0.18215).sample
    torch.save({"z": z, "expected": expected}, tmp_path / "io.pt")
    script = f"""
import sys, torch
sys.modules["diffusers"] = None  # any 'import diffusers' now raises ImportError
torch.set_num_threads(1)
from igds_fast.models.vae import load_vae
codec = load_vae({str(tmp_path / "vae")!r})
io = torch.load({str(tmp_path / "io.pt")!r}, weights_only=True)
with torch.no_grad():
    out = codec.decode(io["z"])
err = float((out - io["expected"]).norm() / io["expected"].norm())
assert err < {TOL}, err
assert sys.modules["diffusers"] is None
print("ok")
"""
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1]
    )
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def _tiny_image_folder(root: Path, n: int = 4, size: int = 16) -> Path:
    """Two classes of smooth random RGB images (PNG: no compression noise to learn)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for wnid in ("n00000001", "n00000002"):
        (root / wnid).mkdir(parents=True)
        for i in range(n):
            low = torch.rand(1, 3, 4, 4, generator=g)
            img = torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)[0]
            Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).save(root / wnid / f"{i}.png")
    return root


def test_train_autoencoder_few_steps(tmp_path: Path) -> None:
    from igds_fast.training.train_autoencoder import TrainAutoencoderConfig, train_autoencoder

    data = _tiny_image_folder(tmp_path / "data")
    cfg = TrainAutoencoderConfig(
        data=str(data),
        val=str(data),
        out=str(tmp_path / "out"),
        resolution=16,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        steps=120,
        batch_size=4,
        lr=3e-3,
        warmup=5,
        log_every=20,
        eval_images=8,
        scale_images=8,
    )
    folder = train_autoencoder(cfg, progress=False)
    logs = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logs if "loss" in r]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0], losses
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    codec = load_vae(folder)
    assert isinstance(codec, LatentVAE) and (codec.channels, codec.downsample) == (4, 2)
    assert codec.scaling_factor == report["scaling_factor"] > 0 and report["val_psnr"] > 10
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = codec.encode(x)
    assert abs(float(z.std()) - 1) < 0.9  # scaled latents are O(1) (these inputs are not the training images)
    # a rerun of the finished run writes nothing (distill records the folder's hash; a rewrite gave another
    # one on CIFAR-10); resuming continues the step count; another architecture in the same folder is refused
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert train_autoencoder(cfg, progress=False) == folder
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()} == written
    train_autoencoder(dataclasses.replace(cfg, steps=140), progress=False)
    logs = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "loss" in r][-2:] == [120, 140]
    one_line_error(
        lambda: train_autoencoder(dataclasses.replace(cfg, block_out_channels=(8, 8)), progress=False),
        "another autoencoder config",
    )
