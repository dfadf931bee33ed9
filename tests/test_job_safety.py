"""Jobs a data platform can trust: no data loss, verified outputs, repair to the same bytes,
recoverable state, locks, machine-readable events and exit codes, up-front limits, run history,
the default backend. Every test here failed before the change it covers."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from igds_fast import machine
from igds_fast.backends.eager import EagerEngine
from igds_fast.config import StepConfig
from igds_fast.errors import UserError
from igds_fast.jobs import engine_cache, limits
from igds_fast.jobs import job as job_mod
from igds_fast.jobs.engine_cache import default_backend
from igds_fast.jobs.image_manifest import read_image_manifest as read_manifest
from igds_fast.jobs.lock import WriterLocks
from igds_fast.jobs.run import run_job as run_request
from igds_fast.jobs.verify import verify_set
from igds_fast.models.embedded import resolve_models
from igds_fast.models.flops import decoder_grad_bytes
from igds_fast.models.vae import decode_unclipped
from igds_fast.sampling.pipeline import build_pipeline

from .conftest import run_cli_in_process
from .test_distill import TWO, WNIDS, models, request, snapshot  # noqa: F401 (models is a fixture)

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]



def main(*args: str) -> tuple[int, str, str]:
    """``igds-fast ARGS`` in this interpreter through ``cli.main`` (exit code, stdout, stderr)."""
    return run_cli_in_process(*args)


def events(stdout: str) -> list[dict]:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    return [json.loads(ln) for ln in lines]  # every stdout line is one JSON event


def model_args(models) -> list[str]:  # noqa: F811
    return ["--denoiser", str(models["dit"]), "--vae", "none", "--critics", str(models["critic"])]


def job_args(models, out: Path, *extra: str) -> list[str]:  # noqa: F811
    step = ["--guidance-scale", "2", "--beta", "1", "--steps", "4", "--cfg-scale", "2", "--backend", "eager"]
    return ["distill", "--out", str(out), "--classes", TWO, "--ipc", "5", "--batch-size", "2", "--seed", "3"] + [
        *model_args(models),
        *step,
        *extra,
    ]


@pytest.fixture(scope="module")
def finished(models, tmp_path_factory) -> tuple[Path, dict[str, str]]:  # noqa: F811
    out = tmp_path_factory.mktemp("finished") / "set"
    assert run_request(request(models, out))["complete"]
    return out, snapshot(out)


def fresh_copy(src: Path, dst: Path) -> Path:
    """A copy of a finished set (hidden records included), times preserved."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def damage(out: Path) -> dict[str, str]:
    """Delete one image, truncate one, flip a byte in one: the three kinds of damage a rerun must repair."""
    a, b, c = out / WNIDS[0] / "00001.png", out / WNIDS[0] / "00004.png", out / WNIDS[1] / "00002.png"
    a.unlink()
    b.write_bytes(b.read_bytes()[:40])
    data = bytearray(c.read_bytes())
    data[len(data) // 2] ^= 0x01
    c.write_bytes(bytes(data))
    return {
        "deleted": f"{WNIDS[0]}/00001.png",
        "truncated": f"{WNIDS[0]}/00004.png",
        "flipped": f"{WNIDS[1]}/00002.png",
    }


# ---------------------------------------------------------------- (3) damaged outputs: rerun and verify repair


def test_rerun_repairs_deleted_truncated_and_flipped_images_to_the_same_bytes(models, finished, tmp_path):  # noqa: F811
    src, snap = finished
    out = fresh_copy(src, tmp_path / "set")
    bad = damage(out)
    others = {p: p.stat().st_mtime_ns for p in out.glob("n*/*.png") if str(p.relative_to(out)) not in bad.values()}
    manifest_mtime = (out / "metadata.parquet").stat().st_mtime_ns
    summary = run_request(request(models, out))
    assert summary["complete"] and summary["images_made"] == 0
    assert sorted(summary["repaired"]) == sorted(bad.values())
    assert snapshot(out) == snap  # the original bytes, manifest rows unchanged
    assert {p: p.stat().st_mtime_ns for p in others} == others  # nothing else rewritten
    assert (out / "metadata.parquet").stat().st_mtime_ns == manifest_mtime  # its content did not change
    run = json.loads((out / "run.json").read_text())
    assert [r["repaired"] for r in run["runs"]][-1] == sorted(bad.values())


def test_verify_reports_damage_and_repairs_it(models, finished, tmp_path):  # noqa: F811
    src, snap = finished
    out = fresh_copy(src, tmp_path / "set")
    code, stdout, _ = main("verify", str(out))
    assert code == 0 and events(stdout)[-1]["ok"] is True
    bad = damage(out)
    code, stdout, stderr = main("verify", str(out))
    assert code == 3, stderr
    report = events(stdout)[-1]
    assert report["event"] == "verified" and not report["ok"]
    assert report["missing"] == [bad["deleted"]]
    assert sorted(report["damaged"]) == sorted([bad["truncated"], bad["flipped"]])
    assert "--repair" in stderr
    code, stdout, stderr = main("verify", str(out), "--repair", *model_args(models))
    assert code == 0, stderr
    report = events(stdout)[-1]
    assert report["ok"] and sorted(report["repaired"]) == sorted(bad.values())
    assert snapshot(out) == snap
    # repair needs the models the set was made with: the embedded default is refused by hash
    bad = damage(out)
    code, _, stderr = main("verify", str(out), "--repair")
    assert code == 2 and "made with another denoiser" in stderr and len(stderr.strip().splitlines()) == 1


def test_verify_a_manifest_only_set_reports_without_records(finished, tmp_path):
    src, _ = finished
    out = fresh_copy(src, tmp_path / "set")
    for p in out.glob(".unit-*"):
        p.unlink()
    (out / ".igds-job.json").unlink()
    rep = verify_set(out)
    assert rep.kind == "manifest" and rep.ok
    (out / WNIDS[0] / "00003.png").write_bytes(b"not a png")
    rep = verify_set(out)
    assert rep.damaged == [f"{WNIDS[0]}/00003.png"] and not rep.ok
    code, _, stderr = main("verify", str(out), "--repair")
    assert code == 2 and "cannot be regenerated" in stderr


# ------------------------------------------------ (4) damaged job state is redone, foreign files ignored


def test_damaged_job_state_is_redone_and_foreign_files_ignored(models, finished, tmp_path):  # noqa: F811
    src, snap = finished
    out = fresh_copy(src, tmp_path / "set")
    job = out / ".igds-job.json"
    job.write_bytes(job.read_bytes()[:20])  # truncated job file
    rec = out / f".unit-{WNIDS[0]}-0001.json"
    rec.write_bytes(rec.read_bytes()[:50])  # truncated unit record
    feats = out / f".unit-{WNIDS[1]}-0000.feats.npy"
    feats.write_bytes(feats.read_bytes()[:60])  # truncated features of chunk 0 ...
    (out / f".unit-{WNIDS[1]}-0002.json").unlink()  # ... while a later unit is missing
    (out / WNIDS[1] / "00004.png").unlink()
    (out / WNIDS[0] / "README.txt").write_text("notes of a user\n")  # a foreign file in a class folder
    summary = run_request(request(models, out))
    assert summary["complete"]
    assert summary["images_made"] == 1  # the missing unit; the others were redone to the same bytes
    now = snapshot(out)
    assert now.pop(f"{WNIDS[0]}/README.txt") and now == snap
    assert (out / WNIDS[0] / "README.txt").read_text() == "notes of a user\n"
    assert len(read_manifest(out / "metadata.parquet")) == 10
    assert verify_set(out).ok and verify_set(out).foreign == [f"{WNIDS[0]}/README.txt"]


def test_unreadable_state_that_cannot_be_repaired_is_one_line(tmp_path):
    out = tmp_path / "set"
    out.mkdir()
    (out / ".igds-job.json").write_text("{trunc")
    code, _, stderr = main("verify", str(out))
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "job file" in stderr


# ---------------------------------------------------------------- (5) locks


def test_a_second_writer_is_refused_naming_the_holder(models, tmp_path):  # noqa: F811
    out = tmp_path / "set"
    out.mkdir()
    with WriterLocks(out).acquire(), pytest.raises(UserError, match=rf"being written by pid {os.getpid()} on host"):
        run_request(request(models, out))
    assert not list(out.glob(".unit-*")) and not list(out.glob("n*"))


def test_lock_is_released_when_its_holder_dies_and_wait_queues(models, tmp_path):  # noqa: F811
    out = tmp_path / "set"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from igds_fast.jobs.lock import WriterLocks; "
            "WriterLocks(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(120)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, stdout, stderr = main(*job_args(models, out))
        assert code == 2 and f"pid {holder.pid}" in stderr and len(stderr.strip().splitlines()) == 1
        assert events(stdout)[-1]["event"] == "error"
        threading.Timer(1.0, lambda: holder.send_signal(signal.SIGKILL)).start()
        t0 = time.perf_counter()
        code, stdout, stderr = main(*job_args(models, out, "--wait"))  # queues until the holder is gone
        assert code == 0, stderr
        assert time.perf_counter() - t0 >= 0.9
        assert [e["event"] for e in events(stdout)].count("waiting") == 1
    finally:
        holder.kill()
        holder.wait()


def test_shards_share_a_folder_but_not_a_shard(models, tmp_path):  # noqa: F811
    out = tmp_path / "set"
    out.mkdir()
    with WriterLocks(out, (0, 2)).acquire():
        assert not run_request(request(models, out, shard="1/2"))["complete"]  # the other shard may run
        with pytest.raises(UserError, match=r"shard 0/2"):
            run_request(request(models, out, shard="0/2"))
        with pytest.raises(UserError, match="being written"):  # an unsharded writer may not
            run_request(request(models, out))
    assert run_request(request(models, out, shard="0/2"))["complete"]


# ---------------------------------------------------------------- (6) a failed run claims nothing


def test_a_failed_run_does_not_claim_the_folder(models, tmp_path):  # noqa: F811
    from igds_fast.models.dit import DiT, DiTConfig
    from igds_fast.models.loading import save_denoiser

    bad = DiT(DiTConfig(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2, wnids=WNIDS))
    bad.final_layer.linear.bias.data.fill_(float("nan"))
    save_denoiser(bad, tmp_path / "nan.safetensors")
    out = tmp_path / "set"
    with pytest.raises(UserError, match="non-finite"):
        run_request(request(models, out, denoiser=tmp_path / "nan.safetensors"))
    assert (out / ".igds-job.json").exists()  # it had claimed the folder, but committed no unit
    assert run_request(request(models, out))["complete"]  # so another configuration may take it
    # once a unit is committed, another configuration is refused (and the set kept)
    with pytest.raises(UserError, match="another configuration.*seed"):
        run_request(request(models, out, seed=4))
    assert len(read_manifest(out / "metadata.parquet")) == 10


def test_overwrite_keeps_files_distill_did_not_write(models, tmp_path):  # noqa: F811
    out = tmp_path / "set"
    run_request(request(models, out, ipc=2))
    (out / WNIDS[0] / "notes.txt").write_text("keep me")
    (out / "README.md").write_text("keep me too")
    assert run_request(request(models, out, ipc=3, overwrite=True))["complete"]
    assert (out / WNIDS[0] / "notes.txt").read_text() == "keep me" and (out / "README.md").exists()
    assert len(read_manifest(out / "metadata.parquet")) == 6


# ---------------------------------------------------------------- (7) events, progress, exit codes


def test_events_are_json_lines_on_stdout_and_exit_codes(models, tmp_path):  # noqa: F811
    out = tmp_path / "set"
    code, stdout, stderr = main(*job_args(models, out, "--shard", "0/2"))
    assert code == 3, stderr  # this shard is done, the set is not
    evs = events(stdout)
    kinds = [e["event"] for e in evs]
    assert kinds[0] == "start" and kinds[-1] == "finished" and kinds.count("unit_done") == 3
    assert kinds.count("class_done") == 1 and evs[-1]["complete"] is False
    assert "\r" not in stdout and "\r" not in stderr  # no progress bar off a terminal
    log = tmp_path / "events.jsonl"
    code, stdout, stderr = main(*job_args(models, out, "--shard", "1/2", "--log-json", str(log), "--progress"))
    assert code == 0, stderr
    assert [e["event"] for e in events(stdout)] == ["finished"]  # the summary still reaches stdout
    assert [e["event"] for e in events(log.read_text())][-1] == "finished"
    assert "distill" in stderr  # the progress bar, asked for, on stderr
    code, stdout, stderr = main(*job_args(models, tmp_path / "x", "--ipc", "0"))
    assert code == 2 and stderr.strip().splitlines() == ["error: --ipc must be >= 1, got 0"]
    assert events(stdout)[-1] == events(stdout)[-1] | {"event": "error", "exit_code": 2}


# ---------------------------------------------------------------- (8) up-front limits


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"ipc": 10_000_000}, ("--ipc 10000000", "GiB", "memory")),
        ({"resolution": 100_000}, ("100000 px", "GiB", "--resolution")),
    ],
)
def test_jobs_this_machine_cannot_hold_are_refused_with_numbers(models, tmp_path, monkeypatch, kw, words):  # noqa: F811
    monkeypatch.setattr(job_mod, "build_pipeline", lambda *a, **k: pytest.fail("weights loaded before the limits"))
    monkeypatch.setattr(limits, "available_memory", lambda: 16 * 2**30)  # the same verdict on any CI machine
    out = tmp_path / "set"
    with pytest.raises(UserError) as e:
        run_request(request(models, out, **kw, steps="50"))
    for w in words:
        assert w in str(e.value), str(e.value)
    assert not out.exists()


