"""Exported guided-step engines against the eager GuidedStep, manifests, CLI and TensorRT readiness.

Tiny random models keep exports to a few seconds each on 2 CPU cores. AOTInductor and
torch.compile compile C++ for ~40-80 s here: those tests are marked slow.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from igds_fast.backends.build import (
    ExportSpec,
    example_labels,
    expect_for,
    export_engine,
    step_shapes,
    verify_engine,
    worst_error,
)
from igds_fast.backends.engine_manifest import file_sha256
from igds_fast.backends.engine_manifest import read_engine_manifest as read_manifest
from igds_fast.backends.io import random_inputs, rel_error
from igds_fast.backends.registry import load_engine
from igds_fast.cli import app
from igds_fast.errors import UserError
from igds_fast.guidance.step import StepConfig
from igds_fast.models.critics import CriticConfig, NoiseCritic, save_critic
from igds_fast.models.dit import DiT, DiTConfig
from igds_fast.models.loading import save_denoiser
from igds_fast.sampling.pipeline import build_pipeline

CLASSES = [1, 3, 5, 7]
# 1 eps RMS (2.5x the default) at every t of a 50-step schedule: a missing gradient would show
GUIDED = StepConfig(steps="50", beta=0.5, guidance_scale=1.0, window_hi=999, clip_guard=0.0)
OFF = StepConfig(steps="50", guidance="off")


def tiny_dit(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    dit = DiT(
        DiTConfig(input_size=16, patch_size=4, in_channels=3, hidden_size=64, depth=2, num_heads=2, num_classes=10)
    )
    torch.nn.init.normal_(dit.final_layer.linear.weight, std=0.05)  # zero-initialised: randomise it
    return dit


def tiny_critic(seed: int) -> NoiseCritic:
    torch.manual_seed(seed)
    cfg = CriticConfig(
        in_channels=3, input_size=16, patch_size=4, width=32, depth=1, heads=2, feat_dim=8, class_ids=CLASSES
    )
    critic = NoiseCritic(cfg)
    for blk in critic.blocks:  # adaLN starts at zero: randomise so t matters
        torch.nn.init.normal_(blk.ada.weight, std=0.05)
    return critic


def tiny_conv_critic(seed: int) -> NoiseCritic:
    torch.manual_seed(seed)
    cfg = CriticConfig(in_channels=3, input_size=16, width=8, depth=1, feat_dim=8, arch="conv", class_ids=CLASSES)
    critic = NoiseCritic(cfg)
    for m in critic.modules():  # the t-modulation starts at zero: randomise so t matters
        if hasattr(m, "ada"):
            torch.nn.init.normal_(m.ada.weight, std=0.05)
    return critic


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "denoiser": save_denoiser(tiny_dit(), d / "dit.safetensors"),
        "critics": save_critic(tiny_critic(1), d / "critic.safetensors"),
        "other_critics": save_critic(tiny_critic(2), d / "critic2.safetensors"),
    }


def spec(models: dict[str, Path], out: Path, cfg: StepConfig, batch: int, backend: str = "onnxruntime") -> ExportSpec:
    return ExportSpec(models["denoiser"], None, models["critics"], cfg, batch, 6, "fp32", backend, out)


@pytest.fixture(scope="module")
def engines(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Path]:
    """ORT engines for (guidance, batch); the guided batch-8 one is built through the CLI."""
    root = tmp_path_factory.mktemp("engines")
    out = {}
    for cfg, b in ((GUIDED, 1), (OFF, 1), (OFF, 8)):
        out[(cfg.guidance, b)] = export_engine(spec(models, root / f"{cfg.guidance}-{b}", cfg, b))
    cli = root / "igds-8"
    args = [
        "export",
        "--denoiser",
        str(models["denoiser"]),
        "--vae",
        "none",
        "--critics",
        str(models["critics"]),
    ]
    args += [
        "--batch-size",
        "8",
        "--memory-size",
        "6",
        "--beta",
        "0.5",
        "--guidance-scale",
        "1",
        "--window-hi",  # GUIDED's window (the command line's default guides only t <= 300)
        "999",
        "--clip-guard",  # GUIDED's
        "0",
        "--steps",  # GUIDED's 50-step schedule
        "50",
        "--out",
        str(cli),
    ]
    res = CliRunner().invoke(app, args + ["--verify"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "relative error" in res.output
    out[("igds", 8)] = cli
    return out


def eager_step(models: dict[str, Path], cfg: StepConfig):  # noqa: ANN201
    return build_pipeline(models["denoiser"], None, models["critics"], cfg).step


def assert_matches_eager(
    models: dict[str, Path], cfg: StepConfig, engine: Any, batch: int, indices: tuple[int, ...], seed: int,
    differs_from: StepConfig | None = None,
) -> None:  # fmt: skip
    """The engine's step equals the eager step of ``cfg`` (< 1e-4 on every output) at these step indices
    on fresh random inputs; with ``differs_from``, that config's eager step lies > 100x the error away
    from x_prev (what tells the two apart is really in the graph)."""
    step = eager_step(models, cfg)
    other = eager_step(models, differs_from) if differs_from is not None else None
    shapes = step_shapes(step, batch, 6)
    for k, i in enumerate(indices):
        args = random_inputs(shapes, 50, example_labels(step), seed=seed + k, i=i)
        with torch.no_grad():
            ref = step(*args)
            errs = [rel_error(o, r) for o, r in zip(engine.step(*args), ref, strict=True)]
            assert max(errs) < 1e-4, (i, errs)
            if other is not None:
                assert rel_error(other(*args)[0], ref[0]) > 100 * errs[0], i


@pytest.mark.parametrize("guidance", ["igds", "off"])
@pytest.mark.parametrize("batch", [1, 8])
def test_ort_step_matches_eager(models, engines, guidance: str, batch: int) -> None:
    cfg = GUIDED if guidance == "igds" else OFF
    engine = load_engine(engines[(guidance, batch)])
    # guided: the graph really carries the critic gradient
    assert_matches_eager(models, cfg, engine, batch, (49, 30, 7, 0), 100, OFF if guidance == "igds" else None)


def test_conv_critic_step_exports_as_the_eager_step(models, tmp_path: Path) -> None:
    """A conv critic's input-gradient (transposed convolutions, GroupNorm backward) is part of the one graph."""
    conv = {**models, "critics": save_critic(tiny_conv_critic(3), tmp_path / "conv.safetensors")}
    engine = load_engine(export_engine(spec(conv, tmp_path / "e", GUIDED, 2)))
    assert_matches_eager(conv, GUIDED, engine, 2, (45, 3), 200, OFF)


