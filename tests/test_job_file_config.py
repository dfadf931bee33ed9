"""Jobs written down: ``distill --config job.toml`` (flags override its keys), ``distill --engines E``
taking the step from the engine, packaged export recipes found by name, and TOML on Python 3.10."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import igds_fast
from igds_fast.cli import app
from igds_fast.config import read_toml
from igds_fast.errors import UserError
from igds_fast.subsets import subset

from .conftest import run_cli_in_process, save_tiny_pixel_models

pytestmark = pytest.mark.usefixtures("single_thread")

WNIDS = [c.wnid for c in subset("imagenette")]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny pixel-space DiT (8 px) naming the Imagenette classes, and random critics for it."""
    return save_tiny_pixel_models(tmp_path_factory.mktemp("models"), WNIDS)


def model_args(models: dict[str, Path]) -> list[str]:
    return ["--denoiser", str(models["dit"]), "--vae", "none", "--critics", str(models["critic"])]


def command(*args: str) -> tuple[int, str, str]:
    """``igds-fast ARGS`` through ``cli.main`` (its one-line errors and exit codes) in this interpreter."""
    return run_cli_in_process(*args)


def test_distill_reads_a_job_file_and_flags_override_its_keys(models, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(
        f"""# the job, written down
classes = ["{WNIDS[0]}", "{WNIDS[1]}"]
ipc = 3
steps = 4
batch-size = 2
guidance_scale = 2.0
format = "jpeg"
denoiser = "{models["dit"]}"
vae = "none"
critics = "{models["critic"]}"
backend = "eager"
out = "{tmp_path / "from-the-file"}"
"""
    )
    out = tmp_path / "set"
    code, stdout, stderr = command("distill", "--config", str(job), "--out", str(out), "--ipc", "2")
    assert code == 0, stderr
    assert json.loads(stdout.splitlines()[-1])["event"] == "finished"
    images = sorted(out.glob("n*/*.jpg"))
    assert len(images) == 4  # --ipc 2 over the file's 3, in the file's format, for its two classes
    assert {p.parent.name for p in images} == set(WNIDS[:2])
    text = (out / "run.json").read_text()
    assert '"steps": "4"' in text and '"guidance_scale": 2.0' in text
    assert not (tmp_path / "from-the-file").exists()  # --out overrode the file's out

    # the API reads the same file; its keyword arguments override it as the flags do
    res = igds_fast.distill(config=job, out=tmp_path / "api", ipc=1)
    assert res.images == 2 and res.step.steps == "4" and res.step.guidance_scale == 2.0
    assert len(list((tmp_path / "api").glob("n*/*.jpg"))) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ipc = 2\ncolour = 1\n", "unknown key 'colour' in the job file '{job}' (known: out, subset, classes"),
        ("ipc = 2\nmemory-size = 64\n", "unknown key 'memory-size' in the job file '{job}'"),
        ('ipc = "two"\n', "ipc in the job file '{job}' must be an integer, got 'two'"),
        ("steps = 10\nsteps-x = 1\n", "unknown key 'steps-x'"),
        ("ipc = 2\nipc = 3\n", "job file '{job}' is not valid TOML"),
        ("ipc = 2\n[step]\nsteps = 4\n", "unknown key 'step' in the job file '{job}'"),
    ],
)
def test_a_bad_job_file_is_one_line_naming_the_key_and_the_file(tmp_path, text, message):
    job = tmp_path / "job.toml"
    job.write_text(text)
    code, stdout, stderr = command("distill", "--config", str(job), "--out", str(tmp_path / "set"))
    assert code == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1
    assert stderr.startswith("error: " + message.format(job=job)), stderr
    assert not (tmp_path / "set").exists()