def test_a_huge_ipc_is_refused_at_once_with_the_embedded_model(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "available_memory", lambda: 128 * 2**30)
    t0 = time.perf_counter()
    code, _, stderr = main("distill", "--ipc", "10000000", "--out", tmp_path / "x", "--backend", "eager")
    assert code == 2 and "GiB" in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert time.perf_counter() - t0 < 20 and not (tmp_path / "x").exists()


def test_a_batch_the_clip_guard_cannot_hold_is_refused_before_sampling(tmp_path, monkeypatch):
    """The clip guard (an option) differentiates the decoder for the whole batch at the first guided step:
    a batch whose activations do not fit is refused once the engine is built, before any sampling."""
    seen = []

    def free(device):
        seen.append(str(device))
        return 64 * 2**20

    monkeypatch.setattr(limits, "device_free_memory", free)
    monkeypatch.setattr(limits, "available_memory", lambda: 128 * 2**30)  # the host checks pass
    out = tmp_path / "x"
    args = ["--ipc", "20", "--batch-size", "20", "--classes", "n01440764", "--clip-guard", "0.5", "--out", out]
    code, _, stderr = main("distill", *args)
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    for words in ("clip guard", "a batch of 20", "per image", "64 MiB", "lower --batch-size", "--clip-guard 0", "fits"):
        assert words in stderr, stderr
    assert seen == ["cpu"] and not out.exists()