def test_nan_never_passes() -> None:
    assert rel_error(torch.tensor([float("nan"), 1.0]), torch.ones(2)) == float("inf")
    assert not rel_error(torch.tensor([float("nan")]), torch.ones(1)) < 1e-4


def test_trajectory_50_steps(models, tmp_path: Path) -> None:
    """A whole guided chain at the default scales (GUIDED's 10x scale makes these random tiny models'
    trajectories chaotic, so round-off would be amplified, not measured)."""
    from igds_fast.sampling import run_chain
    from igds_fast.seeds import SampleNoise

    cfg = StepConfig(steps="50")
    step = eager_step(models, cfg)
    engine = load_engine(export_engine(spec(models, tmp_path / "traj", cfg, 8)))
    y = torch.tensor([1, 3, 5, 7, 1, 3, 5, 7])
    ref = run_chain(step, 50, y, SampleNoise(list(range(8)), (3, 16, 16)))
    out = run_chain(engine.step, 50, y, SampleNoise(list(range(8)), (3, 16, 16)))
    assert rel_error(out.x0, ref.x0) < 1e-3
    assert rel_error(out.h2, ref.h2) < 1e-3
    assert torch.equal(engine.decode(out.x0), out.x0.clamp(-1, 1))  # pixel space: no decoder graph


def test_clip_guard_exports_as_the_eager_step(models, tmp_path: Path) -> None:
    """The clip guard is part of the one exported graph: ORT matches eager, and differs from the
    unguarded step (so the guard is really in the graph)."""
    # 20 eps RMS, so the guard binds on random inputs; no range guard, which on this pixel model
    # would clip x0_hat before the clip guard sees it
    cfg = StepConfig(**{**GUIDED.to_dict(), "clip_guard": 0.5, "guidance_scale": 20.0, "range_guard": False})
    unguarded_cfg = StepConfig(**{**cfg.to_dict(), "clip_guard": 0.0})
    engine = load_engine(export_engine(spec(models, tmp_path / "clip", cfg, 4)))
    assert_matches_eager(models, cfg, engine, 4, (40, 5), 300, unguarded_cfg)
    assert read_manifest(tmp_path / "clip")["step"]["clip_guard"] == 0.5


