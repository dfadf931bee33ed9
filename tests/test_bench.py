"""``igds-fast bench``: the JSON it writes, the FLOP formula, failures recorded as results."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from igds_fast.bench import BenchConfig, run_bench, runners
from igds_fast.bench.models import CRITIC_CLASSES, random_critic, random_dit
from igds_fast.cli import app
from igds_fast.errors import UserError
from igds_fast.models.critics import CriticConfig
from igds_fast.models.dit import DiTConfig
from igds_fast.models.flops import counted_flops, dit_forward_flops

TOP_KEYS = {
    "schema",
    "date",
    "command",
    "machine",
    "versions",
    "config",
    "models",
    "flops",
    "peak",
    "results",
}
MACHINE_KEYS = {"cpu", "cores", "platform", "torch_threads", "gpu", "cuda", "driver"}
VERSION_KEYS = {"igds_fast", "python", "torch", "onnxruntime", "onnx", "tensorrt"}
ROW_KEYS = {
    "status", "build_s", "precision", "notes", "step_ms", "step_ms_all", "step_ms_per_image", "step_tflops",
    "peak_fraction", "stages_ms", "max_rel_error_vs_eager_fp32", "e2e", "peak_mem_bytes", "peak_mem_kind",
    "step_speedup_vs_eager",
}  # fmt: skip
E2E_KEYS = {"steps", "chain_s", "decode_s", "png_s", "total_s", "img_s", "tflops"}


def positive(v: float) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_cli_bench_writes_every_field(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "--model",
        "tiny",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--backends",
        "eager,onnxruntime",
    ]
    args += ["--warmup", "0", "--repeats", "2", "--threads", "1", "--peak-tflops", "1", "--json", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert set(d) >= TOP_KEYS
    assert set(d["machine"]) >= MACHINE_KEYS and set(d["versions"]) >= VERSION_KEYS
    assert d["command"].startswith("igds-fast bench --model tiny")
    assert d["peak"]["tflops"] == 1.0
    assert all(positive(d["flops"][k]) for k in ("denoiser_forward_per_image", "critic_grad_per_image", "per_step"))
    # per image over the chain: 2 steps x CFG = 4 denoiser passes; the parts add up; the critic is the extra
    cost, f = d["flops"]["per_image"], d["flops"]
    assert cost["steps"] == 2 and cost["denoiser_passes"] == 4
    assert cost["flops"]["denoiser"] == 2 * f["denoiser_cfg_per_image"]
    assert cost["flops"]["critic"] == cost["guided_steps"] * f["critic_grad_per_image"]
    parts = cost["flops"]["denoiser"] + cost["flops"]["critic"] + cost["flops"]["decoder"]
    assert cost["flops"]["total"] == parts
    assert cost["over_unguided"] == pytest.approx(parts / cost["unguided_flops"]) and cost["over_unguided"] >= 1
    assert isinstance(d["machine"]["cpu_flags"], list)
    assert set(d["results"]) == {"eager", "onnxruntime"}
    for name, row in d["results"].items():
        assert row["status"] == "ok", row
        assert set(row) >= ROW_KEYS, (name, ROW_KEYS - set(row))
        assert set(row["e2e"]) >= E2E_KEYS
        for key in (
            "build_s",
            "step_ms",
            "step_ms_per_image",
            "step_tflops",
            "peak_fraction",
            "peak_mem_bytes",
        ):
            assert positive(row[key]), (name, key, row[key])
        assert len(row["step_ms_all"]) == 2 and all(positive(t) for t in row["step_ms_all"])
        assert all(positive(row["e2e"][k]) for k in ("chain_s", "total_s", "img_s", "tflops"))
        assert all(math.isfinite(e) and e < 1e-4 for e in row["max_rel_error_vs_eager_fp32"].values())
        assert positive(row["step_speedup_vs_eager"])
    stages = d["results"]["eager"]["stages_ms"]
    assert set(stages) == {"denoiser_cfg", "critic_grad", "update"} and all(positive(v) for v in stages.values())
    assert d["results"]["onnxruntime"]["stages_ms"] is None  # fused graph: no split


def test_failing_and_unavailable_backends_are_recorded(tmp_path, monkeypatch):
    real = runners.exported

    def broken(ctx, name, *rest):
        if name == "compiled":
            raise RuntimeError("boom")
        return real(ctx, name, *rest)

    monkeypatch.setattr(runners, "exported", broken)
    backends = ["compiled", "torch-compile-cg", "tensorrt"]
    cfg = BenchConfig(
        model="tiny",
        batch_size=2,
        steps=2,
        backends=backends,
        warmup=0,
        repeats=1,
        peak_tflops=1.0,
        threads=1,
    )
    rows = run_bench(cfg, json_path=tmp_path / "b.json", log=lambda _m: None)["results"]
    assert (rows["compiled"]["status"], rows["compiled"]["error"]) == ("error", "RuntimeError: boom")
    assert rows["torch-compile-cg"]["status"] == "skipped"  # CUDA graphs on a CPU
    assert json.loads((tmp_path / "b.json").read_text())["results"].keys() == rows.keys()


def test_dit_flops_formula():
    xl = dit_forward_flops(DiTConfig.from_arch("DiT-XL/2", input_size=32, in_channels=4))
    assert round(xl / 1e9, 1) == 237.3  # the DiT paper's 118.6 GMAC
    # Against torch's counter (matmuls + conv only; the formula adds the h*N^2 score scaling).
    c = DiTConfig(input_size=16, patch_size=4, in_channels=3, hidden_size=64, depth=2, num_heads=2, num_classes=10)
    dit = random_dit(c, 0)
    dit.set_attention("math")
    x, t, y = torch.zeros(1, 3, 16, 16), torch.zeros(1), torch.zeros(1, dtype=torch.long)
    counted = counted_flops(lambda: dit(x, t, y))
    n = (16 // 4) ** 2
    assert dit_forward_flops(c) - counted == 2 * c.depth * c.num_heads * n * n


@pytest.mark.parametrize("arch", ["vit", "conv"])
def test_critic_flops_formula_matches_torchs_counter(arch):
    """Matmuls, attention and convolutions exactly as torch counts them."""
    cfg = CriticConfig(in_channels=4, input_size=16, patch_size=2, width=32, depth=2, heads=2, arch=arch,
                       class_ids=CRITIC_CLASSES)  # fmt: skip
    critic = random_critic(cfg, 0)
    counted = counted_flops(lambda: critic(torch.zeros(1, 4, 16, 16), torch.zeros(1)))
    assert critic.flops_per_image() == counted > 0


def test_critic_is_small_next_to_xl2():
    cfg = BenchConfig(model="dit-xl2", resolution=256).validate()
    critic = random_critic(
        CriticConfig(in_channels=4, input_size=32, patch_size=2, width=256, depth=4, heads=4,
                           class_ids=CRITIC_CLASSES), 0,
    )  # fmt: skip
    xl = dit_forward_flops(DiTConfig.from_arch("DiT-XL/2", input_size=cfg.resolution // 8, in_channels=4))
    assert 3 * critic.flops_per_image() / (2 * xl) < 0.15


def test_rows_in_their_own_precision_and_attention(tmp_path):
    """'eager@bf16' runs one row in bf16 next to the run's --dtype; --attention sets the eager rows'."""
    cfg = BenchConfig(
        model="tiny", batch_size=2, steps=2, backends=["eager", "eager@bf16"], e2e_backends=[], warmup=0,
        repeats=1, peak_tflops=1.0, threads=1, attention="math",
    )  # fmt: skip
    rows = run_bench(cfg, log=lambda _m: None)["results"]
    assert [rows[k]["precision"] for k in ("eager", "eager@bf16")] == ["fp32", "bf16"]
    assert all("denoiser attention: math" in rows[k]["notes"] for k in rows)
    assert max(rows["eager"]["max_rel_error_vs_eager_fp32"].values()) < 1e-5  # the fp32 reference is this same pipeline
    assert 0 < max(rows["eager@bf16"]["max_rel_error_vs_eager_fp32"].values()) < 5e-2


@pytest.mark.parametrize(
    "kw",
    [
        {"model": "dit-xxl"},
        {"backends": ["eager", "magic"]},
        {"backends": ["eager@int8"]},
        {"backends": ["eager", "eager"]},
        {"attention": "flash"},
        {"dtype": "int8"},
        {"model": "dit-s2", "resolution": 200},
    ],
)
def test_bad_config_is_a_user_error(kw):
    with pytest.raises(UserError):
        BenchConfig(**kw).validate()
