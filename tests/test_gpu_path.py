"""The GPU path, checked on a CPU: ONNX Runtime provider lists and refusals (fake provider lists),
per-backend attention in traced graphs, the export device default, the bench's JSON when it is
killed or timed out mid-run, the staged GPU check's dry run through the CLI, and the data pack the
trainers read. Nothing here runs CUDA: what needs a GPU is in ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from igds_fast.backends import onnxruntime as ortb
from igds_fast.backends.backend import LoadOptions
from igds_fast.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


# ---- ONNX Runtime: provider lists, stream options, refusals ------------------------------------


@pytest.fixture
def providers(monkeypatch: pytest.MonkeyPatch):
    """Set what this onnxruntime 'has': ``providers([CUDA, CPU])``."""

    def set_(names: list[str]) -> None:
        monkeypatch.setattr(ortb, "available_providers", lambda: list(names))

    return set_


def test_provider_list_device_ids_and_user_stream(providers, tmp_path: Path) -> None:
    providers([TRT, CUDA, CPU])
    cuda = ortb.provider_list("cuda", tmp_path / "c", device_id=1, stream=1234)
    assert cuda == [
        (CUDA, {"device_id": 1, "has_user_compute_stream": "1", "user_compute_stream": "1234"}),
        CPU,
    ]
    trt = ortb.provider_list("tensorrt", tmp_path / "c", device_id=2, stream=99)
    assert [p if isinstance(p, str) else p[0] for p in trt] == [TRT, CUDA, CPU]
    trt_opts, cuda_opts = trt[0][1], trt[1][1]
    assert trt_opts["device_id"] == 2 and cuda_opts["device_id"] == 2
    assert trt_opts["user_compute_stream"] == "99" and cuda_opts["user_compute_stream"] == "99"
    assert trt_opts["trt_engine_cache_path"] == str(tmp_path / "c") and (tmp_path / "c").is_dir()
    # reduced precision is the typed graph's: TensorRT EP must not lower the fp32 critic gradient
    assert not any(k in trt_opts for k in ("trt_fp16_enable", "trt_bf16_enable", "trt_int8_enable"))
    no_stream = ortb.provider_list("cuda", tmp_path, device_id=0)
    assert no_stream[0] == (CUDA, {"device_id": 0})
    assert ortb.provider_list("auto", tmp_path)[0][0] == CUDA
    assert ortb.provider_list("cpu", tmp_path) == [CPU]


def test_provider_list_refuses_a_missing_provider(providers, tmp_path: Path) -> None:
    providers([CPU])
    assert ortb.provider_list("auto", tmp_path) == [CPU]
    for choice in ("cuda", "tensorrt"):
        with pytest.raises(UserError, match=f"no {ortb.PROVIDERS[choice]}.*onnxruntime-gpu"):
            ortb.provider_list(choice, tmp_path)
    with pytest.raises(UserError, match="unknown provider"):
        ortb.provider_list("rocm", tmp_path)


class FakeSession:
    """An InferenceSession that 'opens' with the providers ``used`` (ORT's silent fallback)."""

    used: list[str] = [CPU]
    opened: list[Any] = []

    def __init__(self, path: str, sess_options: Any = None, providers: list | None = None):
        FakeSession.opened.append(providers)

    def get_providers(self) -> list[str]:
        return list(self.used)

    def get_inputs(self) -> list[Any]:
        return []

    def get_outputs(self) -> list[Any]:
        return []


@pytest.fixture
def fake_session(monkeypatch: pytest.MonkeyPatch):
    import onnxruntime as ort

    FakeSession.opened = []
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    return FakeSession


@pytest.mark.parametrize(
    ("asked", "used"),
    [
        ([(CUDA, {"device_id": 0}), CPU], [CPU]),  # no CUDA libraries: ORT fell back to the CPU
        ([(TRT, {}), (CUDA, {}), CPU], [CUDA, CPU]),  # an option this build does not know: no TensorRT
        ([(CUDA, {}), CPU], []),
    ],
)
def test_session_refuses_a_provider_it_did_not_get(fake_session, tmp_path: Path, asked, used) -> None:
    fake_session.used = used
    want = asked[0][0]
    with pytest.raises(UserError, match=f"instead of {want}"):
        ortb.open_session(tmp_path / "step.onnx", asked)


def test_session_with_the_provider_asked_for_opens(fake_session, tmp_path: Path) -> None:
    fake_session.used = [CUDA, CPU]
    ortb.open_session(tmp_path / "step.onnx", [(CUDA, {}), CPU])
    fake_session.used = [CPU]
    ortb.open_session(tmp_path / "step.onnx", [CPU])


MANIFEST = {
    "id": "x",
    "shapes": {"batch_size": 2, "channels": 3, "height": 8, "width": 8, "memory_size": 4, "feat_dim": 8},
    "num_steps": 4,
    "graphs": {"step": "step.onnx"},
}


def test_ort_engine_refuses_device_and_provider_mismatches(fake_session, providers, tmp_path: Path) -> None:
    providers([CUDA, CPU])
    with pytest.raises(UserError, match="--providers cpu cannot run an engine on --device cuda"):
        ortb.OrtEngine(tmp_path, MANIFEST, LoadOptions(device="cuda", providers="cpu"))
    with pytest.raises(UserError, match="needs --device cuda"):
        ortb.OrtEngine(tmp_path, MANIFEST, LoadOptions(device="cpu", providers="cuda"))
    assert fake_session.opened == []  # refused before any session is opened


class FakeStream:
    cuda_stream = 4242

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakeStream)


