"""The distill job: determinism under interruption, sharding and Ray; outputs; bad input."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from igds_fast.config import ADDED_STEP_FIELDS, RETIRED_STEP_FIELDS, STEP_FIELDS
from igds_fast.errors import UserError
from igds_fast.jobs import state, unit_writer
from igds_fast.jobs.events import Events
from igds_fast.jobs.image_manifest import NEAR_CONSTANT_STD, near_constant_classes, pixel_stats
from igds_fast.jobs.image_manifest import read_image_manifest as read_manifest
from igds_fast.jobs.job import DistillJob, distill_job
from igds_fast.jobs.run import run_job as run_request
from igds_fast.models.critics import NoiseCritic, load_critic, save_critic
from igds_fast.models.dit import DiT, DiTConfig
from igds_fast.models.loading import save_denoiser
from igds_fast.subsets import subset

from .conftest import save_tiny_pixel_models

pytestmark = pytest.mark.usefixtures("single_thread")

WNIDS = [c.wnid for c in subset("imagenette")]
TWO = ",".join(WNIDS[:2])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny pixel-space DiT (8 px) naming the Imagenette classes, and random critics for it."""
    root = tmp_path_factory.mktemp("models")
    paths = save_tiny_pixel_models(root, WNIDS)
    few = NoiseCritic(replace(load_critic(paths["critic"]).config, class_ids=[0, 1], wnids=WNIDS[:2]))
    save_critic(few, root / "critic_two.safetensors")
    return paths | {"critic_two": root / "critic_two.safetensors"}


def request(models: dict[str, Path], out: Path, **kw) -> DistillJob:
    """The job of these options; ``kw`` may hold job options and step fields (None: not given)."""
    base = dict(out=out, classes=TWO, ipc=5, batch_size=2, seed=3, denoiser=models["dit"], vae="none")
    base["critics"] = models["critic"]
    step = dict(
        guidance_scale=2.0,
        beta=1.0,
        steps="4",
        cfg_scale=2.0,
        clip_guard=0.0,  # the sets of releases before the clip guard's default (resume tests start from one)
    )
    if "engines" not in kw and "backend" not in kw:
        base["backend"] = "eager"  # the fp32 reference: the same bytes on every machine
    step |= {k: v for k, v in kw.items() if k in STEP_FIELDS}
    return distill_job(**(base | {k: v for k, v in kw.items() if k not in STEP_FIELDS}), step=step)


def snapshot(out: Path) -> dict[str, str]:
    """sha256 of every image and of the manifest's content (rows, not Parquet bytes)."""
    files = {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.glob("n*/*"))
        if p.is_file()
    }
    rows = sorted(read_manifest(out / "metadata.parquet"), key=lambda r: r["path"])
    files["manifest"] = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    return files


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    out = tmp_path_factory.mktemp("ref") / "set"
    summary = run_request(request(models, out))
    assert summary["complete"] and summary["images_made"] == 10
    return out, snapshot(out)


def test_outputs_layout_manifest_and_run_json(reference):
    out, snap = reference
    for wnid in WNIDS[:2]:
        assert sorted(p.name for p in (out / wnid).iterdir()) == [f"{i:05d}.png" for i in range(5)]
        with Image.open(out / f".igds-contact-{wnid}.png") as sheet:  # 5 tiles of 8 px upscaled to >= 96 px
            assert sheet.width >= 5 * 96 and sheet.height >= 96
    rows = read_manifest(out / "metadata.parquet")
    assert len(rows) == 10
    for r in rows:
        assert hashlib.sha256((out / r["path"]).read_bytes()).hexdigest() == r["sha256"]
        assert r["backend"] == "eager" and r["log_q"] is not None
        stats = pixel_stats(np.asarray(Image.open(out / r["path"]).convert("RGB")))
        assert r["saturation"] == pytest.approx(stats["saturation"], abs=1e-6)
        assert r["pixel_std"] == pytest.approx(stats["pixel_std"], rel=1e-5) and r["pixel_std"] > NEAR_CONSTANT_STD
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] and run["ipc"] == 5 and run["classes"] == WNIDS[:2] and run["guidance"] == "igds"
    assert not list(out.glob("**/*.tmp"))