def test_sample_checks_the_clip_guards_memory_too(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "device_free_memory", lambda device: 32 * 2**20)
    out = tmp_path / "grid.png"
    args = ["--classes", "0", "--n-per-class", "12", "--batch-size", "12", "--guidance", "igds", "--clip-guard", "0.5"]
    args += ["--out", out]
    code, _, stderr = main("sample", *args)
    assert code == 2 and "a batch of 12" in stderr and "--clip-guard 0" in stderr, stderr
    assert not out.exists()


def test_clip_guard_memory_counts_what_autograd_keeps():
    """The meta-device count per image equals what autograd saves decoding real latents (batch 2 minus
    batch 1); the check needs batch x that with the guard, nothing without it, and names what fits."""
    paths = resolve_models(None, None, None, "igds")
    pipes = {c: build_pipeline(paths.denoiser, paths.vae, paths.critics, StepConfig(clip_guard=c)) for c in (0.5, 0)}
    engines = {c: EagerEngine(p.step, p.vae) for c, p in pipes.items()}
    vae = engines[0.5].codec

    def saved(batch: int) -> int:
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        z = torch.randn(batch, *engines[0.5].shape, requires_grad=True)
        with sdpa_kernel(SDPBackend.MATH), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            decode_unclipped(vae, z)
        return sum(storages.values())

    per_image = decoder_grad_bytes(vae, engines[0.5].shape)
    assert per_image == saved(2) - saved(1) and per_image > 4 * 3 * 64 * 64  # more than the fp32 image
    assert limits.check_clip_guard_memory(engines[0.5], 7, have=1 << 40) == 7 * per_image
    assert limits.check_clip_guard_memory(engines[0.0], 7, have=0) == 0  # no guard: nothing to refuse
    have = int(1.5 * per_image / limits.MEMORY_HEADROOM)
    with pytest.raises(UserError, match=r"a batch of 7 on cpu .*about 1 fits"):
        limits.check_clip_guard_memory(engines[0.5], 7, have=have)


