"""Engines are signed: loading never runs code, or uses graphs, that the engine key did not sign.

What an adversary can do with write access to an engine folder, and what must happen:
a compiled package swapped and the manifest rebuilt with the package's own writer (refused before
the backend's loader runs); a step graph from another engine with a rebuilt manifest (refused);
file names that leave the folder (refused by name, nothing about the outside file revealed); an
engine signed with another key (refused in one line naming IGDS_ENGINE_KEY; the same key on
another machine loads). ``export --overwrite`` deletes only an engine's own files; temporary
folders of killed exports are removed. Tiny ONNX Runtime engines; the compiled engine is a fake file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from igds_fast.backends import compiled, registry
from igds_fast.backends import onnxruntime as ort_backend
from igds_fast.backends.build import ExportSpec, export_engine, remove_stale_exports
from igds_fast.backends.engine_manifest import (
    MANIFEST,
    build_manifest,
    engine_id,
    read_engine_manifest,
    sign_manifest,
    write_engine_manifest,
)
from igds_fast.backends.registry import load_engine
from igds_fast.backends.trust import KEY_ENV, TRUST_ENV, engine_key, key_path
from igds_fast.config import StepConfig
from igds_fast.errors import UserError
from igds_fast.jobs.engine_cache import ensure_cached_engine, usable
from igds_fast.models.critics import CriticConfig, NoiseCritic, save_critic
from igds_fast.models.dit import DiT, DiTConfig
from igds_fast.models.embedded import ModelPaths
from igds_fast.models.loading import save_denoiser
from igds_fast.subsets import subset

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.usefixtures("own_key")]

KEY_A = "a" * 64  # hex: 32 bytes
KEY_B = "another engine key, any string of 16+ bytes"
GUIDED = StepConfig(steps="4", beta=0.5, guidance_scale=1.0, window_hi=999, clip_guard=0.0)
OTHER_SCALE = dataclasses.replace(GUIDED, guidance_scale=10.0)
OFF = StepConfig(steps="4", guidance="off")
WNIDS = [c.wnid for c in subset("imagenette")]
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory: pytest.TempPathFactory):
    """This module's own config home: no test reads or writes the user's engine key."""
    with pytest.MonkeyPatch.context() as mp:
        config = tmp_path_factory.mktemp("config")
        mp.setenv("XDG_CONFIG_HOME", str(config))
        mp.delenv(KEY_ENV, raising=False)
        mp.delenv(TRUST_ENV, raising=False)
        yield config


@pytest.fixture
def own_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts as the machine whose key is KEY_A, trusting nothing unsigned."""
    monkeypatch.setenv(KEY_ENV, KEY_A)
    monkeypatch.delenv(TRUST_ENV, raising=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    dit = DiT(
        DiTConfig(
            input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=10, wnids=WNIDS
        )
    )
    torch.nn.init.normal_(dit.final_layer.linear.weight, std=0.05)
    critic = NoiseCritic(
        CriticConfig(
            in_channels=3, input_size=8, patch_size=2, width=32, depth=1, heads=2, feat_dim=8, class_ids=[0, 1]
        )
    )
    for blk in critic.blocks:
        torch.nn.init.normal_(blk.ada.weight, std=0.05)
    return {"denoiser": save_denoiser(dit, d / "dit.safetensors"), "critics": save_critic(critic, d / "c.safetensors")}


def spec(models: dict[str, Path], out: Path, cfg: StepConfig = OFF, overwrite: bool = False) -> ExportSpec:
    critics = models["critics"] if cfg.guidance == "igds" else None
    return ExportSpec(models["denoiser"], "none", critics, cfg, 2, 4, "fp32", "onnxruntime", out, overwrite=overwrite)


@pytest.fixture(scope="module")
def engines(models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ORT engines signed with KEY_A: guided at two guidance scales, and unguided."""
    root = tmp_path_factory.mktemp("engines")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, KEY_A)
        return {
            "guided": export_engine(spec(models, root / "guided", GUIDED)),
            "other_scale": export_engine(spec(models, root / "other", OTHER_SCALE)),
            "off": export_engine(spec(models, root / "off")),
        }


def copy_of(engine: Path, tmp_path: Path, name: str = "copy") -> Path:
    out = tmp_path / name
    shutil.copytree(engine, out)
    return out


def rebuild_manifest(folder: Path, key: bytes | None = None, **edits) -> dict:
    """What an adversary can do: list the folder's files again and recompute the id with the
    package's own writer, signing with a key of their own (they do not have the engine key)."""
    m = json.loads((folder / MANIFEST).read_text())
    m = {k: v for k, v in m.items() if k not in ("files", "id", "mac")} | edits
    return write_engine_manifest(folder, m, key=key if key is not None else KEY_B.encode())


def unsigned(folder: Path, **edits) -> dict:
    """The manifest an earlier release wrote: files and id, no signature."""
    m = rebuild_manifest(folder, **edits)
    m.pop("mac")
    m["id"] = engine_id(m)
    (folder / MANIFEST).write_text(json.dumps(m))
    return m


def must_not_load(*args, **kwargs):
    raise AssertionError("the backend's loader ran on an engine that should have been refused")


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# (a) executable code -------------------------------------------------------------------------


def fake_compiled_engine(folder: Path, payload: bytes) -> Path:
    """A compiled (AOTInductor) engine folder as export writes it, with a stand-in package file."""
    folder.mkdir()
    (folder / "step.pt2").write_bytes(payload)
    manifest = build_manifest(
        backend="compiled",
        precision="fp32",
        step_config=OFF.to_dict(),
        models={"denoiser": "0" * 64},
        model_paths={"denoiser": "dit.safetensors"},
        shapes={"batch_size": 2, "channels": 3, "height": 8, "width": 8, "memory_size": 4, "feat_dim": 1},
        graphs={"step": "step.pt2"},
        extra={"num_steps": 4, "num_classes": 6, "device": "cpu", "plain_steps": []},
    )
    write_engine_manifest(folder, manifest)
    return folder


@pytest.fixture
def loaders_fail_loudly(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every exported backend's loader raises AssertionError (and records that it was called)."""
    called: list[str] = []

    def loud(name: str):
        def load(*args, **kwargs):
            called.append(name)
            must_not_load()

        return load

    for name in ("compiled", "onnxruntime", "tensorrt"):
        row = registry.BACKENDS[name]
        monkeypatch.setitem(
            registry.BACKENDS, name, dataclasses.replace(row, load=loud(name), unavailable=lambda: None)
        )
    monkeypatch.setattr(compiled, "load_package", must_not_load)
    monkeypatch.setattr(ort_backend, "open_session", must_not_load)
    return called


@pytest.mark.parametrize("rebuilt", ["other key", "no signature"])
def test_a_swapped_compiled_package_is_refused_before_the_loader_runs(tmp_path, loaders_fail_loudly, rebuilt):
    folder = fake_compiled_engine(tmp_path / "eng", b"the package export wrote")
    with pytest.raises(AssertionError):  # the genuine engine does reach the loader
        load_engine(folder)
    assert loaders_fail_loudly == ["compiled"]
    (folder / "step.pt2").write_bytes(b"a library with a constructor")
    if rebuilt == "other key":
        rebuild_manifest(folder)
    else:
        unsigned(folder)
    read = json.loads((folder / MANIFEST).read_text())
    assert read["id"] == engine_id(read)  # the id checks: only the signature tells
    with pytest.raises(UserError) as e:
        load_engine(folder)
    assert "IGDS_ENGINE_KEY" in one_line(e) or "not signed" in str(e.value)
    assert loaders_fail_loudly == ["compiled"]  # never called for the swapped package


def test_a_package_that_is_not_listed_is_never_opened(tmp_path, loaders_fail_loudly):
    """A graph name that is not among the listed files would be opened unhashed: refused, even in a
    manifest signed with the engine key."""
    folder = fake_compiled_engine(tmp_path / "eng", b"package")
    (folder / "plain.pt2").write_bytes(b"unlisted code")
    m = json.loads((folder / MANIFEST).read_text())
    m["graphs"]["plain"] = "plain.pt2"
    (folder / MANIFEST).write_text(json.dumps(sign_manifest(m)))
    with pytest.raises(UserError, match="not among its listed files"):
        load_engine(folder)
    assert loaders_fail_loudly == []


# (b) a graph from another engine --------------------------------------------------------------


def test_a_step_graph_of_another_engine_with_a_rebuilt_manifest_is_refused(engines, tmp_path, loaders_fail_loudly):
    folder = copy_of(engines["guided"], tmp_path)
    shutil.copyfile(engines["other_scale"] / "step.onnx", folder / "step.onnx")
    rebuild_manifest(folder)
    with pytest.raises(UserError, match="another engine key"):
        load_engine(folder)
    with pytest.raises(UserError, match="another engine key"):  # what distill reads first
        read_engine_manifest(folder)
    unsigned(folder)
    with pytest.raises(UserError, match="not signed"):
        load_engine(folder)
    assert loaders_fail_loudly == []


def test_the_genuine_engines_load_and_differ(engines):
    """The control: both engines are ours and load; their step graphs are not the same file."""
    a, b = load_engine(engines["guided"]), load_engine(engines["other_scale"])
    assert a.id != b.id
    assert (engines["guided"] / "step.onnx").read_bytes() != (engines["other_scale"] / "step.onnx").read_bytes()


def test_an_edited_field_under_the_engine_key_id_is_edited_not_another_key(engines, tmp_path):
    folder = copy_of(engines["guided"], tmp_path)
    m = json.loads((folder / MANIFEST).read_text())
    m["step"]["guidance_scale"] = 10.0
    m["id"] = engine_id(m)  # recomputable by anyone; the signature is not
    (folder / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(UserError, match="edited or damaged"):
        load_engine(folder)


def test_distill_refuses_a_swapped_graph_before_any_output_and_runs_the_genuine_engine(engines, models, tmp_path):
    """Through the command line: the engine with the other engine's graph is refused in one line and
    nothing is written; the genuine engine distills."""
    from typer.testing import CliRunner

    from igds_fast.cli import app

    folder = copy_of(engines["guided"], tmp_path)
    shutil.copyfile(engines["other_scale"] / "step.onnx", folder / "step.onnx")
    rebuild_manifest(folder)
    models_args = ["--denoiser", str(models["denoiser"]), "--vae", "none", "--critics", str(models["critics"])]
    step_args = ["--steps", "4", "--beta", "0.5", "--guidance-scale", "1", "--window-hi", "999", "--clip-guard", "0"]
    job = ["--classes", ",".join(WNIDS[:2]), "--ipc", "2", "--batch-size", "2", *models_args, *step_args]
    res = CliRunner().invoke(app, ["distill", "--engines", str(folder), "--out", str(tmp_path / "bad"), *job])
    assert res.exit_code != 0 and "another engine key" in str(res.exception), res.output
    assert not (tmp_path / "bad").exists()
    res = CliRunner().invoke(app, ["distill", "--engines", str(engines["guided"]), "--out", str(tmp_path / "ok"), *job])
    assert res.exit_code == 0, res.output + repr(res.exception)


# (c) names outside the folder ------------------------------------------------------------------

SECRET_SIZE = 98765  # the size of a file outside the engine: must never appear in a message


@pytest.fixture
def outside(tmp_path) -> Path:
    p = tmp_path / "outside" / "secret.bin"
    p.parent.mkdir()
    p.write_bytes(b"s" * SECRET_SIZE)
    return p


def signed_with_our_key(folder: Path, m: dict) -> None:
    """Even a manifest signed with the engine key may not name files outside its folder."""
    (folder / MANIFEST).write_text(json.dumps(sign_manifest(m)))


@pytest.mark.parametrize("where", ["graph", "file"])
@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_names_outside_the_folder_are_refused_by_name(engines, tmp_path, outside, loaders_fail_loudly, where, how):
    folder = copy_of(engines["off"], tmp_path)
    name = os.path.relpath(outside, folder) if how == "dotdot" else str(outside)
    m = {k: v for k, v in json.loads((folder / MANIFEST).read_text()).items() if k not in ("id", "mac")}
    if where == "graph":
        m["graphs"]["step"] = name
    else:
        m["files"][name] = {"size": 1, "sha256": "0" * 64}  # the shape of ../../../../etc/hostname
    signed_with_our_key(folder, m)
    with pytest.raises(UserError) as e:
        load_engine(folder)
    assert "outside the engine folder" in one_line(e)
    assert str(SECRET_SIZE) not in str(e.value)
    with pytest.raises(UserError, match="outside the engine folder"):  # before any file is looked at
        read_engine_manifest(folder)
    assert loaders_fail_loudly == []


@pytest.mark.parametrize("link", ["file", "folder"])
def test_symbolic_links_are_refused(engines, tmp_path, outside, loaders_fail_loudly, link):
    """A listed file that is a link (or inside a linked folder), even with the outside file's real
    size and hash and a manifest signed with the engine key."""
    folder = copy_of(engines["off"], tmp_path)
    shutil.copyfile(folder / "step.onnx", outside.parent / "step.onnx")
    (folder / "step.onnx").unlink()
    if link == "file":
        (folder / "step.onnx").symlink_to(outside.parent / "step.onnx")
        name = "step.onnx"
    else:
        (folder / "sub").symlink_to(outside.parent, target_is_directory=True)
        name = "sub/step.onnx"
    m = {k: v for k, v in json.loads((folder / MANIFEST).read_text()).items() if k not in ("id", "mac")}
    info = m["files"].pop("step.onnx")
    m["files"][name] = info
    m["graphs"]["step"] = name
    signed_with_our_key(folder, m)
    with pytest.raises(UserError, match="symbolic link") as e:
        load_engine(folder)
    one_line(e)
    assert loaders_fail_loudly == []


def test_a_linked_manifest_is_refused(engines, tmp_path):
    folder = copy_of(engines["off"], tmp_path)
    (folder / MANIFEST).rename(tmp_path / "elsewhere.json")
    (folder / MANIFEST).symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(UserError, match="symbolic link"):
        load_engine(folder)


# (d) keys ----------------------------------------------------------------------------------------


def test_another_key_is_refused_in_one_line_and_the_shared_key_loads(engines, monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, KEY_B)
    with pytest.raises(UserError) as e:
        load_engine(engines["off"])
    msg = one_line(e)
    assert "another engine key" in msg and "IGDS_ENGINE_KEY" in msg and "--overwrite" in msg and TRUST_ENV in msg
    # another machine: another home, no key file, the exporting machine's key shared through the env
    other = tmp_path / "other-machine"
    monkeypatch.setenv("HOME", str(other))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(other / ".config"))
    monkeypatch.setenv(KEY_ENV, KEY_A)
    assert load_engine(engines["off"]).batch_size == 2
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(UserError, match="another engine key"):  # no key there at all
        load_engine(engines["off"])
    assert not key_path().exists()  # checking never creates a key
    monkeypatch.setenv(TRUST_ENV, "1")  # the explicit trust option
    assert load_engine(engines["off"]).batch_size == 2


def test_the_key_file_is_made_once_private_and_shared_by_its_content(models, monkeypatch, tmp_path):
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    engine = export_engine(spec(models, tmp_path / "e"))
    path = tmp_path / "cfg" / "igds-fast" / "engine.key"
    assert key_path() == path and path.is_file() and (path.stat().st_mode & 0o777) == 0o600
    assert not any(p.name.startswith(".engine.key.tmp") for p in path.parent.iterdir())
    secret = path.read_text().strip()
    assert not any(
        secret.encode() in p.read_bytes() or bytes.fromhex(secret) in p.read_bytes() for p in engine.iterdir()
    )
    assert load_engine(engine).batch_size == 2
    # another machine (another HOME) loads it with the key file's content in IGDS_ENGINE_KEY
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "other"))
    with pytest.raises(UserError, match="IGDS_ENGINE_KEY"):
        load_engine(engine)
    monkeypatch.setenv(KEY_ENV, path.read_text().strip())
    assert load_engine(engine).batch_size == 2
    # a key file others can read is refused
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    path.chmod(0o644)
    with pytest.raises(UserError, match="chmod 600"):
        engine_key()


def test_a_short_key_is_refused(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(UserError, match="too short"):
        engine_key()


def test_an_engine_of_an_earlier_release_is_refused_unless_trusted(engines, tmp_path, monkeypatch):
    folder = copy_of(engines["off"], tmp_path)
    unsigned(folder)
    with pytest.raises(UserError) as e:
        load_engine(folder)
    assert "not signed" in one_line(e) and "--overwrite" in str(e.value) and TRUST_ENV in str(e.value)
    monkeypatch.setenv(TRUST_ENV, "1")
    assert load_engine(folder).batch_size == 2
    (folder / "step.onnx").write_bytes(b"trusted, but still checked against its manifest")
    with pytest.raises(UserError, match="truncated|sha256"):
        load_engine(folder)


# the engine cache ---------------------------------------------------------------------------------


def test_a_cache_entry_under_another_key_is_rebuilt_never_loaded(models, tmp_path, monkeypatch):
    entry = tmp_path / "cache" / "onnxruntime-fp32-k"
    paths = ModelPaths(models["denoiser"], "none", None)
    build = (entry, paths, OFF, 2, 4, "onnxruntime", "fp32", "cpu")
    ensure_cached_engine(*build)
    assert usable(entry)
    first = read_engine_manifest(entry)["created"], (entry / "step.onnx").stat().st_ino
    monkeypatch.setenv(KEY_ENV, KEY_B)
    monkeypatch.setenv(TRUST_ENV, "1")  # the cache never trusts an entry it cannot check
    assert not usable(entry)
    ensure_cached_engine(*build)
    monkeypatch.delenv(TRUST_ENV)
    assert usable(entry) and load_engine(entry).batch_size == 2  # signed with KEY_B now
    assert (entry / "step.onnx").stat().st_ino != first[1]
    assert [p.name for p in entry.parent.iterdir() if p.name.startswith(".") and "lock" not in p.name] == []


# (e) export --overwrite -------------------------------------------------------------------------


def test_overwrite_refuses_a_folder_with_a_file_that_is_not_the_engines(engines, models, tmp_path):
    folder = copy_of(engines["off"], tmp_path)
    (folder / "notes.txt").write_text("my results")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(UserError) as e:
        export_engine(spec(models, folder, overwrite=True))
    assert "notes.txt" in one_line(e) and "not in its manifest" in str(e.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_overwrite_refuses_a_folder_with_just_a_format_line(models, tmp_path):
    folder = tmp_path / "looks-like-an-engine"
    folder.mkdir()
    (folder / MANIFEST).write_text(json.dumps({"format": "igds-fast/engine-v1"}))
    (folder / "notes.txt").write_text("my results")
    (folder / "results").mkdir()
    (folder / "results" / "table.csv").write_text("1,2")
    with pytest.raises(UserError, match="not one") as e:
        export_engine(spec(models, folder, overwrite=True))
    one_line(e)
    assert (folder / "notes.txt").read_text() == "my results" and (folder / "results" / "table.csv").is_file()
    assert not list(tmp_path.glob(".looks-like-an-engine.*"))


@pytest.mark.parametrize("signed", [True, False])
def test_overwrite_replaces_an_engine_folder(engines, models, tmp_path, signed):
    """A proper engine is replaced, ours or an earlier release's (the re-export the refusals advise),
    with its runtime cache; nothing is left beside it."""
    folder = copy_of(engines["off"], tmp_path)
    (folder / "ort_trt_cache").mkdir()
    (folder / "ort_trt_cache" / "x.engine").write_bytes(b"runtime cache")
    if not signed:
        unsigned(folder)
    old_id = json.loads((folder / MANIFEST).read_text())["id"]
    export_engine(spec(models, folder, overwrite=True))
    assert read_engine_manifest(folder)["id"] != old_id
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "step.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_overwrite_refuses_an_unsigned_engine_whose_files_were_changed(engines, models, tmp_path):
    folder = copy_of(engines["off"], tmp_path)
    unsigned(folder)
    (folder / "step.onnx").write_bytes(b"not the engine's any more")
    with pytest.raises(UserError, match="not one"):
        export_engine(spec(models, folder, overwrite=True))
    assert (folder / "step.onnx").read_bytes() == b"not the engine's any more"


# (f) temporary folders of killed exports ----------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_folders_of_dead_exports_are_removed(models, tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead, dead_elsewhere = tmp_path / f".e.tmp-{dead_pid()}", tmp_path / f".e.tmp-{dead_pid()}"
        alive = tmp_path / f".e.tmp-{live.pid}"
        other_name = tmp_path / f".f.tmp-{dead_pid()}"
        for d in (dead, dead_elsewhere, alive, other_name):
            d.mkdir()
            (d / "step.onnx").write_bytes(b"x" * 1000)
        (dead_elsewhere / ".export-host").write_text("another-host-than-" + socket.gethostname())
        export_engine(spec(models, tmp_path / "e"))
        assert not dead.exists()
        assert alive.exists() and dead_elsewhere.exists() and other_name.exists()
        assert remove_stale_exports(tmp_path / "e") == []
    finally:
        live.kill()
        live.wait()
    assert remove_stale_exports(tmp_path / "e") == [alive]


def test_a_linked_temporary_folder_is_not_followed(tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    (tmp_path / f".e.tmp-{dead_pid()}").symlink_to(target, target_is_directory=True)
    assert remove_stale_exports(tmp_path / "e") == []
    assert (target / "keep.txt").read_text() == "keep"
