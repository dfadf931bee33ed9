"""The Python API (igds_fast.distill / export / sample / evaluate / quality): lazy import, results,
the same checks as the command line, and the process settings an in-process run gets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import igds_fast
from igds_fast.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TWO = ["n01440764", "n02102040"]


def python(code: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_import_loads_no_torch_and_lists_the_api(tmp_path):
    """``import igds_fast`` is cheap: the API names resolve on first use (and only then load torch)."""
    code = (
        "import json, sys, igds_fast; before = 'torch' in sys.modules; names = dir(igds_fast); "
        "igds_fast.distill; api = 'torch' in sys.modules; "
        "print(json.dumps([before, api, names, igds_fast.__all__]))"
    )
    res = python(code, tmp_path)
    assert res.returncode == 0, res.stderr
    before, after_api, names, exported = json.loads(res.stdout)
    assert not before and not after_api  # the API module itself loads no torch: its calls do
    for name in ("distill", "export", "sample", "evaluate", "quality", "DistillResult", "StepConfig", "UserError"):
        assert name in exported and name in names
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        igds_fast.nope  # noqa: B018


def test_distill_in_a_fresh_interpreter_writes_the_set_and_says_what_it_did(tmp_path):
    """The notebook example of docs/api.md on the embedded model (2 classes, IPC 2, 10 steps), then
    the same call again (nothing to do, no weights loaded); OpenMP waits passively as under the CLI."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = (
        "import dataclasses, json, os, igds_fast\n"
        "res = igds_fast.distill(out='set', classes=['n01440764', 'n02102040'], ipc=2, steps=10, threads=1)\n"
        "again = igds_fast.distill(out='set', classes=['n01440764', 'n02102040'], ipc=2, steps=10)\n"
        "import torch\n"
        "row = lambda r: {k: str(v) for k, v in dataclasses.asdict(r).items()} | {'events': r.events}\n"
        "print(json.dumps([row(res), row(again), os.environ.get('OMP_WAIT_POLICY'), torch.get_num_threads()]))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 1, "the API prints nothing of its own (no events on stdout)"
    first, again, policy, threads = json.loads(res.stdout)
    assert policy == "PASSIVE" and threads == 1
    assert (first["out"], first["images"], first["images_made"], first["ipc"]) == ("set", "4", "4", "2")
    assert first["complete"] == "True" and first["nothing_to_do"] == "False"
    assert first["classes"] == str(TWO) and "'steps': '10'" in first["step"]
    assert first["metadata"] == "set/metadata.parquet" and first["run_json"] == "set/run.json"
    assert first["events"] == {"start": 1, "unit_done": 2, "class_done": 2, "finished": 1}
    assert float(first["seconds"]) >= float(first["sampling_seconds"]) > 0
    pngs = sorted(p.relative_to(tmp_path / "set").as_posix() for p in (tmp_path / "set").glob("n*/*.png"))
    assert len(pngs) == 4 and {p.split("/")[0] for p in pngs} == set(TWO)
    assert again["nothing_to_do"] == "True" and again["images"] == "4" and again["images_made"] == "0"


def test_bad_input_raises_user_error_before_any_output(tmp_path):
    out = tmp_path / "set"
    with pytest.raises(UserError, match="--ipc must be >= 1"):
        igds_fast.distill(out=out, classes=TWO, ipc=0)
    with pytest.raises(UserError, match="ipc in igds_fast.distill\\(\\) must be an integer"):
        igds_fast.distill(out=out, classes=TWO, ipc="2")
    with pytest.raises(UserError, match="unknown subset 'nope'"):
        igds_fast.distill(out=out, subset="nope")
    with pytest.raises(UserError, match="guidance_scale in igds_fast.distill\\(\\) must be a number, got 'strong'"):
        igds_fast.distill(out=out, classes=TWO, guidance_scale="strong")
    with pytest.raises(UserError, match="step in igds_fast.distill\\(\\) has no field 'stepz'"):
        igds_fast.distill(out=out, classes=TWO, step={"stepz": 10})
    with pytest.raises(TypeError, match="unexpected keyword argument 'ipcc'"):
        igds_fast.distill(out=out, ipcc=2)
    with pytest.raises(UserError, match="job file '.*missing.toml' does not exist"):
        igds_fast.distill(out=out, config=tmp_path / "missing.toml")
    assert not out.exists()


def test_sample_returns_the_samples_and_writes_the_grid(tmp_path):
    """``sample`` on the embedded model: unguided unless asked, like the command; the grid and the latents."""
    from PIL import Image

    res = igds_fast.sample([0, "n02102040"], out=tmp_path / "g.png", latents_out=tmp_path / "l.npy", steps=2, threads=1)
    assert res.images == 2 and res.classes == [0, 1] and res.out == tmp_path / "g.png"
    assert tuple(res.latents.shape) == (2, 4, 16, 16) and tuple(res.samples.shape) == (2, 3, 64, 64)
    assert Image.open(res.out).size[0] > 64 and res.latents_out.is_file()
    with pytest.raises(UserError, match="must end in .png"):
        igds_fast.sample([0], out=tmp_path / "g.jpg", steps=2)


def test_packaged_recipes_are_listed_and_found_from_any_directory(tmp_path, monkeypatch):
    from igds_fast.api import find_recipe

    monkeypatch.chdir(tmp_path)
    names = igds_fast.recipes()
    assert {"embedded-ort-b16", "dit-xl2-256-compiled", "dit-xl2-256-trt-fp16"} <= set(names)
    assert find_recipe("embedded-ort-b16") == find_recipe("embedded-ort-b16.toml") == names["embedded-ort-b16"]
    (tmp_path / "mine.toml").write_text('backend = "onnxruntime"\n')
    assert find_recipe("mine.toml") == Path("mine.toml")  # a file by its path
    with pytest.raises(UserError, match="neither a file nor a packaged recipe .*embedded-ort-b16"):
        find_recipe("nope")


def test_evaluate_and_quality_check_their_outputs_before_any_work(tmp_path):
    with pytest.raises(UserError, match="output folder '.*missing' does not exist"):
        igds_fast.evaluate(tmp_path, tmp_path, out=tmp_path / "missing" / "results.json")
    with pytest.raises(UserError, match="is a folder; give a file name, e.g. results.json"):
        igds_fast.evaluate(tmp_path, tmp_path, out=tmp_path)
    with pytest.raises(UserError, match="--json '.*' is a folder"):
        igds_fast.quality(tmp_path, tmp_path, tmp_path, json_out=tmp_path)