def test_disk_estimate_refuses_a_job_that_cannot_fit(models, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(limits, "free_disk", lambda out: 10_000)
    with pytest.raises(UserError, match=r"10 images of 8 px.*disk.*free"):
        run_request(request(models, tmp_path / "set"))
    assert not (tmp_path / "set").exists()


# ------------------------------------------------ (10) a no-op rerun: no weights, nothing rewritten, history


def test_noop_rerun_loads_no_weights_rewrites_nothing_and_keeps_history(models, finished, tmp_path, monkeypatch):  # noqa: F811
    src, snap = finished
    out = fresh_copy(src, tmp_path / "set")
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir() if p.is_file()}
    first = json.loads((out / "run.json").read_text())
    with monkeypatch.context() as m:
        m.setattr(job_mod, "build_pipeline", lambda *a, **k: pytest.fail("weights loaded for a no-op rerun"))
        summary = run_request(request(models, out))
    assert summary["nothing_to_do"] and summary["complete"] and summary["images_made"] == 0
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if not k.name.startswith(".igds-lock")} == {
        k: v for k, v in before.items() if not k.name.startswith(".igds-lock")
    }
    (out / WNIDS[1] / "00000.png").unlink()
    run_request(request(models, out))
    run = json.loads((out / "run.json").read_text())
    assert len(run["runs"]) == len(first["runs"]) + 1
    assert run["started"] == first["started"] and run["runs"][0] == first["runs"][0]  # provenance kept
    assert run["runs"][-1]["repaired"] == [f"{WNIDS[1]}/00000.png"] and snapshot(out) == snap


# ---------------------------------------------------------------- (1) export --overwrite never deletes a foreign folder


def test_export_overwrite_refuses_a_folder_that_is_not_an_engine(tmp_path):
    """A user's file in the folder (``important.txt``) must survive."""
    (tmp_path / "u" / "sub").mkdir(parents=True)
    (tmp_path / "u" / "sub" / "important.txt").write_text("x\n")
    code, _, stderr = main(
        "export", "--out", tmp_path / "u", "--overwrite", "--batch-size", "2", "--steps", "10", "--ipc", "3",
        "--memory-size", "4",
    )  # fmt: skip
    assert code == 2 and "not one" in stderr and len(stderr.strip().splitlines()) == 1
    assert (tmp_path / "u" / "sub" / "important.txt").read_text() == "x\n"
    (tmp_path / "f").write_text("a file")
    code, _, stderr = main("export", "--out", tmp_path / "f", "--batch-size", "2", "--steps", "10")
    assert code == 2 and "is a file" in stderr and "--overwrite" not in stderr


# ---------------------------------------------------------------- (a) the default backend


def test_default_backend_rule():
    amx = default_backend("cpu", {"avx2", "avx512f", "amx_bf16", "amx_tile"}, True)
    assert (amx.backend, amx.precision) == ("eager", "bf16") and "amx_bf16" in amx.reason
    zen = default_backend("cpu", {"avx2", "avx512f"}, True)
    assert (zen.backend, zen.precision) == ("onnxruntime", "fp32")
    assert (default_backend("cpu", {"avx2"}, False).backend, default_backend("cpu", set(), False).precision) == (
        "eager",
        "fp32",
    )
    assert default_backend("cuda:0", {"amx_bf16"}, True).backend == "eager"