def test_graph_is_tensorrt_ready(engines) -> None:
    from igds_fast.backends.onnx_export import float64_tensors, load_inlined, op_types, trt_unsupported_ops

    path = engines[("igds", 8)] / "step.onnx"
    model = load_inlined(path)
    assert trt_unsupported_ops(path) == []
    assert all("::" not in op for op in op_types(model))  # only default-domain ONNX ops
    assert float64_tensors(model) == []
    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims == {
        "x": [8, 3, 16, 16],
        "i": [1],
        "y": [8],
        "noise": [8, 3, 16, 16],
        "memory": [6, 8],
        "memory_mask": [8, 6],
    }
    assert [o.name for o in model.graph.output] == ["x_prev", "feats", "log_q", "h2"]


def test_manifest_records_models_and_files(models, engines) -> None:
    m = read_manifest(engines[("igds", 8)])
    assert m["models"]["denoiser"]["sha256"] == file_sha256(models["denoiser"])
    assert m["models"]["critic"]["sha256"] == file_sha256(models["critics"])
    assert m["models"]["vae"]["sha256"] is None
    assert m["shapes"] == {
        "batch_size": 8,
        "channels": 3,
        "height": 16,
        "width": 16,
        "memory_size": 6,
        "feat_dim": 8,
    }
    assert m["step"]["guidance_scale"] == 1.0 and "torch" in m["versions"]
    assert set(m["files"]) == {"step.onnx"} and m["files"]["step.onnx"]["size"] > 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"critics": "other_critics"}, "critic_sha256"),
        ({"steps": "25"}, "step.steps"),
        ({"batch_size": 4}, "batch_size"),
    ],
)
def test_manifest_mismatch_is_refused(models, engines, change: dict, field: str) -> None:
    cfg = StepConfig(**{**GUIDED.to_dict(), **({"steps": change["steps"]} if "steps" in change else {})})
    critics = models[change.get("critics", "critics")]
    want = expect_for(models["denoiser"], None, critics, cfg, change.get("batch_size", 8), 6, "fp32", "onnxruntime")
    with pytest.raises(UserError, match=f"engine mismatch: {field} "):
        load_engine(engines[("igds", 8)], expect=want)


def test_matching_expectation_loads(models, engines) -> None:
    want = expect_for(models["denoiser"], "none", models["critics"], GUIDED, 8, 6, "fp32", "onnxruntime")
    assert load_engine(engines[("igds", 8)], expect=want).batch_size == 8


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_engine_is_refused(engines, tmp_path: Path, damage: str) -> None:
    copy = tmp_path / "eng"
    shutil.copytree(engines[("off", 1)], copy)
    f = copy / "step.onnx"
    data = bytearray(f.read_bytes())
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    else:
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    with pytest.raises(UserError, match="truncated" if damage == "truncate" else "sha256"):
        load_engine(copy)


