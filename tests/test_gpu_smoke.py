"""``benchmarks/gpu_smoke.py`` (its CPU dry run, the lent GPU machine's package set, the stop at a CUDA
error that leaves the device unusable), and what it relies on in the library: the chain's kept
outputs under engines that reuse their output buffers (CUDA graphs), the bench's backend checks
before any export, its stop after such an error, TF32 set explicitly, the step's one-line label."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from igds_fast.backends import compiled
from igds_fast.backends import onnxruntime as ort_backend
from igds_fast.bench import BenchConfig, run_bench, runners
from igds_fast.bench import timing as bench_timing
from igds_fast.config import StepConfig
from igds_fast.errors import UserError
from igds_fast.guidance.step import GuidedStep
from igds_fast.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from igds_fast.models.critics import CriticConfig, NoiseCritic
from igds_fast.models.dit import DiT, DiTConfig
from igds_fast.models.vae import LatentVAE
from igds_fast.sampling.chain import run_chain
from igds_fast.seeds import SampleNoise

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_smoke.py"
STATUSES = {"ok", "skipped", "failed"}


def smoke(out: Path, *args: str, timeout: int = 900) -> tuple[subprocess.CompletedProcess, list[dict]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], env=env, capture_output=True,
                         text=True, timeout=timeout)  # fmt: skip
    lines = [json.loads(x) for x in (out / "smoke.jsonl").read_text().splitlines() if x.strip()]
    return res, lines


def script_module():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---- the smoke script ------------------------------------------------------------------------------


def test_dry_run_writes_one_line_per_check_and_exits_0(tmp_path: Path) -> None:
    """Every check of the GPU run, on the CPU at tiny sizes: a JSON line with its status each, a
    summary line each on stdout, no failure. (Its speed is not asserted.)"""
    res, lines = smoke(tmp_path / "s", "--dry-run")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    want = ["environment", "backend/compiled", "backend/onnxruntime", "backend/tensorrt", "distill", "xl/build"]
    want += [f"xl/{kind} b{b}" for b in (1, 2) for kind in ("plain", "guided", "chain")]
    want += ["profile", "compile", "aoti", "done"]
    assert [x["check"] for x in lines] == want
    for x in lines:
        assert x["status"] in STATUSES and x["status"] != "failed", x
        assert "reason" in x and isinstance(x["seconds"], float)
        assert f"] {x['check']}" in res.stdout
    by = {x["check"]: x for x in lines}
    assert all(by[n]["status"] == "ok" for n in want if n.startswith(("xl/", "distill", "environment", "profile")))
    for n in ("compile", "aoti"):  # a child stopped at its budget on a busy machine is skipped, with the reason
        assert by[n]["status"] == "ok" or by[n]["reason"].startswith("no time left"), by[n]
    assert by["distill"]["runs"]["bf16"]["pngs"] == by["distill"]["runs"]["fp32"]["pngs"] == 1
    assert "rel_l2" in by["distill"]["parity_bf16_vs_fp32"]
    label = "5 steps (ddpm), guided at t <= 300 (2 of 5 steps), clip guard 0, CFG 4 on 3 channels"
    assert all(by[f"xl/{k} b2"]["step_label"] == label for k in ("plain", "guided", "chain"))
    chain = by["xl/chain b2"]
    assert len(chain["step_ms_in_order"]) == 5 and chain["step_index_order"] == [4, 3, 2, 1, 0]
    # the default step has no clip guard: nothing predicted for the decoder's gradient
    assert by["xl/guided b2"]["predicted_clip_guard_bytes"] == 0 and by["xl/guided b2"]["tflops"] > 0
    assert len(by["profile"]["top"]) == 10
    assert by["done"]["counts"]["failed"] == 0


def test_lent_machine_package_set_is_skipped_with_reasons(tmp_path: Path) -> None:
    """No tensorrt, no onnxruntime-gpu (a CPU-only ORT), no diffusers, no CUDA toolkit: the backend
    checks say so and skip; nothing fails."""
    res, lines = smoke(tmp_path / "s", "--dry-run", "--only", "environment,backend",
                       "--pretend-missing", "tensorrt,diffusers,onnxruntime-gpu,cuda-toolkit", timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    by = {x["check"]: x for x in lines}
    env = by["environment"]
    assert env["status"] == "ok" and env["pretended_missing"] == ["cuda-toolkit", "diffusers", "onnxruntime-gpu",
                                                                  "tensorrt"]  # fmt: skip
    assert not any(env["optional"].values())
    assert "CUDAExecutionProvider" not in (env["onnxruntime_providers"] or [])
    assert by["backend/tensorrt"]["status"] == "skipped" and "tensorrt" in by["backend/tensorrt"]["reason"].lower()
    assert by["backend/onnxruntime"]["status"] == "skipped"
    assert "CUDAExecutionProvider" in by["backend/onnxruntime"]["reason"]
    assert by["backend/compiled"]["status"] == "skipped" and "CUDA" in by["backend/compiled"]["reason"]
    assert [x["check"] for x in lines] == ["environment", "backend/compiled", "backend/onnxruntime",
                                           "backend/tensorrt", "done"]  # fmt: skip


def test_a_cuda_error_that_breaks_the_device_stops_the_run(tmp_path: Path) -> None:
    res, lines = smoke(tmp_path / "s", "--dry-run", "--only", "environment,xl", "--fail-in", "xl/build", timeout=300)
    assert res.returncode == 1
    by = {x["check"]: x for x in lines}
    assert by["xl/build"]["status"] == "failed" and "illegal memory access" in by["xl/build"]["reason"]
    assert by["stopped"]["status"] == "failed" and "left the device unusable" in by["stopped"]["reason"]
    rows = [x for x in lines if x["check"].startswith("xl/") and x["check"] != "xl/build"]
    assert rows and all(x["status"] == "skipped" and "stopped at xl/build" in x["reason"] for x in rows)
    assert lines[-1]["check"] == "done" and lines[-1]["status"] == "failed"


def test_the_script_and_the_bench_know_the_same_cuda_errors() -> None:
    assert script_module().STICKY_CUDA_ERRORS == bench_timing.STICKY_CUDA_ERRORS
    err = RuntimeError("CUDA error: device-side assert triggered")
    assert bench_timing.sticky_cuda_error(err, torch.device("cpu"))
    assert bench_timing.sticky_cuda_error(torch.OutOfMemoryError("CUDA out of memory"), torch.device("cpu")) is None


# ---- the chain under engines that reuse their output buffers ---------------------------------------


class GraphLikeStep:
    """Returns the same output tensors on every call, written in place: what a replayed CUDA graph does."""

    def __init__(self, batch: int, shape: tuple[int, ...], feat_dim: int, sign: float = 1.0):
        self.x = torch.zeros(batch, *shape)
        self.f, self.log_q, self.h2 = torch.zeros(batch, feat_dim), torch.zeros(batch), torch.zeros(batch)
        self.sign = sign

    def __call__(self, x, i, y, noise, *memory):
        k = int(i[0])
        self.x.copy_(x + 1)
        self.f.fill_(self.sign * k)
        self.log_q.fill_(k)
        self.h2.fill_(-k)
        return self.x, self.f, self.log_q, self.h2


def test_chain_keeps_each_steps_features_when_the_engine_reuses_its_buffers() -> None:
    shape = (2, 4, 4)
    step, plain = GraphLikeStep(3, shape, 5), GraphLikeStep(3, shape, 5, sign=-1.0)
    noise = SampleNoise([1, 2, 3], shape)
    res = run_chain(step, 6, torch.zeros(3, dtype=torch.int32), noise, plain=plain, plain_steps=frozenset({2, 4}))
    got = [float(f[0, 0]) for f in res.feats]
    assert got == [0.0, 1.0, -2.0, 3.0, -4.0, 5.0]  # feats[i]: what step (or plain) computed at index i
    kept = [f.data_ptr() for f in res.feats]
    assert len(set(kept)) == 6 and step.f.data_ptr() not in kept and plain.f.data_ptr() not in kept
    x0 = res.x0.clone()
    step(res.x0, torch.tensor([9]), None, None)  # a later call (the next chunk) writes its buffers again
    assert torch.equal(res.x0, x0) and float(res.log_q[0]) == 0.0 and float(res.h2[0]) == 0.0


# ---- the bench: backends checked before any export, the stop, TF32, the label ----------------------


def test_backends_missing_for_cuda_are_skipped_before_any_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU-only ONNX Runtime, or no CUDA toolkit for AOTInductor: skipped with the reason, and
    export_engine is never called."""
    monkeypatch.setattr(runners, "export_engine", lambda spec: pytest.fail("exported although it cannot run"))
    monkeypatch.setattr(ort_backend, "available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(runners, "available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(compiled, "cuda_toolkit", lambda: None)
    ctx = SimpleNamespace(device=torch.device("cuda"), cfg=SimpleNamespace(dtype="fp16"))
    with pytest.raises(runners.Skipped, match="CUDAExecutionProvider"):
        runners.exported(ctx, "onnxruntime", "fp16")
    with pytest.raises(runners.Skipped, match="CUDA toolkit"):
        runners.exported(ctx, "compiled", "bf16")
    assert runners.unavailable_on("onnxruntime", "cpu") is None
    # the package build itself refuses before tracing anything
    with pytest.raises(UserError, match="CUDA toolkit"):
        compiled.aoti_package(lambda: pytest.fail("traced"), (SimpleNamespace(device=torch.device("cuda")),),
                              Path("never.pt2"))  # fmt: skip


def test_bench_stops_after_a_cuda_error_that_breaks_the_device(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    def broken(ctx, name, *rest):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(runners, "exported", broken)
    cfg = BenchConfig(model="tiny", batch_size=2, steps=2, backends=["compiled", "eager", "eager@bf16"], warmup=0,
                      repeats=1, peak_tflops=1.0, threads=1)  # fmt: skip
    rows = run_bench(cfg, json_path=tmp_path / "b.json", log=lambda _m: None)["results"]
    assert rows["compiled"]["status"] == "error" and "illegal memory access" in rows["compiled"]["sticky_cuda_error"]
    for name in ("eager", "eager@bf16"):
        assert rows[name]["status"] == "skipped" and "left the device unusable" in rows[name]["reason"]
    assert json.loads((tmp_path / "b.json").read_text())["results"] == rows


def test_tf32_is_set_explicitly_for_matmuls_and_convolutions() -> None:
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with runners.tf32(False):
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
        with runners.tf32(True):
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_step_label_says_what_the_default_step_runs() -> None:
    den = DiT(DiTConfig(input_size=4, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2))
    critic = NoiseCritic(CriticConfig(in_channels=4, input_size=4, patch_size=2, width=32, depth=1, heads=2,
                                      class_ids=[0, 1]))  # fmt: skip
    vae = LatentVAE(AutoencoderKL(AutoencoderKLConfig(block_out_channels=(32,), latent_channels=4)))
    step = GuidedStep(den, StepConfig(), critic, decoder=vae)
    assert runners.step_label(step) == (
        "20 steps (ddpm), guided at t <= 300 (6 of 20 steps), clip guard 0, CFG 4 on 3 channels"
    )
    step = GuidedStep(den, StepConfig(steps="50", clip_guard=0.5), critic, decoder=vae)
    assert runners.step_label(step) == (
        "50 steps (ddpm), guided at t <= 300 (15 of 50 steps), clip guard 0.5, CFG 4 on 3 channels"
    )