def test_distill_on_an_engine_takes_its_step(models, tmp_path):
    """An engine exported with --steps 4 (and a window) runs without repeating them; a step flag given
    must agree with the engine."""
    pytest.importorskip("onnxruntime")
    engine = tmp_path / "engine"
    step = ["--steps", "4", "--window-lo", "100", "--guidance-scale", "2", "--cfg-channels", "all"]
    runner = CliRunner()
    res = runner.invoke(
        app, ["export", "--out", str(engine), "--batch-size", "2", "--memory-size", "4", *model_args(models), *step]
    )
    assert res.exit_code == 0, res.output
    args = ["distill", "--engines", str(engine), "--classes", ",".join(WNIDS[:2]), "--ipc", "2", *model_args(models)]
    code, _, stderr = command(*args, "--out", str(tmp_path / "set"))
    assert code == 0, stderr
    text = (tmp_path / "set" / "run.json").read_text()
    assert '"steps": "4"' in text and '"window_lo": 100' in text and '"cfg_channels": null' in text
    assert len(list((tmp_path / "set").glob("n*/*.png"))) == 4
    # a flag the engine agrees with is fine; one it does not is refused naming the field
    code, _, stderr = command(*args, "--steps", "4", "--out", str(tmp_path / "same"))
    assert code == 0, stderr
    code, _, stderr = command(*args, "--steps", "5", "--out", str(tmp_path / "other"))
    assert code == 2 and "step.steps" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "other").exists()


def test_export_finds_a_packaged_recipe_by_name_from_another_directory(models, tmp_path, monkeypatch):
    """``--recipe NAME`` (or ``--config NAME``) from a folder without ``export/``: the packaged recipe's
    keys, under the flags given."""
    pytest.importorskip("onnxruntime")
    from igds_fast.backends.engine_manifest import read_engine_manifest

    monkeypatch.chdir(tmp_path)
    for option, name in (("--recipe", "a"), ("--config", "b")):
        args = [option, "embedded-ort-b16", "--out", name, "--batch-size", "2", "--memory-size", "4"]
        code, stdout, stderr = command("export", *args, *model_args(models))
        assert code == 0, stderr
        assert stdout.startswith(f"wrote {name} (onnxruntime, fp32, batch 2, memory 4)")
        manifest = read_engine_manifest(tmp_path / name)
        assert manifest["step"]["steps"] == "50" and manifest["step"]["cfg_scale"] == 4.0  # the recipe's
    code, _, stderr = command("export", "--recipe", "nope", "--out", "c")
    assert code == 2 and "packaged: dit-xl2-256-compiled, dit-xl2-256-trt-fp16, embedded-ort-b16" in stderr


def test_every_packaged_recipe_reads_and_the_embedded_one_describes_the_latent_model():
    from igds_fast.backends.build import EXPORT_DEFAULTS
    from igds_fast.config import STEP_FIELDS, read_toml_options

    recipes = igds_fast.recipes()
    assert len(recipes) == 3
    for path in recipes.values():
        values = read_toml_options(path, [*EXPORT_DEFAULTS, *STEP_FIELDS], "recipe")
        assert values["backend"] in ("onnxruntime", "tensorrt", "compiled"), path
        assert f"--recipe {path.stem} " in path.read_text()  # its usage line names it as users type it
    embedded = recipes["embedded-ort-b16"].read_text()
    assert "latent DiT on 4x16x16 latents" in embedded and "64 px" in embedded and "32 px" not in embedded


def test_toml_on_python_3_10_reads_with_tomli_or_says_to_install_it(tmp_path, monkeypatch):
    tomllib = pytest.importorskip("tomllib")
    path = tmp_path / "job.toml"
    path.write_text("ipc = 2\n")
    monkeypatch.setitem(sys.modules, "tomllib", None)  # as on Python 3.10: no tomllib
    monkeypatch.setitem(sys.modules, "tomli", tomllib)  # tomli is the same parser
    assert read_toml(path, "job file") == {"ipc": 2}
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(UserError, match="on Python 3.10 needs tomli: pip install tomli"):
        read_toml(path, "job file")