def test_default_job_exports_once_into_the_cache_and_reuses_it(models, tmp_path, monkeypatch):  # noqa: F811
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2"})  # a CPU without bf16 units
    cache = tmp_path / "cache"
    a = run_request(request(models, tmp_path / "a", backend="auto", engine_cache=cache))
    assert a["complete"] and a["backend"] == "onnxruntime"
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    rows = read_manifest(tmp_path / "a" / "metadata.parquet")
    assert {r["backend"] for r in rows} == {"onnxruntime"} and rows[0]["engine_id"]
    with monkeypatch.context() as m:  # the second job loads the cached engine: no export
        m.setattr(engine_cache, "export_engine", lambda spec: pytest.fail("exported again"))
        b = run_request(request(models, tmp_path / "b", backend="auto", engine_cache=cache))
    assert b["complete"] and snapshot(tmp_path / "b") == snapshot(tmp_path / "a")
    # a damaged entry is rebuilt (the export replaced by a copy of the good entry: one real export per test)
    good = tmp_path / "good-entry"
    subprocess.run(["cp", "-a", str(entry), str(good)], check=True)
    manifest = entry / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"batch_size": 2', '"batch_size": 3'))
    rebuilt = []

    def fake_export(spec):
        rebuilt.append(spec.out)
        shutil.rmtree(spec.out, ignore_errors=True)
        shutil.copytree(good, spec.out)

    with monkeypatch.context() as m:
        m.setattr(engine_cache, "export_engine", fake_export)
        assert run_request(request(models, tmp_path / "c", backend="auto", engine_cache=cache))["complete"]
    assert rebuilt == [entry] and snapshot(tmp_path / "c") == snapshot(tmp_path / "a")
    # a cleared cache does not make a finished set "another configuration": nothing to do, no export
    subprocess.run(["rm", "-rf", str(entry)], check=True)
    with monkeypatch.context() as m:
        m.setattr(engine_cache, "export_engine", lambda spec: pytest.fail("exported for a finished set"))
        assert run_request(request(models, tmp_path / "a", backend="auto", engine_cache=cache))["nothing_to_do"]


# ---------------------------------------------------------------- (9) train-critics validates before creating --out


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--batch-size", "1"], ("--batch-size",)),
        (["--steps", "0"], ("--steps",)),
        (["--heads", "5"], ("--heads 5", "--width")),
        (["--eval-images", "0"], ("--eval-images",)),
        (["--feat-dim", "0"], ("--feat-dim",)),
        (["--lr", "nan"], ("--lr",)),
        (["--shift", "-1"], ("--shift",)),
        (["--t-power", "0"], ("--t-power",)),
        (["--crops", "-1"], ("--crops",)),
        (["--arch", "mlp"], ("--arch 'mlp'", "vit or conv")),
        (["--arch", "conv", "--depth", "0", "--heads", "0"], ("--depth",)),
        (["--ema", "1"], ("--ema", "[0, 1)")),
        (["--ema", "nan"], ("--ema",)),
        (["--data", "MISSING"], ("does not exist",)),
        (["--data", "FILE"], ("is a file",)),
        (["--classes", "n01443537"], ("n01443537", "not in the model")),
    ],
)
def test_train_critics_refuses_bad_options_before_creating_out(tmp_path, extra, words):
    data = tmp_path / "data"
    (data / WNIDS[0]).mkdir(parents=True)
    (tmp_path / "file").write_text("x")
    extra = [{"MISSING": str(tmp_path / "nope"), "FILE": str(tmp_path / "file")}.get(x, x) for x in extra]
    args = ["train-critics", "--data", str(data), "--out", str(tmp_path / "critics"), "--classes", WNIDS[0]]
    code, _, stderr = main(*args, *extra)
    assert code == 2, stderr
    line = stderr.strip().splitlines()
    assert len(line) == 1 and all(w in line[0] for w in words), line
    assert not (tmp_path / "critics").exists()


def test_numpy_helpers_roundtrip():
    from igds_fast.jobs.state import npy_bytes

    a = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    assert np.array_equal(np.load(io.BytesIO(npy_bytes(a))), a)