def test_export_refuses_existing_folder(models, engines) -> None:
    target = engines[("off", 1)]
    before = {p.name: (p.stat().st_mtime_ns, file_sha256(p)) for p in target.iterdir()}
    args = [
        "export",
        "--denoiser",
        str(models["denoiser"]),
        "--guidance",
        "off",
        "--batch-size",
        "1",
        "--out",
        str(target),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0 and isinstance(res.exception, UserError)
    assert "already exists" in str(res.exception) and "--overwrite" in str(res.exception)
    assert {p.name: (p.stat().st_mtime_ns, file_sha256(p)) for p in target.iterdir()} == before
    assert not list(target.parent.glob(f".{target.name}.tmp-*"))


def test_recipes_parse() -> None:
    from igds_fast.backends.build import read_recipe

    for path in sorted(Path(__file__).parents[1].joinpath("export").glob("*.toml")):
        r = read_recipe(path)
        assert r["backend"] in ("onnxruntime", "tensorrt", "compiled"), path


def test_doctor_lists_every_backend() -> None:
    res = CliRunner().invoke(app, ["doctor"])
    assert res.exit_code == 0, res.output
    for name in ("eager", "compiled", "onnxruntime", "tensorrt"):
        assert f"\n{name} " in res.output


def test_tensorrt_backend(models, tmp_path: Path) -> None:
    from igds_fast.backends.tensorrt import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    from igds_fast.backends.backend import LoadOptions

    out = export_engine(spec(models, tmp_path / "trt", GUIDED, 8, backend="tensorrt"))
    rows = verify_engine(load_engine(out, options=LoadOptions(device="cuda")), eager_step(models, GUIDED))
    assert worst_error(rows) < 1e-3


def test_denoiser_attention_per_backend(models, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ONNX graphs spell the denoiser's attention out; AOTInductor and torch.compile graphs keep the
    fused scaled_dot_product_attention op (the denoiser is never differentiated). Both match eager."""
    from igds_fast.backends import compiled
    from igds_fast.backends import onnx_export as ox

    step = eager_step(models, GUIDED)
    args = random_inputs(step_shapes(step, 2, 6), 50, CLASSES, seed=3, i=25)
    with torch.no_grad():
        ref = step(*args)
    for attention in ("math", "sdpa"):
        gm = ox.trace_step(step, args, attention=attention)
        assert bool(ox.sdpa_ops(gm)) == (attention == "sdpa"), attention
        assert max(rel_error(o, r) for o, r in zip(gm(*args), ref, strict=True)) < 1e-5, attention
    assert all(b.attn.impl == "sdpa" for b in step.denoiser.blocks)  # restored after tracing
    seen: dict[str, list[str]] = {}

    def record(name: str, result: Any = None) -> Any:
        return lambda gm, *a, **k: seen.setdefault(name, ox.sdpa_ops(gm)) and result

    monkeypatch.setattr(compiled, "aoti_package", record("aoti"))
    compiled.build_step_package(step, args, tmp_path / "step.pt2")
    monkeypatch.setattr(torch, "compile", record("torch.compile"))
    compiled.jit_step(step, args)
    monkeypatch.setattr(ox, "export_graph", record("onnx"))
    ox.export_step(step, args, tmp_path / "step.onnx")
    assert seen["aoti"] and seen["torch.compile"] and not seen["onnx"], seen


@pytest.mark.slow
def test_ort_fp16_on_cpu(models, tmp_path: Path) -> None:
    s = ExportSpec(models["denoiser"], None, models["critics"], GUIDED, 2, 6, "fp16", "onnxruntime", tmp_path / "e")
    rows = verify_engine(
        load_engine(export_engine(s)),
        build_pipeline(models["denoiser"], None, models["critics"], GUIDED, dtype="fp16").step,
    )
    assert worst_error(rows) < 1e-2


@pytest.mark.slow
def test_torch_compile_matches_eager(models) -> None:
    from igds_fast.backends.compiled import CompiledEngine

    step = eager_step(models, GUIDED)
    shapes = step_shapes(step, 2, 6)
    args = random_inputs(shapes, 50, CLASSES, seed=5, i=20)
    out = CompiledEngine.jit(step, shapes, args).step(*args)
    assert max(rel_error(o, r) for o, r in zip(out, step(*args), strict=True)) < 1e-4


@pytest.mark.slow
def test_aoti_package_reloads_in_fresh_process(models, tmp_path: Path) -> None:
    out = export_engine(spec(models, tmp_path / "aoti", GUIDED, 2, backend="compiled"))
    step = eager_step(models, GUIDED)
    args = random_inputs(step_shapes(step, 2, 6), 50, CLASSES, seed=9, i=33)
    engine = load_engine(out)
    got = engine.step(*args)
    assert max(rel_error(o, r) for o, r in zip(got, step(*args), strict=True)) < 1e-4
    torch.save({"args": args, "x_prev": got[0]}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import time, torch
        from igds_fast.backends.registry import load_engine
        io = torch.load({str(tmp_path / "io.pt")!r})
        t = time.time()
        out = load_engine({str(out)!r}).step(*io["args"])
        print(json.dumps({{"seconds": time.time() - t, "diff": float((out[0] - io["x_prev"]).abs().max())}}))
        """
    ).replace("import time, torch", "import json, time, torch")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["diff"] == 0.0 and info["seconds"] < 20  # loads compiled code: no recompilation


def test_latent_engine_exports_decoder(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    from igds_fast.models.vae import load_vae

    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    )
    vae.save_pretrained(tmp_path / "vae")
    dit = DiT(DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=5))
    torch.nn.init.normal_(dit.final_layer.linear.weight, std=0.05)
    den = save_denoiser(dit, tmp_path / "dit.safetensors")
    s = ExportSpec(den, str(tmp_path / "vae"), None, OFF, 2, 1, "fp32", "onnxruntime", tmp_path / "eng")
    engine = load_engine(export_engine(s))
    assert engine.manifest["models"]["vae"]["sha256"] == file_sha256(tmp_path / "vae")
    z = torch.randn(3, 4, 8, 8)  # 3 rows through a batch-2 decoder: chunked and padded
    with torch.no_grad():
        ref = load_vae(tmp_path / "vae").decode(z).clamp(-1, 1)
    assert rel_error(engine.decode(z), ref) < 1e-4
    rows = verify_engine(engine, build_pipeline(den, str(tmp_path / "vae"), None, OFF).step)
    assert worst_error(rows) < 1e-4