def test_ort_engine_on_cuda_n_uses_that_device_and_torchs_stream(
    fake_session, providers, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """cuda:1 -> device_id 1 in every provider's options, and torch's current stream of that device
    as ORT's compute stream (the IO-binding race of issue 12, item 3)."""
    providers([TRT, CUDA, CPU])
    seen: list[Any] = []
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: seen.append(device) or FakeStream())
    fake_session.used = [CUDA, CPU]
    engine = ortb.OrtEngine(tmp_path, MANIFEST, LoadOptions(device="cuda:1", providers="auto"))
    assert engine.device == torch.device("cuda:1") and engine.on_cuda
    assert seen == [torch.device("cuda:1")]
    (asked,) = fake_session.opened
    assert asked == [(CUDA, {"device_id": 1, "has_user_compute_stream": "1", "user_compute_stream": "4242"}), CPU]
    fake_session.opened = []
    fake_session.used = [TRT, CUDA, CPU]
    ortb.OrtEngine(tmp_path, MANIFEST, LoadOptions(device="cuda:1", providers="tensorrt"))
    (asked,) = fake_session.opened
    assert [o[1]["device_id"] for o in asked[:2]] == [1, 1]
    fake_session.used = [CUDA, CPU]  # asked for TensorRT, got the CUDA EP: refused
    with pytest.raises(UserError, match="instead of TensorrtExecutionProvider"):
        ortb.OrtEngine(tmp_path, MANIFEST, LoadOptions(device="cuda:1", providers="tensorrt"))


# ---- the bench leaves a valid JSON when it is stopped mid-run -----------------------------------


def bench_args(out: Path, backends: str) -> list[str]:
    return [
        sys.executable, "-m", "igds_fast.cli", "bench", "--model", "tiny", "--batch-size", "2", "--steps", "2",
        "--backends", backends, "--e2e-backends", "eager", "--warmup", "0", "--repeats", "1", "--threads", "1",
        "--peak-tflops", "1", "--json", str(out),
    ]  # fmt: skip


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # not written yet (it is replaced atomically, so never half-written)


@pytest.mark.parametrize(("sig", "cut_status"), [(signal.SIGKILL, "running"), (signal.SIGTERM, "timed out")])
def test_bench_killed_mid_run_leaves_valid_json(tmp_path: Path, sig: int, cut_status: str) -> None:
    """Stopped while its second row (an ONNX export) runs: the first row is complete, the cut one says
    so. SIGKILL leaves the "running" row written before it started; SIGTERM (what ``timeout`` sends)
    rewrites it as "timed out" and exits 124."""
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        bench_args(out, "eager,onnxruntime"),
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline, seen = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            d = read_json(out)
            rows = (d or {}).get("results", {})
            if rows.get("eager", {}).get("status") == "ok" and rows.get("onnxruntime", {}).get("status") == "running":
                seen = d
                break
            time.sleep(0.02)
        assert seen is not None, f"never saw eager done and onnxruntime running (rc {proc.poll()})"
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    d = json.loads(out.read_text())  # valid JSON
    rows = d["results"]
    assert list(rows) == ["eager", "onnxruntime"]
    assert rows["eager"]["status"] == "ok" and rows["eager"]["step_ms"] > 0 and rows["eager"]["e2e"]["img_s"] > 0
    assert rows["onnxruntime"]["status"] == cut_status, rows["onnxruntime"]
    assert rows["onnxruntime"]["started"] > 0
    if sig == signal.SIGTERM:
        assert rc == 124, proc.stderr.read().decode()[-2000:] if proc.stderr else rc
        assert rows["onnxruntime"]["after_s"] >= 0
    else:
        assert rc == -signal.SIGKILL


# ---- export builds on the GPU by default when there is one ---------------------------------------


@pytest.mark.parametrize(
    ("backend", "cuda", "ort_providers", "want"),
    [
        ("compiled", True, [CPU], "cuda"),
        ("compiled", False, [CPU], "cpu"),
        ("onnxruntime", True, [CUDA, CPU], "cuda"),
        ("onnxruntime", True, [CPU], "cpu"),  # CPU-only onnxruntime: --verify could not run a CUDA engine
        ("onnxruntime", False, [CUDA, CPU], "cpu"),
        ("tensorrt", False, [CPU], "cuda"),  # TensorRT runs on the GPU only (and refuses without one)
    ],
)
def test_export_device_default(monkeypatch, providers, tmp_path: Path, backend, cuda, ort_providers, want) -> None:
    from igds_fast.backends.build import export_spec

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    providers(ort_providers)
    assert export_spec(None, {"backend": backend}, tmp_path / "e").device == want
    assert export_spec(None, {"backend": backend, "device": "cpu"}, tmp_path / "e").device == "cpu"  # a flag wins
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'backend = "{backend}"\ndevice = "cpu"\n')
    assert export_spec(recipe, {}, tmp_path / "e").device == "cpu"  # and so does the recipe