def test_train_critics_writes_its_weights_with_the_usual_mode(tmp_path):
    """critic.safetensors was written 0600 (safetensors' own mode), every other output 0644."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for w in WNIDS[:2]:
        (tmp_path / "data" / w).mkdir(parents=True)
        for k in range(6):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "data" / w / f"{k}.png")
    out = tmp_path / "critics"
    code, _, stderr = main(
        "train-critics", "--data", tmp_path / "data", "--out", out, "--classes", TWO, "--steps", "2",
        "--batch-size", "4", "--width", "16", "--depth", "1", "--heads", "2", "--eval-images", "4", "--feat-dim", "8",
    )  # fmt: skip
    assert code == 0, stderr
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    assert modes["critic.safetensors"] == 0o666 & ~mask and modes["critic.json"] == 0o666 & ~mask, modes


def test_auto_continues_a_folder_made_with_another_backend_or_precision(models, finished, tmp_path, monkeypatch):  # noqa: F811
    """A set made by eager fp32 (another machine, or before the default changed) is continued and
    repaired by the default job in fp32, not refused as another configuration."""
    src, snap = finished
    out = fresh_copy(src, tmp_path / "set")
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"amx_bf16"})  # the default here would be bf16
    (out / WNIDS[0] / "00000.png").unlink()
    summary = run_request(request(models, out, backend="auto"))
    assert summary["precision"] == "fp32" and summary["repaired"] == [f"{WNIDS[0]}/00000.png"]
    assert snapshot(out) == snap


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--device", "tpu"], ("unknown device 'tpu'",)),  # was a torch RuntimeError traceback
        (["--log-json", "DIR"], ("--log-json", "is a folder")),  # was IsADirectoryError
        (["--log-json", "MISSING/x.jsonl"], ("--log-json", "does not exist")),  # was FileNotFoundError
        (["--engines", "FILE"], ("--engines", "is a file")),  # was "does not exist"
        (["--backend", "cuda"], ("--backend", "auto, eager")),
        (["--dtype", "fp8"], ("--dtype",)),
        (["--format", "gif"], ("--format",)),
        (["--resolution", "3"], ("--resolution",)),
        (["--threads", "0"], ("--threads must be >= 1",)),
    ],
)
def test_bad_distill_input_is_one_line_and_writes_nothing(tmp_path, extra, words):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    names = {"DIR": tmp_path / "dir", "MISSING/x.jsonl": tmp_path / "nope" / "x.jsonl", "FILE": tmp_path / "file"}
    extra = [str(names.get(x, x)) for x in extra]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, stderr = main("distill", "--out", tmp_path / "o", *extra)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not list((tmp_path / "dir").iterdir())


def test_a_damaged_manifest_or_contact_sheet_is_rebuilt_without_weights(models, finished, tmp_path, monkeypatch):  # noqa: F811
    src, snap = finished
    out = fresh_copy(src, tmp_path / "set")
    m = out / "metadata.parquet"
    data = bytearray(m.read_bytes())
    data[len(data) // 2] ^= 0xFF
    m.write_bytes(bytes(data))
    (out / f".igds-contact-{WNIDS[1]}.png").write_bytes(b"\x89PNG trunc")
    rep = verify_set(out)
    assert rep.manifest in ("damaged", "stale") and rep.sheets == [f".igds-contact-{WNIDS[1]}.png"]
    monkeypatch.setattr(job_mod, "build_pipeline", lambda *a, **k: pytest.fail("weights loaded to rebuild a manifest"))
    summary = run_request(request(models, out))
    assert summary["nothing_to_do"] and summary["complete"]
    assert snapshot(out) == snap and verify_set(out).ok
    run = json.loads((out / "run.json").read_text())
    assert run["runs"][-1]["rebuilt"] == ["metadata.parquet", f".igds-contact-{WNIDS[1]}.png"]


# ------------------------------------- (15) the bad-input probe's findings (benchmarks/probe_bad_inputs.py)


def one_error_line(code: int, stderr: str, *words: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, stderr)
    assert "Traceback" not in stderr and all(w in lines[0] for w in words), (words, lines[0])
    return lines[0]


def image_folder(root: Path, wnids: tuple[str, ...] = ("n01440764", "n02102040"), n: int = 3) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for w in wnids:
        (root / w).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / w / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["distill", "--ipc", "abc"], ("Invalid value for '--ipc'", "igds-fast distill --help")),
        (["distill", "--frobnicate", "1"], ("No such option: --frobnicate",)),
        (["sample"], ("Missing option '--classes'",)),
        (["doctor", "extra"], ("unexpected extra argument",)),
        (["distil"], ("No such command 'distil'",)),
        (["report"], ("Missing argument",)),
    ],
)
def test_usage_errors_are_one_error_line(args, words):
    """Click's usage errors were a box of 5-6 lines (usage, hint, a framed message) with no 'error:'."""
    code, _, stderr = main(*args)
    one_error_line(code, stderr, *words)


def test_a_bare_command_still_shows_its_help():
    code, stdout, stderr = main()
    assert code == 2 and "Commands" in stdout + stderr


@pytest.mark.parametrize("window", [["--window-hi", "5000"], ["--window-lo", "-50", "--window-hi", "-10"]])
def test_a_guidance_window_outside_the_timesteps_is_refused(tmp_path, window):
    code, _, stderr = main("distill", "--out", tmp_path / "o", "--backend", "eager", *window)
    one_error_line(code, stderr, "0..999")
    assert not (tmp_path / "o").exists()


def test_a_classes_file_of_garbage_bytes_is_one_error_line(tmp_path):
    (tmp_path / "c.txt").write_bytes(bytes(range(128, 256)) * 4)
    code, _, stderr = main("distill", "--out", tmp_path / "o", "--classes-file", tmp_path / "c.txt")
    one_error_line(code, stderr, "classes file", "not a text file")