def test_near_constant_images_are_recorded_and_their_class_named(models, tmp_path, monkeypatch):
    """A class whose images collapsed to flat colour gets a warning event naming it, and run.json says so."""
    flat = {WNIDS[1]}
    real_write = unit_writer.UnitWriter._write

    def write_flat(self, res, images, seconds, before):
        if res.unit.wnid in flat:
            images = np.full_like(images, 128)
        return real_write(self, res, images, seconds, before)

    monkeypatch.setattr(unit_writer.UnitWriter, "_write", write_flat)
    log = tmp_path / "events.jsonl"
    out = tmp_path / "set"
    run_request(request(models, out), Events(path=log))
    warnings = [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "warning"]
    assert [(w["wnid"], w["near_constant"], w["images"]) for w in warnings] == [(WNIDS[1], 5, 5)]
    assert WNIDS[1] in warnings[0]["message"]
    run = json.loads((out / "run.json").read_text())
    assert run["near_constant"] == {WNIDS[1]: {"images": 5, "of": 5}}
    rows = read_manifest(out / "metadata.parquet")
    assert {r["pixel_std"] for r in rows if r["wnid"] in flat} == {0.0}


def test_near_constant_share_per_class():
    rows = [{"wnid": "a", "pixel_std": 0.3}] * 19 + [{"wnid": "a", "pixel_std": 0.001}]  # 5%: not more
    rows += [{"wnid": "b", "pixel_std": 0.001}, {"wnid": "b", "pixel_std": None}]  # null: not counted
    assert near_constant_classes(rows) == {"b": (1, 2)}
    stats = pixel_stats(np.array([[[0, 255, 10]]], dtype=np.uint8))
    assert stats["saturation"] == pytest.approx(2 / 3)
    assert stats["pixel_std"] == pytest.approx(np.std([0, 255, 10]) / 255)


def test_rerun_of_finished_job_does_nothing(models, reference):
    out, snap = reference
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("n*/*")}
    summary = run_request(request(models, out))
    assert summary["images_made"] == 0 and summary["complete"]
    assert {p: p.stat().st_mtime_ns for p in out.glob("n*/*")} == mtimes
    assert snapshot(out) == snap


def test_job_records_leave_added_fields_at_their_old_value_and_retired_fields_out(reference):
    """The job file and its digest leave an added step field out at its old value, exactly as a release
    from before the field wrote them, and hold no retired option."""
    out, _ = reference
    body = json.loads((out / state.JOB_FILE).read_text())
    step = body["config"]["step"]
    assert "clip_guard" not in step and "window_lo" in step and not set(RETIRED_STEP_FIELDS) & set(step)
    assert body["digest"] == state.digest(body["config"])


def spell_out_added_fields(out: Path, names: tuple[str, ...], **values: object) -> None:
    """Make ``out`` look as an earlier release wrote it: with the since-retired diversity field and the
    added fields ``names`` spelled out at their old values (or ``values``): in the job file, the digest
    of that, every unit recorded under it, another request key."""
    old = RETIRED_STEP_FIELDS | ADDED_STEP_FIELDS
    path = out / state.JOB_FILE
    body = json.loads(path.read_text())
    body["config"]["step"] |= {"diversity": "x0"} | {name: values.get(name, old[name]) for name in names}
    body["digest"], body["request"] = state.digest(body["config"]), "recorded-by-that-release"
    path.write_text(json.dumps(body, sort_keys=True))
    for record in out.glob(".unit-*.json"):
        rec = json.loads(record.read_text())
        record.write_text(json.dumps(rec | {"job": body["digest"]}))


@pytest.mark.parametrize(
    "spelled",
    [
        (),
        ("moment_guard",),
        ("moment_guard", "spread_guard"),
        ("moment_guard", "spread_guard", "envelope_guard"),
        ("moment_guard", "spread_guard", "envelope_guard", "clip_guard"),
    ],
)
@pytest.mark.parametrize("job_file", ["kept", "lost"])
def test_a_set_recorded_with_the_added_fields_spelled_out_resumes(models, reference, tmp_path, job_file, spelled):
    """Same options after the upgrade: the interrupted set finishes with nothing redone but what is
    missing, also when its job file is gone; asking for the clip guard is another configuration."""
    import shutil

    from igds_fast.jobs.verify import verify_set

    _, snap = reference
    out = tmp_path / "set"
    shutil.copytree(reference[0], out)
    spell_out_added_fields(out, spelled)
    (out / "metadata.parquet").unlink()  # interrupted before the end: the units are all that is left
    (out / WNIDS[1] / "00004.png").unlink()
    if job_file == "lost":
        (out / state.JOB_FILE).unlink()
    summary = run_request(request(models, out))
    assert summary["complete"] and summary["repaired"] == [f"{WNIDS[1]}/00004.png"]  # only what was missing
    assert summary["images_made"] == 0
    assert snapshot(out) == snap
    assert verify_set(out).ok
    with pytest.raises(UserError, match="another configuration.*step"):
        run_request(request(models, out, clip_guard=0.5))


