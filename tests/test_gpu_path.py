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
    as ORT's compute stream (an IO-binding race)."""
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


# ---- benchmarks/gpu_check.sh: the dry run takes the GPU run's CLI route -------------------------


def gpu_check(out: Path, *args: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    script = ROOT / "benchmarks" / "gpu_check.sh"
    return subprocess.run(
        ["bash", str(script), *args, str(out)], env=full_env, capture_output=True, text=True, timeout=timeout
    )


def test_gpu_check_dry_run_goes_through_the_cli(tmp_path: Path) -> None:
    """Stage 0 (distill + bench) and Stage 1 (latent DiT-S/2 with our VAE decoder, eager-ref and
    eager) on the CPU at tiny sizes, through ``python -m igds_fast.cli`` as on the GPU; the compile
    rows and Stage 2 are left out here (the slow test below runs them)."""
    out = tmp_path / "gc"
    res = gpu_check(out, "--dry-run", S0_BACKENDS="eager,tensorrt@fp16", S1A_BACKENDS="eager-ref,eager",
                    S1B_BACKENDS="", S2_BACKENDS="")  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "route: " in res.stdout and "-m igds_fast.cli" in res.stdout
    s0 = json.loads((out / "stage0.json").read_text())
    assert s0["command"].startswith("igds-fast bench --model tiny")  # written by the CLI command itself
    assert s0["config"]["dtype"] == "bf16" and s0["results"]["eager"]["status"] == "ok"
    assert s0["results"]["tensorrt@fp16"]["status"] == "skipped"  # no TensorRT here: a reason, not a failure
    events = [json.loads(x) for x in (out / "stage0" / "distill.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "finished" and events[-1]["complete"]
    s1 = json.loads((out / "stage1-b2.json").read_text())
    assert s1["command"].startswith("igds-fast bench --model dit-s2")
    assert s1["flops"]["decode_per_image"] > 0  # latent model: our AutoencoderKL decodes
    rows = s1["results"]
    assert rows["eager-ref"]["e2e"]["images"] == 1 and rows["eager"]["e2e"]["images"] == 2
    assert all(r["status"] == "ok" and r["e2e"]["img_s"] > 0 and r["e2e"]["png_s"] > 0 for r in rows.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and not summary["failed"]
    assert {r["row"] for r in summary["rows"]} >= {"eager", "eager-ref", "tensorrt@fp16"}
    assert [g["goal"].split()[0] for g in summary["goals"]] == ["best", "best", "IGDS"]
    assert "goals (the GPU targets)" in res.stdout and "DRY RUN" in res.stdout


def test_gpu_check_without_a_gpu_fails_fast_with_the_reason(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the real check would run")
    t0 = time.time()
    res = gpu_check(tmp_path / "gc")
    assert res.returncode == 1
    assert "no CUDA device visible" in res.stderr and time.time() - t0 < 60
    assert "no CUDA device visible" in (tmp_path / "gc" / "FAILED.txt").read_text()
    assert json.loads((tmp_path / "gc" / "summary.json").read_text())["failed"]


@pytest.mark.slow
def test_gpu_check_full_dry_run(tmp_path: Path) -> None:
    """Every row of every stage, compile rows and the AOTInductor Stage 2 included (minutes on 2 cores)."""
    out = tmp_path / "gc"
    res = gpu_check(out, "--dry-run", S0_LIMIT="900", S1A_LIMIT="900", S1B_LIMIT="900", S2_LIMIT="900", timeout=3600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    s0 = json.loads((out / "stage0.json").read_text())["results"]
    assert s0["compiled"]["status"] == "ok" and s0["onnxruntime@fp16"]["status"] == "ok"
    s1 = json.loads((out / "stage1-b2.json").read_text())["results"]
    assert s1["torch-compile-cg"]["status"] == "skipped"  # no CUDA
    # Inductor on 2 busy cores may not compile DiT-S/2's step within the limit: then the row says so
    assert s1["torch-compile"]["status"] in ("ok", "timed out"), s1["torch-compile"]
    s2 = json.loads((out / "stage2-aoti.json").read_text())["results"]
    assert s2["compiled"]["status"] == "ok" and s2["compiled"]["e2e"]["img_s"] > 0


# ---- the data pack, and the trainers reading it --------------------------------------------------

WNIDS = ["n01440764", "n02102040"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of 5 random 12 px images (the trainers resize to 8 px)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("folder") / "train"
    rng = np.random.default_rng(0)
    for wnid in WNIDS:
        (root / wnid).mkdir(parents=True)
        for k in range(5):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / wnid / f"{k}.png")
    return root


def test_pack_holds_the_image_folder_in_the_callers_class_order(image_folder: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from igds_fast.cli import app
    from igds_fast.imagefolder import load_imagefolder
    from igds_fast.training.data_pack import load_training_images, read_pack

    pack = tmp_path / "p.npz"
    res = CliRunner().invoke(
        app, ["pack-data", "--data", str(image_folder), "--classes", ",".join(WNIDS), "--resolution", "8",
              "--out", str(pack)]
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert pack.stat().st_size < 10 * 3 * 8 * 8 + 4096  # uint8 images + labels + class list, uncompressed
    ref_x, ref_y = load_imagefolder(image_folder, WNIDS, 8)
    x, y = load_training_images(pack, WNIDS, 8)
    assert x.dtype == torch.uint8 and torch.equal(x, ref_x) and torch.equal(y, ref_y)
    rx, ry = read_pack(pack, WNIDS[::-1], 8)  # labels are positions in the list asked for
    assert torch.equal(rx[ry == 0], ref_x[ref_y == 1]) and torch.equal(rx[ry == 1], ref_x[ref_y == 0])
    one_x, one_y = read_pack(pack, WNIDS[1:], 8)
    assert len(one_x) == 5 and set(one_y.tolist()) == {0}
    with pytest.raises(UserError, match="8 px images, this model trains at 16 px"):
        read_pack(pack, WNIDS, 16)
    with pytest.raises(UserError, match="no images of class n03000684"):
        read_pack(pack, ["n03000684"], 8)


def tiny_dit_config(data: Path, out: Path, **kw: Any):
    from igds_fast.training.train_dit import TrainDiTConfig

    base = dict(data=str(data), wnids=WNIDS, out=str(out), resolution=8, preset="tiny", steps=3, batch_size=4,
                warmup=1, ckpt_every=100, log_every=1)  # fmt: skip
    return TrainDiTConfig(**{**base, **kw})


def test_train_dit_from_a_pack_is_the_image_folder_run(image_folder: Path, tmp_path: Path) -> None:
    """Same images, same random stream: the pack is a drop-in data source (weights bit-identical),
    and bf16 autocast trains with finite losses on the CPU too."""
    from safetensors.torch import load_file

    from igds_fast.training.data_pack import write_pack
    from igds_fast.training.train_dit import train_dit

    pack = write_pack(image_folder, WNIDS, 8, tmp_path / "p.npz")
    a = load_file(train_dit(tiny_dit_config(image_folder, tmp_path / "a"), progress=False))
    b = load_file(train_dit(tiny_dit_config(pack, tmp_path / "b"), progress=False))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    train_dit(tiny_dit_config(pack, tmp_path / "c", precision="bf16", steps=2), progress=False)
    logs = [json.loads(x) for x in (tmp_path / "c" / "log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in logs)
    with pytest.raises(UserError, match="unknown --precision"):
        train_dit(tiny_dit_config(pack, tmp_path / "d", precision="fp8"), progress=False)


@pytest.mark.parametrize("arch", ["vit", "conv"])
def test_train_critics_from_a_pack(image_folder: Path, tmp_path: Path, arch: str) -> None:
    from igds_fast.models.critics import load_critic
    from igds_fast.models.dit import DiT, DiTConfig
    from igds_fast.models.vae import PixelSpace
    from igds_fast.training.data_pack import write_pack
    from igds_fast.training.train_critic import TrainCriticConfig, train_critic

    pack = write_pack(image_folder, WNIDS, 8, tmp_path / "p.npz")
    den = DiT(DiTConfig(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2,
                        num_classes=2, wnids=WNIDS))  # fmt: skip
    cfg = TrainCriticConfig(data=str(pack), wnids=WNIDS, out=str(tmp_path / "c"), steps=2, batch_size=4, width=16,
                            depth=1, heads=2, feat_dim=4, eval_images=4, precision="bf16", arch=arch)  # fmt: skip
    critic = load_critic(train_critic(cfg, den, PixelSpace(), progress=False))
    assert critic.config.wnids == WNIDS and critic.config.arch == arch


def test_encoded_views_are_the_image_its_mirror_and_seeded_crops() -> None:
    """Views 0 and 1 are what train-dit always encoded (so its cache keys hold); the crops are encoded
    crops of the image (not resampled latents), fixed by the seed."""
    from igds_fast.imagefolder import to_model_range
    from igds_fast.models.vae import PixelSpace
    from igds_fast.training.latents import encoded_views

    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    plain = encoded_views(images, PixelSpace(), None)
    assert plain.shape == (3, 2, 3, 16, 16)
    assert torch.equal(plain[:, 0], to_model_range(images)) and torch.equal(
        plain[:, 1], to_model_range(images.flip(-1))
    )
    a, b, c = (encoded_views(images, PixelSpace(), None, crops=2, seed=s) for s in (0, 0, 1))
    assert a.shape == (3, 4, 3, 16, 16) and torch.equal(a[:, :2], plain)
    assert torch.equal(a, b) and not torch.equal(a[:, 2:], c[:, 2:])
    assert all(not torch.equal(a[:, k], a[:, j]) for k in (2, 3) for j in (0, 1))


def test_critic_ema_saves_the_averaged_weights(image_folder: Path, tmp_path: Path) -> None:
    """With --ema near 1 the saved critic stays at its initial weights while the trained one moves."""
    from igds_fast.models.critics import NoiseCritic, load_critic
    from igds_fast.models.dit import DiT, DiTConfig
    from igds_fast.models.vae import PixelSpace
    from igds_fast.training.train_critic import TrainCriticConfig, train_critic

    den = DiT(DiTConfig(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2,
                        num_classes=2, wnids=WNIDS))  # fmt: skip
    critics = {}
    for ema in (0.0, 1 - 1e-9):
        cfg = TrainCriticConfig(data=str(image_folder), wnids=WNIDS, out=str(tmp_path / f"c{ema}"), steps=3,
                                batch_size=4, lr=1e-2, width=16, depth=1, heads=2, feat_dim=4, eval_images=4,
                                crops=1, ema=ema)  # fmt: skip
        critics[ema] = load_critic(train_critic(cfg, den, PixelSpace(), progress=False))
    torch.manual_seed(0)  # the trainer's seed: the initial weights
    init = dict(NoiseCritic(critics[0.0].config).named_parameters())
    averaged, trained = (dict(critics[e].named_parameters()) for e in (1 - 1e-9, 0.0))
    assert all(torch.allclose(averaged[n], w, atol=1e-6) for n, w in init.items())
    assert any(not torch.allclose(trained[n], w) for n, w in init.items())


@pytest.mark.slow
def test_train_dit_compiled_on_the_cpu(image_folder: Path, tmp_path: Path) -> None:
    """--compile (the CUDA default) through torch.compile on the CPU: trains, and saves plain keys."""
    from safetensors.torch import load_file

    from igds_fast.training.train_dit import train_dit

    weights = load_file(train_dit(tiny_dit_config(image_folder, tmp_path / "a", compile=True, steps=2), progress=False))
    assert not any("_orig_mod" in k for k in weights)


@pytest.mark.slow
def test_gpu_train_dry_run_writes_weights_in_parts(tmp_path: Path) -> None:
    """benchmarks/gpu_train.sh --dry-run: the recipe's commands on the CPU for a few steps, from a
    data pack; the weights come back in parts of at most 16 MB that reassemble to the trained files."""
    import hashlib

    import numpy as np
    from PIL import Image

    from igds_fast.subsets import subset
    from igds_fast.training.data_pack import write_pack

    wnids = [c.wnid for c in subset("imagenette")]
    root = tmp_path / "train"
    rng = np.random.default_rng(1)
    for wnid in wnids:
        (root / wnid).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / wnid / f"{k}.png")
    pack = write_pack(root, wnids, 32, tmp_path / "pack.npz")
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PACK": str(pack), "WORK": str(work)}
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_train.sh"), "--dry-run", str(out)], env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    parts = sorted((out / "weights").glob("*.part-*"))
    assert parts and all(p.stat().st_size <= 16 * 2**20 for p in parts)
    for name in ("denoiser.safetensors", "critic.safetensors"):
        joined = b"".join(p.read_bytes() for p in parts if p.name.startswith(name + ".part-"))
        trained = next(work.rglob(name)).read_bytes()
        assert hashlib.sha256(joined).hexdigest() == hashlib.sha256(trained).hexdigest(), name
    assert "denoiser.safetensors" in (out / "weights" / "SHA256SUMS").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dit_last"]["step"] == 3 and summary["dit_last"]["img_s"] > 0