def test_an_engine_manifest_of_garbage_bytes_is_one_error_line(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "manifest.json").write_bytes(bytes(range(128, 256)) * 4)
    code, _, stderr = main("distill", "--out", tmp_path / "o", "--engines", tmp_path / "e")
    one_error_line(code, stderr, "unreadable manifest", "rebuild")


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_distill_leaves_a_folder_of_other_files_untouched(tmp_path, overwrite):
    """Without --overwrite it left .igds-lock/.igds-claim behind; with it, it wrote a set among the user's files."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine\n")
    code, _, stderr = main("distill", "--out", tmp_path / "mine", "--backend", "eager", "--steps", "2", *overwrite)
    one_error_line(code, stderr, "holds no distill run")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_an_ipc_past_the_limit_is_refused_even_when_it_fits(tmp_path, monkeypatch):
    """--ipc 10000000 with 2 steps passed the memory and disk limits and ran (for days)."""
    monkeypatch.setattr(job_mod, "build_pipeline", lambda *a, **k: pytest.fail("weights loaded: the job ran"))
    monkeypatch.setattr(limits, "available_memory", lambda: 1 << 40)
    monkeypatch.setattr(limits, "free_disk", lambda out: 1 << 50)
    code, _, stderr = main(
        "distill", "--out", tmp_path / "o", "--ipc", "10000000", "--steps", "2", "--backend", "eager"
    )
    one_error_line(code, stderr, "--ipc 10000000", str(limits.MAX_IPC))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--ipc", "0"], ("--ipc must be >= 1",)),  # was accepted: an engine was exported
        (["--batch-size", "10000000"], ("--batch-size 10000000", "4096")),  # was a 122 GB allocation traceback
        (["--memory-size", "100000000"], ("--memory-size",)),
    ],
)
def test_export_refuses_impossible_shapes_before_exporting(tmp_path, flags, words):
    base = ["--batch-size", "2", "--steps", "5", "--ipc", "2", "--memory-size", "4"]
    code, _, stderr = main("export", "--out", tmp_path / "e", *base, *flags)
    one_error_line(code, stderr, *words)
    assert not (tmp_path / "e").exists()


def test_sample_refuses_more_samples_than_memory_holds(tmp_path, monkeypatch):
    from igds_fast import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 16 * 2**30)
    code, _, stderr = main("sample", "--classes", "0", "--n-per-class", "10000000", "--out", tmp_path / "g.png")
    one_error_line(code, stderr, "10000000 samples", "GiB", "--n-per-class")
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("metadata.parquet", "metadata.parquet damaged"),
        (f".unit-{WNIDS[0]}-0000.json", "unit record"),
        ("run.json", "run.json"),
    ],
)
def test_verify_says_which_record_is_damaged(finished, tmp_path, damage, words):
    """The report line said '0 missing, 0 damaged of 10 images' for a damaged manifest or record."""
    out = fresh_copy(finished[0], tmp_path / "set")
    (out / damage).write_bytes(os.urandom(300))
    code, _, stderr = main("verify", out)
    lines = stderr.strip().splitlines()
    assert code == 3 and len(lines) == 1 and words in lines[0] and "--repair" in lines[0], stderr


def test_quality_checks_every_input_before_training_its_judge(tmp_path):
    """A missing --real-val was found after the judge trained; a --cache-dir file was a traceback."""
    samples = image_folder(tmp_path / "s")
    train = image_folder(tmp_path / "t")
    args = ["quality", "--samples", samples, "--real-train", train, "--epochs", "1"]
    code, _, stderr = main(*args, "--real-val", tmp_path / "nope", "--cache-dir", tmp_path / "cache")
    one_error_line(code, stderr, "real val", "does not exist")
    assert not (tmp_path / "cache").exists()  # no judge trained
    (tmp_path / "c.txt").write_text("x")
    code, _, stderr = main(*args, "--real-val", train, "--cache-dir", tmp_path / "c.txt")
    one_error_line(code, stderr, "is a file")


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--resolution", "0"], ("--resolution",)),  # a traceback
        (["--lr", "nan"], ("--lr",)),  # a traceback
        (["--ema-decay", "2"], ("--ema-decay",)),  # accepted
        (["--ckpt-every", "0"], ("--ckpt-every",)),  # a traceback
        (["--patch", "0"], ("--patch",)),  # accepted (0 read as "the preset's")
        (["--config", "nope"], ("--config",)),  # after decoding the data into --out/cache
        (["--precision", "nope"], ("--precision",)),
        (["--steps", "0"], ("--steps",)),  # left an empty --out
        (["--classes", "n01443537"], ("n01443537",)),  # a class the data lacks: left --out
        (["--out", "FILE"], ("is a file",)),  # a traceback
        (["--data", "PACK"], ("data pack",)),  # a pack of garbage bytes: left --out
    ],
)
def test_train_dit_checks_its_options_and_leaves_no_out(tmp_path, flags, words):
    data = image_folder(tmp_path / "data", n=2)
    (tmp_path / "f.txt").write_text("keep\n")
    (tmp_path / "p.npz").write_bytes(os.urandom(300))
    flags = [{"FILE": str(tmp_path / "f.txt"), "PACK": str(tmp_path / "p.npz")}.get(f, f) for f in flags]
    base = ["--data", data, "--out", tmp_path / "dit", "--classes", WNIDS[0], "--config", "tiny"]
    base += ["--resolution", "16", "--steps", "1", "--batch-size", "2"]
    code, _, stderr = main("train-dit", *base, *flags)
    one_error_line(code, stderr, *words)
    assert not (tmp_path / "dit").exists() and (tmp_path / "f.txt").read_text() == "keep\n"


def test_train_critics_checks_precision_before_decoding_into_out(tmp_path):
    data = image_folder(tmp_path / "data", n=2)
    code, _, stderr = main(
        "train-critics", "--data", data, "--out", tmp_path / "c", "--classes", TWO, "--steps", "1",
        "--batch-size", "4", "--width", "16", "--depth", "1", "--heads", "2", "--precision", "nope",
    )  # fmt: skip
    one_error_line(code, stderr, "--precision")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"peak_tflops": float("nan")}, "--peak-tflops"),
        ({"threads": 0}, "--threads"),
        ({"parity_inputs": 0}, "--parity"),
    ],
)
def test_bench_refuses_bad_numbers(kw, words):
    from igds_fast.bench.config import BenchConfig

    with pytest.raises(UserError, match=words):
        BenchConfig(backends=["eager"], **kw).validate()


@pytest.mark.parametrize("kind", ["garbage", "folder"])
def test_report_of_a_file_that_is_no_result_is_one_error_line(tmp_path, kind):
    path = tmp_path / "r.json"
    if kind == "garbage":
        path.write_bytes(bytes(range(128, 256)))
    else:
        path.mkdir()
    code, _, stderr = main("report", path, "--out", tmp_path / "r.md", "--plot", tmp_path / "p.png")
    one_error_line(code, stderr, str(path))
    assert not (tmp_path / "r.md").exists()


@pytest.mark.parametrize("command", ["pack-data", "evaluate", "quality"])
def test_resolutions_no_memory_holds_are_refused_before_decoding(tmp_path, monkeypatch, command):
    """--resolution 100000 decoded 30 GB images (pack-data took 14 GB before it was killed) or ran on."""
    from igds_fast import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 16 * 2**30)
    data = image_folder(tmp_path / "d")
    args = {
        "pack-data": ["--data", data, "--out", tmp_path / "p.npz", "--classes", WNIDS[0]],
        "evaluate": ["--train", data, "--val", data, "--out", tmp_path / "r.json", "--seeds", "1", "--epochs", "1"],
        "quality": ["--samples", data, "--real-train", data, "--real-val", data, "--cache-dir", tmp_path / "cache"],
    }[command]
    t0 = time.perf_counter()
    code, _, stderr = main(command, *args, "--resolution", "100000")
    one_error_line(code, stderr, "GiB", "--resolution")
    assert time.perf_counter() - t0 < 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_bench_json_into_a_folder_is_refused_before_timing(tmp_path):
    """It was an IsADirectoryError traceback after the first row was timed (and left 'DIR.tmp')."""
    (tmp_path / "d").mkdir()
    code, _, stderr = main("bench", "--backends", "eager", "--steps", "2", "--json", tmp_path / "d")
    one_error_line(code, stderr, "--json", "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_quality_of_a_set_with_a_garbage_run_json_is_one_error_line(tmp_path):
    data = image_folder(tmp_path / "s")
    (data / "run.json").write_bytes(bytes(range(128, 256)))
    code, _, stderr = main("quality", "--samples", data, "--real-train", data, "--real-val", data)
    one_error_line(code, stderr, "run.json", "not valid JSON")


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("out-is-a-folder", ("--out", "is a folder")),  # an IsADirectoryError after all the training
        ("device-tpu", ("unknown device 'tpu'",)),  # a torch RuntimeError traceback
        ("run-json-garbage", ("run.json", "not valid JSON")),  # a UnicodeDecodeError traceback
        ("run-json-list", ("run.json", "not a run record")),  # an AttributeError traceback
    ],
)
def test_evaluate_bad_inputs_are_one_error_line(tmp_path, case, words):
    data = image_folder(tmp_path / "d")
    (tmp_path / "o").mkdir()
    args = ["evaluate", "--train", data, "--val", data, "--net", "convnet3", "--resolution", "16", "--seeds", "1"]
    args += ["--epochs", "1", "--out", tmp_path / ("o" if case == "out-is-a-folder" else "r.json")]
    if case == "device-tpu":
        args += ["--device", "tpu"]
    if case == "run-json-garbage":
        (data / "run.json").write_bytes(bytes(range(128, 256)))
    if case == "run-json-list":
        (data / "run.json").write_text("[1]")
    code, _, stderr = main(*args)
    one_error_line(code, stderr, *words)
    assert not (tmp_path / "r.json").exists() and not list((tmp_path / "o").iterdir())


@pytest.mark.parametrize("case", ["json-is-a-folder", "device-tpu"])
def test_quality_refuses_a_json_folder_and_an_unknown_device_before_training(tmp_path, case):
    data = image_folder(tmp_path / "d")
    (tmp_path / "j").mkdir()
    args = ["quality", "--samples", data, "--real-train", data, "--real-val", data, "--epochs", "1"]
    args += ["--cache-dir", tmp_path / "cache"]
    args += ["--json", tmp_path / "j"] if case == "json-is-a-folder" else ["--device", "tpu"]
    code, _, stderr = main(*args)
    one_error_line(code, stderr, *(("--json", "is a folder") if case == "json-is-a-folder" else ("tpu",)))
    assert not (tmp_path / "cache").exists() and not list((tmp_path / "j").iterdir())