def test_clip_guard_exports_through_the_vae_decoder(tmp_path: Path) -> None:
    """A latent guided engine with --clip-guard: the decoder and its gradient are in the one step
    graph; ORT matches eager, and the guard changes the step (the random decoder clips)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    )
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(30)  # decoded images well outside [-1, 1]
    vae.save_pretrained(tmp_path / "vae")
    dit = DiT(
        DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=10)
    )
    torch.nn.init.normal_(dit.final_layer.linear.weight, std=0.05)
    den = save_denoiser(dit, tmp_path / "dit.safetensors")
    torch.manual_seed(1)
    critic = NoiseCritic(
        CriticConfig(
            in_channels=4, input_size=8, patch_size=2, width=32, depth=1, heads=2, feat_dim=8, class_ids=CLASSES
        )
    )
    critics = save_critic(critic, tmp_path / "critic.safetensors")
    cfg = StepConfig(**{**GUIDED.to_dict(), "clip_guard": 0.5})
    s = ExportSpec(den, str(tmp_path / "vae"), critics, cfg, 2, 6, "fp32", "onnxruntime", tmp_path / "eng")
    engine = load_engine(export_engine(s))
    step = build_pipeline(den, str(tmp_path / "vae"), critics, cfg).step
    rows = verify_engine(engine, step)
    assert worst_error(rows) < 1e-4
    plain = build_pipeline(den, str(tmp_path / "vae"), critics, StepConfig(**{**cfg.to_dict(), "clip_guard": 0.0})).step
    args = random_inputs(step_shapes(step, 2, 6), 50, [1, 3], seed=7, i=5)
    with torch.no_grad():
        assert rel_error(plain(*args)[0], step(*args)[0]) > 1e-3
    assert engine.manifest["step"]["clip_guard"] == 0.5


# the strided convolution's input-gradient needs output padding 1 after the upsampling (16 or 14 px in)
# and 0 when it sees 7 px directly; a dilated one is in every case
@pytest.mark.parametrize(("size", "upsample"), [(8, True), (7, True), (7, False)])
def test_decoder_input_gradients_trace_to_plain_ops(size: int, upsample: bool) -> None:
    """What the clip guard differentiates (convolutions: strided, grouped, dilated; 2x nearest
    upsampling) traces to forward-only ops that match autograd on fresh inputs."""
    from torch.nn import functional as F

    from igds_fast.backends.onnx_export import trace

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=2, dilation=2)
    down = torch.nn.Conv2d(4, 2, 3, stride=2, padding=1, groups=2)
    for m in (conv, down):
        m.requires_grad_(False)

    def net(z: torch.Tensor) -> torch.Tensor:
        h = conv(z)
        return down(F.interpolate(h, scale_factor=2, mode="nearest") if upsample else h)

    def grad(z: torch.Tensor) -> torch.Tensor:
        return torch.func.grad(lambda z: net(z).pow(2).sum())(z)

    gm = trace(grad, (torch.randn(2, 3, size, size),))
    ops = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert not any("backward" in op for op in ops)
    z = torch.randn(2, 3, size, size)
    assert rel_error(gm(z), grad(z)) < 1e-5
