"""Every denoiser format round-trips to the source model's outputs; arch inference; clear errors."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from igds_fast.errors import UserError
from igds_fast.models.convert import infer_official_config
from igds_fast.models.dit import DIT_VARIANTS, DiT, DiTConfig
from igds_fast.models.loading import UNetDenoiser, load_denoiser, save_denoiser
from tests.conftest import randomize_, rel_err

pytestmark = pytest.mark.usefixtures("single_thread")
TOL = 1e-6


def outputs(model, x, t, y):
    with torch.no_grad():
        return model(x, t, y)


def probe(model, n: int = 3):
    """Fresh random inputs for a model; labels include the null class."""
    s, c = int(model.input_size), int(model.in_channels)
    x = torch.randn(n, c, s, s)
    t = torch.randint(0, 1000, (n,))
    y = torch.randint(0, int(model.num_classes), (n,))
    y[-1] = int(model.num_classes)
    return x, t, y


def assert_same_outputs(loaded, source):
    x, t, y = probe(source)
    err = rel_err(outputs(loaded, x, t, y), outputs(source, x, t, y))
    assert err < TOL, err


def one_line_user_error(fn, *words: str) -> str:
    with pytest.raises(UserError) as info:
        fn()
    msg = str(info.value)
    assert msg and "\n" not in msg and "\x1b" not in msg, repr(msg)
    for w in words:
        assert w.lower() in msg.lower(), (w, msg)
    return msg


# ----------------------------------------------------------------------------- architecture names
PAPER = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


@pytest.mark.parametrize("size", ["S", "B", "L", "XL"])
@pytest.mark.parametrize("patch", [2, 4, 8])
def test_from_arch_all_names(size, patch):
    cfg = DiTConfig.from_arch(f"DiT-{size}/{patch}", input_size=32, num_classes=1000)
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads) == PAPER[size]
    assert cfg.patch_size == patch and cfg.input_size == 32 and cfg.num_classes == 1000
    assert cfg.learn_sigma and cfg.out_channels == 8  # official: 4 latent channels, learned sigma
    assert DiTConfig.from_arch(f"{size}/{patch}") == DiTConfig.from_arch(f"DiT-{size}/{patch}")


def test_from_arch_variant_table_is_the_papers():
    assert DIT_VARIANTS == PAPER


@pytest.mark.parametrize("name", ["DiT-M/2", "DiT-XL", "DiT-XL/3", "DiT-XL/x", "XL-2", ""])
def test_from_arch_rejects_unknown_names(name):
    with pytest.raises(ValueError, match="unknown DiT arch"):
        DiTConfig.from_arch(name)


def test_dit_xl2_parameter_count_without_instantiating():
    """DiT-XL/2 (256 px): 675,129,632 stored parameters as the official repo counts them (fixed
    pos_embed included), 674.8M learned; counted on the meta device, nothing allocated."""
    with torch.device("meta"):
        model = DiT(DiTConfig.from_arch("DiT-XL/2", input_size=32, num_classes=1000))
    assert sum(p.numel() for p in model.parameters()) == 675_129_632
    assert sum(p.numel() for n, p in model.named_parameters() if n != "pos_embed") == 674_834_720


VARIANTS = [
    dict(),
    dict(
        input_size=16,
        patch_size=4,
        in_channels=3,
        hidden_size=128,
        depth=3,
        num_heads=2,
        num_classes=7,
        learn_sigma=False,
    ),
    dict(input_size=32, patch_size=8, hidden_size=64, depth=1, num_classes=1000, mlp_ratio=2.0),
    dict(input_size=12, patch_size=2, in_channels=1, hidden_size=64, depth=4, num_classes=1, freq_dim=128),
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_infer_official_config_and_round_trip(tiny_dit, tmp_path, variant):
    model = tiny_dit(seed=int(torch.randint(0, 2**31 - 1, ())), **variant)
    got = infer_official_config(model.state_dict())
    want = model.config
    for f in (
        "input_size",
        "patch_size",
        "in_channels",
        "hidden_size",
        "depth",
        "num_heads",
        "mlp_ratio",
        "num_classes",
        "learn_sigma",
        "freq_dim",
    ):
        assert getattr(got, f) == getattr(want, f), f
    torch.save(model.state_dict(), tmp_path / "dit.pt")
    loaded = load_denoiser(tmp_path / "dit.pt")
    assert isinstance(loaded, DiT)
    assert (loaded.config.time_freq_shift, loaded.config.mlp_norm_eps) == (0, 1e-6)  # official numerics
    assert_same_outputs(loaded, model)


# ----------------------------------------------------------------------------- official formats
def test_official_plain_state_dict(tiny_dit, tmp_path):
    model = tiny_dit(seed=1)
    torch.save(model.state_dict(), tmp_path / "a.pt")
    assert_same_outputs(load_denoiser(tmp_path / "a.pt"), model)
    # DDP-wrapped names and plain (metadata-free) safetensors load the same way
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pt")
    assert_same_outputs(load_denoiser(tmp_path / "ddp.pt"), model)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "plain.safetensors"))
    assert_same_outputs(load_denoiser(tmp_path / "plain.safetensors"), model)


def test_official_train_checkpoint_loads_ema(tiny_dit, tmp_path):
    ema, raw = tiny_dit(seed=2), tiny_dit(seed=3)
    opt = torch.optim.AdamW(raw.parameters(), lr=1e-4, weight_decay=0)
    x, t, y = probe(raw)
    raw.train()(x, t, y).square().mean().backward()
    opt.step()
    raw.eval()
    ckpt = {
        "model": raw.state_dict(),
        "ema": ema.state_dict(),
        "opt": opt.state_dict(),
        "args": argparse.Namespace(model="DiT-XL/2", image_size=256, num_classes=10, results_dir="results"),
    }
    torch.save(ckpt, tmp_path / "0400000.pt")
    loaded = load_denoiser(tmp_path / "0400000.pt")
    x, t, y = probe(ema)
    out = outputs(loaded, x, t, y)
    assert rel_err(out, outputs(ema, x, t, y)) < TOL
    assert rel_err(out, outputs(raw, x, t, y)) > 1e-2  # not the raw training weights
    # a checkpoint with only "model" loads those
    torch.save({"model": raw.state_dict(), "args": ckpt["args"]}, tmp_path / "model_only.pt")
    assert_same_outputs(load_denoiser(tmp_path / "model_only.pt"), raw)


def test_official_arch_argument(tmp_path):
    """A real DiT-S/2 (small inputs/classes) checks against arch names; the tiny ones do not match."""
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    model = DiT(DiTConfig.from_arch("DiT-S/2", input_size=4, num_classes=3)).eval()
    torch.save(model.state_dict(), tmp_path / "s2.pt")
    loaded = load_denoiser(tmp_path / "s2.pt", arch="DiT-S/2")
    assert (loaded.config.depth, loaded.config.hidden_size, loaded.config.num_heads) == (12, 384, 6)
    assert_same_outputs(loaded, model)
    one_line_user_error(lambda: load_denoiser(tmp_path / "s2.pt", arch="DiT-B/2"), "DiT-B/2", "12/768/2", "12/384/2")
    one_line_user_error(lambda: load_denoiser(tmp_path / "s2.pt", arch="DiT-S/4"), "DiT-S/4", "12/384/4", "12/384/2")
    one_line_user_error(lambda: load_denoiser(tmp_path / "s2.pt", arch="DiT-Q/2"), "unknown DiT arch", "DiT-Q/2")


def test_arch_mismatch_on_tiny_model(tiny_dit, tmp_path):
    torch.save(tiny_dit().state_dict(), tmp_path / "tiny.pt")
    one_line_user_error(lambda: load_denoiser(tmp_path / "tiny.pt", arch="DiT-XL/2"), "DiT-XL/2", "28/1152/2", "2/64/2")


# ----------------------------------------------------------------------------- our format
def test_our_safetensors_round_trip(tiny_dit, tmp_path):
    model = tiny_dit(seed=4, input_size=16, patch_size=4, in_channels=3, num_classes=5)
    path = save_denoiser(model, tmp_path / "ours.safetensors")
    loaded = load_denoiser(path)
    assert loaded.config == model.config
    assert_same_outputs(loaded, model)
    assert not (tmp_path / "ours.safetensors.tmp").exists()


def test_our_format_keeps_diffusers_numerics(tiny_dit, tmp_path):
    model = tiny_dit(seed=5, time_freq_shift=1, mlp_norm_eps=1e-5)
    loaded = load_denoiser(save_denoiser(model, tmp_path / "d.safetensors"))
    assert (loaded.config.time_freq_shift, loaded.config.mlp_norm_eps) == (1, 1e-5)
    assert_same_outputs(loaded, model)


# ----------------------------------------------------------------------------- diffusers formats
needs_diffusers = pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="needs diffusers")


def diffusers_dit(seed: int, share_embedder: bool = True):
    from diffusers import DiTTransformer2DModel

    tr = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=3,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
    )
    randomize_(tr, seed)
    if share_embedder:
        for blk in tr.transformer_blocks[1:]:
            blk.norm1.emb.load_state_dict(tr.transformer_blocks[0].norm1.emb.state_dict())
    return tr.eval()


class DiffusersAsDenoiser(torch.nn.Module):
    def __init__(self, tr):
        super().__init__()
        self.tr, self.num_classes, self.in_channels, self.input_size = tr, 10, 4, 8

    def forward(self, x, t, y):
        return self.tr(x, timestep=t, class_labels=y).sample


@needs_diffusers
@pytest.mark.parametrize("safe", [True, False])
def test_diffusers_dit_folder(tmp_path, safe):
    tr = diffusers_dit(int(torch.randint(0, 2**31 - 1, ())))
    tr.save_pretrained(tmp_path, safe_serialization=safe)
    name = "diffusion_pytorch_model." + ("safetensors" if safe else "bin")
    assert (tmp_path / name).exists()
    loaded = load_denoiser(tmp_path, num_classes=10)
    assert isinstance(loaded, DiT)
    c = loaded.config
    assert (
        c.depth,
        c.hidden_size,
        c.num_heads,
        c.input_size,
        c.patch_size,
        c.num_classes,
        c.learn_sigma,
    ) == (3, 32, 2, 8, 2, 10, True)
    assert_same_outputs(loaded, DiffusersAsDenoiser(tr))
    # our format written from it keeps the diffusers numerics
    again = load_denoiser(save_denoiser(loaded, tmp_path / "ours.safetensors"))
    assert_same_outputs(again, DiffusersAsDenoiser(tr))


@needs_diffusers
def test_diffusers_legacy_class_name(tmp_path):
    """facebook/DiT-XL-2-256 names its transformer class Transformer2DModel."""
    tr = diffusers_dit(7)
    tr.save_pretrained(tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    conf["_class_name"] = "Transformer2DModel"
    (tmp_path / "config.json").write_text(json.dumps(conf))
    assert_same_outputs(load_denoiser(tmp_path), DiffusersAsDenoiser(tr))


@needs_diffusers
def test_diffusers_pipeline_folder(tmp_path):
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline

    from igds_fast.models.vae import LatentVAE, load_vae

    tr = diffusers_dit(8)
    vae = AutoencoderKL(
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=8,
    ).eval()
    DiTPipeline(transformer=tr, vae=vae, scheduler=DDIMScheduler()).save_pretrained(tmp_path)
    assert (tmp_path / "model_index.json").exists()
    assert_same_outputs(load_denoiser(tmp_path), DiffusersAsDenoiser(tr))
    codec = load_vae(tmp_path)
    assert isinstance(codec, LatentVAE) and codec.channels == 4 and codec.downsample == 1
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert rel_err(codec.decode(z), vae.decode(z / 0.18215).sample) < TOL


@needs_diffusers
def test_diffusers_arch_check(tmp_path):
    diffusers_dit(9).save_pretrained(tmp_path)
    one_line_user_error(lambda: load_denoiser(tmp_path, arch="DiT-S/2"), "DiT-S/2", "3/32/2")


@needs_diffusers
def test_diffusers_distinct_block_embedders_refused(tmp_path):
    diffusers_dit(10, share_embedder=False).save_pretrained(tmp_path)
    one_line_user_error(lambda: load_denoiser(tmp_path), "block 1", "identical")


def tiny_unet(seed: int, classes: int | None = 11):
    from diffusers import UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=6,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
        num_class_embeds=classes,
    )
    return randomize_(unet, seed).eval()


@needs_diffusers
def test_diffusers_unet_folder(tmp_path):
    unet = tiny_unet(int(torch.randint(0, 2**31 - 1, ())))
    unet.save_pretrained(tmp_path / "unet")
    loaded = load_denoiser(tmp_path / "unet", num_classes=10)
    assert isinstance(loaded, UNetDenoiser)
    assert (loaded.num_classes, loaded.in_channels, loaded.input_size, loaded.learn_sigma) == (10, 3, 8, True)
    x = torch.randn(3, 3, 8, 8)
    t = torch.randint(0, 1000, (3,))
    y = torch.tensor([0, 9, 10])  # 10 = the null class
    with torch.no_grad():
        ref = unet(x, t, class_labels=y).sample
    assert rel_err(outputs(loaded, x, t, y), ref) < TOL
    # as a pipeline folder (unet/ next to model_index.json)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    assert rel_err(outputs(load_denoiser(tmp_path), x, t, y), ref) < TOL
    one_line_user_error(lambda: load_denoiser(tmp_path / "unet", num_classes=11), "10 classes", "11")


@needs_diffusers
def test_unconditional_unet_refused(tmp_path):
    tiny_unet(0, classes=None).save_pretrained(tmp_path)
    one_line_user_error(lambda: load_denoiser(tmp_path), "class")


# ----------------------------------------------------------------------------- errors
def test_wrong_and_missing_keys(tiny_dit, tmp_path):
    sd = tiny_dit().state_dict()

    def save(d, name):
        torch.save(d, tmp_path / name)
        return tmp_path / name

    p = save({k: v for k, v in sd.items() if k != "blocks.1.attn.qkv.bias"}, "missing.pt")
    one_line_user_error(lambda: load_denoiser(p), "missing", "blocks.1.attn.qkv.bias")
    p = save({k: v for k, v in sd.items() if k != "x_embedder.proj.weight"}, "no_embed.pt")
    one_line_user_error(lambda: load_denoiser(p), "x_embedder.proj.weight")
    p = save(sd | {"extra.weight": torch.zeros(3)}, "extra.pt")
    one_line_user_error(lambda: load_denoiser(p), "unexpected", "extra.weight")
    p = save(sd | {"blocks.1.mlp.fc2.weight": torch.zeros(64, 100)}, "shape.pt")
    one_line_user_error(lambda: load_denoiser(p), "blocks.1.mlp.fc2.weight", "(64, 100)", "(64, 256)")
    p = save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, "resnet.pt")
    one_line_user_error(lambda: load_denoiser(p), "DiT")
    p = save({"layer": [1, 2, 3]}, "not_tensors.pt")
    one_line_user_error(lambda: load_denoiser(p), "state dict")


def test_class_count_mismatch(tiny_dit, tmp_path):
    model = tiny_dit(num_classes=10)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    assert load_denoiser(tmp_path / "m.pt", num_classes=10).num_classes == 10
    one_line_user_error(lambda: load_denoiser(tmp_path / "m.pt", num_classes=1000), "10 classes", "1000")
    save_denoiser(model, tmp_path / "m.safetensors")
    one_line_user_error(lambda: load_denoiser(tmp_path / "m.safetensors", num_classes=5), "10 classes", "5")


def test_unreadable_files(tiny_dit, tmp_path):
    model = tiny_dit()
    torch.save(model.state_dict(), tmp_path / "ok.pt")
    save_denoiser(model, tmp_path / "ok.safetensors")
    cases = {
        "truncated.pt": (tmp_path / "ok.pt").read_bytes()[:2000],
        "junk.pt": b"\xff" + os.urandom(4095),  # 0xff: no pickle opcode, so never a GLOBAL
        "empty.pt": b"",
        "text.pt": b"hello, I am not a checkpoint\n",
        "truncated.safetensors": (tmp_path / "ok.safetensors").read_bytes()[:3000],
        "junk.safetensors": os.urandom(4096),
        "empty.safetensors": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        msg = one_line_user_error(lambda n=name: load_denoiser(tmp_path / n), name, "readable")
        assert "code execution" not in msg, msg
    one_line_user_error(lambda: load_denoiser(tmp_path / "nope.pt"), "nope.pt", "does not exist")


class NotAllowed:
    def __init__(self):
        self.weights = torch.zeros(2)


def test_pickles_that_need_code_execution_are_refused(tiny_dit, tmp_path):
    torch.save(tiny_dit(), tmp_path / "whole_module.pt")
    one_line_user_error(
        lambda: load_denoiser(tmp_path / "whole_module.pt"), "code execution", "igds_fast.models.dit.DiT"
    )
    torch.save({"model": NotAllowed()}, tmp_path / "custom.pt")
    one_line_user_error(lambda: load_denoiser(tmp_path / "custom.pt"), "code execution", "NotAllowed")


def test_bad_diffusers_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_user_error(lambda: load_denoiser(tmp_path / "empty"), "config.json")
    bad = tmp_path / "badjson"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    one_line_user_error(lambda: load_denoiser(bad), "config.json")
    other = tmp_path / "vae"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    one_line_user_error(lambda: load_denoiser(other), "AutoencoderKL")
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text(json.dumps({"_class_name": "DiTTransformer2DModel"}))
    one_line_user_error(lambda: load_denoiser(noweights), "no diffusion_pytorch_model")
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "model_index.json").write_text("{}")
    one_line_user_error(lambda: load_denoiser(pipe), "transformer/")


def test_small_width_stand_in_matches_xl_layout(tmp_path):
    """XL/2's tensor names and layout at a small width: every key of the XL config appears, with
    the same shapes up to width, so the official loader sees the same structure."""
    with torch.device("meta"):
        xl = DiT(DiTConfig.from_arch("DiT-XL/2", input_size=32, num_classes=1000)).state_dict()
    small = DiT(
        dataclasses.replace(
            DiTConfig.from_arch("DiT-XL/2", input_size=32, num_classes=1000), hidden_size=64, num_heads=1
        )
    ).state_dict()
    assert set(xl) == set(small)
    for k in xl:
        assert xl[k].dim() == small[k].dim(), k
    assert xl["final_layer.linear.weight"].shape[0] == small["final_layer.linear.weight"].shape[0] == 32
    cfg = infer_official_config(small)
    assert (cfg.depth, cfg.patch_size, cfg.input_size, cfg.num_classes, cfg.learn_sigma) == (
        28,
        2,
        32,
        1000,
        True,
    )