def test_a_set_recorded_with_a_retired_option_on_is_refused_naming_it(models, reference, tmp_path):
    """A folder begun with an option the product no longer has (here the moment guard on) cannot be
    continued: one line names the option; the folder is left as it was."""
    import shutil

    out = tmp_path / "set"
    shutil.copytree(reference[0], out)
    spell_out_added_fields(out, ("moment_guard",), moment_guard=True)
    (out / WNIDS[1] / "00004.png").unlink()
    before = snapshot(out)
    with pytest.raises(UserError, match=r"moment_guard=True, an option igds-fast no longer has") as e:
        run_request(request(models, out))
    assert "\n" not in str(e.value) and snapshot(out) == before


def test_a_set_begun_before_a_default_changed_is_refused_naming_the_field(models, tmp_path):
    """An interrupted set of a release whose --clip-guard default was 0.5, resumed without options:
    refused, the message names the field and both values; --clip-guard 0.5 finishes it."""
    out = tmp_path / "set"
    assert run_request(request(models, out, clip_guard=0.5))["complete"]
    (out / "metadata.parquet").unlink()
    (out / WNIDS[1] / "00004.png").unlink()
    with pytest.raises(UserError, match=r"step\.clip_guard: 0\.5 there, 0\.0 here.*a default may have changed"):
        run_request(request(models, out, clip_guard=None))  # None: not given, the default
    summary = run_request(request(models, out, clip_guard=0.5))
    assert summary["complete"] and summary["repaired"] == [f"{WNIDS[1]}/00004.png"]


def test_interrupted_run_finishes_byte_identical(models, reference, tmp_path):
    _, snap = reference
    out = tmp_path / "set"
    args = [
        sys.executable,
        "-m",
        "igds_fast.cli",
        "distill",
        "--out",
        str(out),
        "--classes",
        TWO,
        "--ipc",
        "5",
        "--batch-size",
        "2",
        "--seed",
        "3",
        "--denoiser",
        str(models["dit"]),
        "--vae",
        "none",
        "--critics",
        str(models["critic"]),
        "--guidance-scale",
        "2",
        "--beta",
        "1",
        "--steps",
        "4",
        "--cfg-scale",
        "2",
        "--clip-guard",
        "0",
        "--backend",
        "eager",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    want = random.Random().randint(1, 4)  # kill after a random number of finished units
    deadline = time.time() + 120
    while len(list(out.glob(".unit-*.json"))) < want and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metadata.parquet").exists() or len(list(out.glob(".unit-*.json"))) == 6
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-500:]
    assert snapshot(out) == snap
    assert len(read_manifest(out / "metadata.parquet")) == 10  # none missing, none doubled


def test_shards_together_equal_unsharded(models, reference, tmp_path):
    _, snap = reference
    out = tmp_path / "set"
    first = run_request(request(models, out, shard="0/2"))
    assert not first["complete"]  # the other shard's classes are missing: no manifest yet
    assert not (out / "metadata.parquet").exists()
    assert run_request(request(models, out, shard="1/2"))["complete"]
    assert snapshot(out) == snap


def test_ray_local_two_cpu_workers_equal_local(models, reference, tmp_path):
    pytest.importorskip("ray")
    _, snap = reference
    out = tmp_path / "set"
    summary = run_request(request(models, out, ray="local"))
    assert summary["complete"] and summary["ray_workers"] == 2
    assert snapshot(out) == snap


def test_other_config_refused_unless_overwrite(models, reference, tmp_path):
    out = tmp_path / "set"
    run_request(request(models, out, ipc=2))
    with pytest.raises(UserError, match="another configuration.*ipc"):
        run_request(request(models, out, ipc=3))
    assert len(read_manifest(out / "metadata.parquet")) == 4  # the finished set is untouched
    assert run_request(request(models, out, ipc=3, overwrite=True))["complete"]
    assert len(read_manifest(out / "metadata.parquet")) == 6


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"subset": "imagenet7", "classes": None}, "unknown subset 'imagenet7'"),
        ({"classes": "n99999999"}, "unknown WNID 'n99999999'"),
        ({"classes": "n01443537"}, "class n01443537 is not in the model"),  # ImageNet class, not Imagenette
        ({"ipc": 0}, "--ipc must be >= 1"),
        ({"batch_size": 0}, "--batch-size must be >= 1"),
        ({"critics": "critic_two", "classes": ",".join(WNIDS[:3])}, "critics were trained for other classes"),
        ({"shard": "2/2"}, "bad --shard"),
    ],
)
def test_bad_input_is_refused_before_any_output(models, tmp_path, kw, message):
    if kw.get("critics") == "critic_two":
        kw = kw | {"critics": models["critic_two"]}
    out = tmp_path / "set"
    with pytest.raises(UserError, match=message):
        run_request(request(models, out, **kw))
    assert not out.exists() or not any(out.glob("n*"))


def test_out_is_a_file_or_unwritable(models, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        run_request(request(models, f))
    with pytest.raises(UserError, match="cannot write to --out"):
        run_request(request(models, f / "sub"))


def test_disk_full_keeps_finished_units_and_no_manifest(models, tmp_path, monkeypatch):
    out = tmp_path / "set"
    real = unit_writer.write_atomic

    def flaky(path, data):
        if path.name == "00002.png":  # class 0's second unit runs out of space
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(unit_writer, "write_atomic", flaky)
    with pytest.raises(UserError, match="disk full while writing class"):
        run_request(request(models, out))
    assert not (out / "metadata.parquet").exists() and not (out / "run.json").exists()
    kept = [json.loads(p.read_text())["unit"]["count"] for p in out.glob(".unit-*.json")]
    assert kept and not (out / WNIDS[0] / "00002.png").exists()  # finished units are kept...
    monkeypatch.setattr(unit_writer, "write_atomic", real)
    assert run_request(request(models, out))["images_made"] == 10 - sum(kept)  # ...the rerun does the rest
    assert len(read_manifest(out / "metadata.parquet")) == 10


def test_nan_in_a_step_names_class_and_samples(models, tmp_path):
    bad = DiT(
        DiTConfig(
            input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=10, wnids=WNIDS
        )
    )
    with torch.no_grad():
        bad.final_layer.linear.bias.fill_(float("nan"))
    save_denoiser(bad, tmp_path / "nan.safetensors")
    out = tmp_path / "set"
    with pytest.raises(UserError, match=rf"non-finite values at step 3 for class {WNIDS[0]}, samples 0\.\.1"):
        run_request(request(models, out, denoiser=tmp_path / "nan.safetensors"))
    assert not list(out.glob(".unit-*.json")) and not list(out.glob("n*/*.png"))


def test_cli_errors_are_one_line_with_exit_2(models, tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "igds_fast.cli",
            "distill",
            "--out",
            str(tmp_path / "o"),
            "--subset",
            "nope",
            "--denoiser",
            str(models["dit"]),
            "--critics",
            str(models["critic"]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: unknown subset 'nope': choose one of imagenette, imagewoof, imageidc, imagenet100, imagenet1k"
    ]


@pytest.fixture(scope="module")
def ort_engine(models, tmp_path_factory) -> Path:
    """An ONNX Runtime engine of the same tiny models and step settings as ``request``."""
    pytest.importorskip("onnxruntime")
    from igds_fast.backends.build import ExportSpec, export_engine

    req = request(models, tmp_path_factory.mktemp("unused") / "o")
    out = tmp_path_factory.mktemp("engines") / "tiny-ort"
    spec = ExportSpec(
        denoiser=models["dit"],
        vae="none",
        critics=models["critic"],
        cfg=req.step,
        batch_size=2,
        memory_size=4,
        precision="fp32",
        backend="onnxruntime",
        out=out,
    )
    return export_engine(spec)


def test_distill_with_an_onnxruntime_engine_matches_eager(models, reference, ort_engine, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "set"
    summary = run_request(request(models, out, engines=ort_engine))
    assert summary["complete"]
    rows = {r["path"]: r for r in read_manifest(out / "metadata.parquet")}
    ref_rows = {r["path"]: r for r in read_manifest(ref_out / "metadata.parquet")}
    assert rows.keys() == ref_rows.keys()
    assert {r["backend"] for r in rows.values()} == {"onnxruntime"}
    # Same trajectories up to float round-off: the final bounds agree closely.
    for path, r in rows.items():
        assert abs(r["log_q"] - ref_rows[path]["log_q"]) < 1e-3 * max(1.0, abs(ref_rows[path]["log_q"]))


def test_engine_built_for_other_critics_or_batch_is_refused(models, ort_engine, tmp_path):
    with pytest.raises(UserError, match="critic"):
        run_request(
            request(
                models, tmp_path / "a", engines=ort_engine, critics=models["critic_two"], classes=",".join(WNIDS[:2])
            )
        )
    with pytest.raises(UserError, match="batch"):
        run_request(request(models, tmp_path / "b", engines=ort_engine, batch_size=3))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_engine_with_a_window_and_ddim_eta_distills_and_rows_name_its_id(models, tmp_path):
    """Every field an engine fixes can be set on distill too: a windowed DDIM(eta) engine is usable,
    and each Parquet row records the engine manifest's id."""
    pytest.importorskip("onnxruntime")
    from typer.testing import CliRunner

    from igds_fast.backends.engine_manifest import read_engine_manifest
    from igds_fast.cli import app

    engine, out = tmp_path / "engine", tmp_path / "set"
    models_args = ["--denoiser", str(models["dit"]), "--vae", "none", "--critics", str(models["critic"])]
    step_args = ["--steps", "4", "--sampler", "ddim", "--eta", "0.5", "--window-lo", "100", "--window-hi", "750"]
    step_args += ["--guidance-scale", "2", "--beta", "1", "--cfg-scale", "2"]
    runner = CliRunner()
    res = runner.invoke(
        app, ["export", "--out", str(engine), "--batch-size", "2", "--memory-size", "4", *models_args, *step_args]
    )
    assert res.exit_code == 0, res.output
    manifest = read_engine_manifest(engine)
    assert (manifest["step"]["window_lo"], manifest["step"]["window_hi"], manifest["step"]["eta"]) == (100, 750, 0.5)
    args = ["distill", "--engines", str(engine), "--classes", TWO, "--ipc", "3", "--batch-size", "2", "--out", str(out)]
    res = runner.invoke(app, [*args, *models_args, *step_args])
    assert res.exit_code == 0, res.output
    rows = read_manifest(out / "metadata.parquet")
    assert len(rows) == 6 and {r["engine_id"] for r in rows} == {manifest["id"]}
    assert {r["backend"] for r in rows} == {"onnxruntime"}
    # The same engine with another window asked for is refused, naming the field.
    res = runner.invoke(app, [*args[:-1], str(tmp_path / "other"), *models_args, *step_args, "--window-lo", "0"])
    assert res.exit_code != 0 and "step.window_lo" in str(res.exception)


def test_an_edited_engine_manifest_is_refused(ort_engine, tmp_path):
    """Swapping two class WNIDs in a copy of the manifest would write class-1 images under class 0."""
    import shutil

    from igds_fast.backends.registry import load_engine

    copy = tmp_path / "copy"
    shutil.copytree(ort_engine, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["class_wnids"][0], m["class_wnids"][1] = m["class_wnids"][1], m["class_wnids"][0]
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="edited or damaged"):
        load_engine(copy)


def test_a_distill_with_an_edited_engine_manifest_is_refused_before_any_output(models, ort_engine, tmp_path):
    """A reported failure, through distill: swapped class WNIDs (would write class-1 images under
    class 0) and an edited shapes.batch_size (was a traceback, and left .igds-job.json)."""
    import shutil

    for edit in ("class_wnids", "batch_size"):
        copy = tmp_path / f"copy-{edit}"
        shutil.copytree(ort_engine, copy)
        m = json.loads((copy / "manifest.json").read_text())
        if edit == "class_wnids":
            m["class_wnids"][0], m["class_wnids"][1] = m["class_wnids"][1], m["class_wnids"][0]
        else:
            m["shapes"]["batch_size"] = 3
        (copy / "manifest.json").write_text(json.dumps(m))
        out = tmp_path / f"out-{edit}"
        with pytest.raises(UserError, match="edited or damaged"):
            run_request(request(models, out, engines=copy, classes=WNIDS[0]))
        assert not out.exists()


def test_an_engine_for_another_beta_or_ipc_says_what_to_pass(models, ort_engine, tmp_path):
    """An engine that differs only in beta names the beta to pass (was two bare beta values); one
    whose memory is too small for the IPC names the IPC and the --memory-size to export."""
    import shutil

    from igds_fast.backends.engine_manifest import sign_manifest

    copy = tmp_path / "beta"
    shutil.copytree(ort_engine, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["step"]["beta"] = 0.25
    m = sign_manifest(m)  # re-signed by this user: only the beta differs
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match=r"exported with beta 0\.25, this job uses 1;.*--beta 0\.25"):
        run_request(request(models, tmp_path / "o", engines=copy))
    with pytest.raises(UserError, match=r"IPC 9 with batch 2 needs 8 memory rows, the engine takes 4.*--memory-size 8"):
        run_request(request(models, tmp_path / "p", engines=ort_engine, ipc=9))
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()
