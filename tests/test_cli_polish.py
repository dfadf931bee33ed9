"""The command line's surface: help texts, start-up, completion, events beside the progress bar,
class names, doctor, array-job exit codes, and the Ray runner's provenance, events and sizing."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from igds_fast.cli import app
from igds_fast.errors import UserError

BIN = Path(sys.executable).parent


def commands() -> list[tuple[list[str], object]]:
    """(path, click command) of the root, every command and every sub-command."""
    import typer

    found = []

    def walk(cmd: object, path: list[str]) -> None:
        found.append((path, cmd))
        for name, sub in getattr(cmd, "commands", {}).items():  # typer carries its own click: no isinstance
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


# --- start-up ---


def test_importing_the_cli_loads_no_torch() -> None:
    """--help, --version and shell completion import the CLI only: torch loads inside the commands."""
    code = "import sys, igds_fast.cli; bad = [m for m in ('torch', 'numpy', 'onnx') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_version() -> None:
    from igds_fast import __version__

    res = subprocess.run([sys.executable, "-m", "igds_fast.cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"igds-fast {__version__}"


def test_shell_completion_is_on() -> None:
    res = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "--install-completion" in res.output and "--show-completion" in res.output
    script = BIN / "igds-fast"
    if not script.exists():
        pytest.skip("the igds-fast script is not installed in this environment")
    env = dict(os.environ, _IGDS_FAST_COMPLETE="complete_bash", COMP_WORDS="igds-fast dis", COMP_CWORD="1")
    res = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert "distill" in res.stdout.split(), res.stdout + res.stderr


# --- help texts ---


def test_every_help_text_is_shown_intact() -> None:
    """Rich would read '[on for CUDA]' or '[ddpm]' as a style tag and drop it: every option's help (and
    every command's) must appear word for word in its --help."""
    checked = 0
    for path, cmd in commands():
        res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "3000"})
        assert res.exit_code == 0, (path, res.output)
        shown = " ".join(res.output.split())
        texts = [(p.opts[0], p.help) for p in cmd.params if getattr(p, "help", None)]
        if cmd.help:
            texts.append(("the command's help", cmd.help.split("\n\n")[0]))
        for name, text in texts:
            want = " ".join(text.replace("\\[", "[").split())
            assert want in shown, f"{' '.join(path) or 'igds-fast'} {name}: {want!r} is not shown as written"
            checked += 1
    assert checked > 100


def test_help_texts_name_their_defaults_in_words() -> None:
    """Help texts of the options whose default is computed say it as '(default ...)'."""
    for path, want in (
        (["train-dit"], "(default on for CUDA, off for the CPU)"),
        (["bench"], "(default --batch-size)"),
        (["sample"], "(default ddpm)"),
    ):
        res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "3000"})
        assert want in " ".join(res.output.split()), path


def test_bench_help_lists_the_bench_rows() -> None:
    """cli/bench.py spells the rows out (the backend table imports torch): they stay bench.config's."""
    from igds_fast.bench.config import DEFAULT_BACKENDS, variant_names
    from igds_fast.cli import bench

    assert bench.DEFAULT_BACKENDS == DEFAULT_BACKENDS
    assert sorted(bench.VARIANTS) == sorted(variant_names())


# --- events and the progress bar ---


def screen(text: str) -> list[str]:
    """What a terminal shows for this output: each line after its carriage returns overwrote it."""
    lines = []
    for raw in text.split("\n"):
        buf: list[str] = []
        pos = 0
        for ch in raw:
            if ch == "\r":
                pos = 0
                continue
            if pos < len(buf):
                buf[pos] = ch
            else:
                buf.append(ch)
            pos += 1
        lines.append("".join(buf).rstrip())
    return lines


def test_events_are_printed_above_the_progress_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal stdout (events) and stderr (the bar) share the screen: an event is never printed
    onto the bar's line."""
    from igds_fast.jobs.events import Events, Progress

    tty = io.StringIO()
    monkeypatch.setattr(sys, "stdout", tty)
    monkeypatch.setattr(sys, "stderr", tty)
    bar = Progress(total=4, steps=2, enabled=True)
    bar.bar.mininterval = 0  # draw at every update
    events = Events(out=Path("set"))
    for i in range(2):
        for step in range(2):
            bar.on_step(2, step, None)  # a batch of 2 images
        events.emit("unit_done", chunk=i)
        bar.images_done(2)
    bar.close()
    shown = [line for line in screen(tty.getvalue()) if '"event"' in line]
    assert len(shown) == 2
    for line in shown:
        assert line.startswith("{") and json.loads(line)["event"] == "unit_done", line


def test_progress_moves_at_every_step() -> None:
    from igds_fast.jobs.events import Progress

    bar = Progress(total=6, steps=4, file=io.StringIO())
    seen = []
    for step in range(4):
        bar.on_step(3, step, None)
        seen.append(bar.bar.n)
    assert seen == pytest.approx([0.75, 1.5, 2.25, 3.0])  # a chunk of 3 images over 4 steps
    bar.images_done(3)
    assert bar.bar.n == 3
    bar.close()


def test_array_job_exit_codes() -> None:
    from igds_fast.jobs.events import EXIT_COMPLETE, EXIT_INCOMPLETE, exit_code

    shard_done = {"complete": False, "shard_complete": True}
    assert exit_code(shard_done) == EXIT_INCOMPLETE  # schedulers see 3 unless asked otherwise
    assert exit_code(shard_done, zero_when_shard_done=True) == EXIT_COMPLETE
    assert exit_code({"complete": True, "shard_complete": True}) == EXIT_COMPLETE
    assert exit_code({"complete": False}, zero_when_shard_done=True) == EXIT_INCOMPLETE


# --- classes by name ---


def test_classes_by_name_or_wnid() -> None:
    from igds_fast.subsets import resolve_classes

    got = resolve_classes(wnids="tench, English springer,GOLF BALL,n03000684")
    assert [c.wnid for c in got] == ["n01440764", "n02102040", "n03445777", "n03000684"]
    assert got[0].imagenet_index == 0 and got[0].seed_key == 0  # the same images as n01440764
    assert [c.wnid for c in resolve_classes(wnids=["english  springer"])] == ["n02102040"]
    plane = resolve_classes(wnids="airplane")[0]  # a dataset's own class folder is still a class
    assert plane.wnid == "airplane" and plane.imagenet_index < 0


@pytest.mark.parametrize(
    ("classes", "words"),
    [
        ("English springr", ["unknown class 'English springr'", "close: English springer (n02102040)"]),
        ("crane", ["shared by 2 ImageNet classes", "n02012849", "n03126707"]),
        ("tench,n01440764", ["n01440764 (tench) is listed twice"]),
    ],
)
def test_a_bad_class_is_one_line_naming_close_matches(classes: str, words: list[str]) -> None:
    from igds_fast.subsets import resolve_classes

    with pytest.raises(UserError) as e:
        resolve_classes(wnids=classes)
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_classes_file_with_names(tmp_path: Path) -> None:
    from igds_fast.subsets import resolve_classes

    f = tmp_path / "classes.txt"
    f.write_text("# Imagenette, two of them\nn01440764 tench\nEnglish springer\ngolf ball\n")
    assert [c.wnid for c in resolve_classes(classes_file=f)] == ["n01440764", "n02102040", "n03445777"]


def test_a_class_the_model_lacks_names_close_ones() -> None:
    from igds_fast.models.labels import labels_for_wnids
    from igds_fast.subsets import subset

    own = [c.wnid for c in subset("imagenette")]
    with pytest.raises(UserError, match=r"class tenhc is not in the model .*; close: n01440764 tench"):
        labels_for_wnids(own, 10, ["tenhc"])
    with pytest.raises(UserError, match=r"class n01443537 is not in the model \(goldfish; it knows 10"):
        labels_for_wnids(own, 10, ["n01443537"])
    with pytest.raises(UserError, match=r"named by folder.*close: tench \(n01440764\)"):
        labels_for_wnids([], 1000, ["tenhc"])


# --- doctor ---


def test_doctor_json_names_the_automatic_choice() -> None:
    from igds_fast.jobs.engine_cache import default_backend

    res = CliRunner().invoke(app, ["doctor", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert set(report) == {"machine", "backends", "auto", "warnings"}
    assert {r["backend"] for r in report["backends"]} >= {"eager", "compiled", "onnxruntime", "tensorrt"}
    want = default_backend("cpu")
    assert report["auto"]["cpu"] == {"backend": want.backend, "precision": want.precision, "reason": want.reason}
    text = CliRunner().invoke(app, ["doctor"]).output
    assert f"--backend auto on cpu: {want.backend} {want.precision}" in text


def test_doctor_warns_of_two_onnx_runtimes(monkeypatch: pytest.MonkeyPatch) -> None:
    from igds_fast.backends import doctor

    monkeypatch.setattr(doctor, "installed_ort_distributions", lambda: ["onnxruntime", "onnxruntime-gpu"])
    (warning,) = doctor.warnings()
    assert "onnxruntime and onnxruntime-gpu" in warning and "pip install onnxruntime-gpu" in warning


# --- Ray ---


def test_ray_workers_follow_the_cluster() -> None:
    from igds_fast.jobs.ray_runner import plan_workers

    gpus = plan_workers({"CPU": 64, "GPU": 8}, classes=100)
    assert (gpus.workers, gpus.gpus_per_worker, gpus.cpus_per_worker) == (8, 1, 0)
    assert plan_workers({"CPU": 64, "GPU": 8}, classes=3).workers == 3  # never more workers than classes
    cpus = plan_workers({"CPU": 64}, classes=100)
    assert (cpus.workers, cpus.cpus_per_worker, cpus.threads) == (64, 1, 1)
    four = plan_workers({"CPU": 64}, classes=100, threads=4)
    assert (four.workers, four.cpus_per_worker, four.threads) == (16, 4, 4)
    with pytest.raises(UserError, match="has 2 CPUs and no GPU: a worker needs 4"):
        plan_workers({"CPU": 2}, classes=10, threads=4)


def test_a_worker_that_does_not_share_out_says_so(tmp_path: Path) -> None:
    from igds_fast.jobs.ray_runner import check_probe

    (tmp_path / ".ray-probe-ab").write_text(".ray-probe-ab")
    assert check_probe(tmp_path, ".ray-probe-ab") is None
    reason = check_probe(tmp_path, ".ray-probe-cd")
    assert reason is not None and "\n" not in reason
    assert "does not see --out" in reason and "docs/cluster.md" in reason


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny pixel-space DiT naming two Imagenette classes, and a random critic for it."""
    from igds_fast.subsets import subset

    from .conftest import save_tiny_pixel_models

    return save_tiny_pixel_models(tmp_path_factory.mktemp("models"), [c.wnid for c in subset("imagenette")][:2])


def test_a_ray_run_records_its_provenance_and_relays_unit_events(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'igds-fast[ray]')")
    from igds_fast.jobs.events import Events
    from igds_fast.jobs.job import distill_job
    from igds_fast.jobs.run import run_job

    out, log = tmp_path / "set", tmp_path / "events.jsonl"
    job = distill_job(
        out,
        step={"steps": "2", "guidance_scale": 1.0, "clip_guard": 0.0},
        classes="tench,English springer",
        ipc=2,
        batch_size=1,
        denoiser=tiny_models["dit"],
        vae="none",
        critics=tiny_models["critic"],
        backend="eager",
        ray="local",
        threads=1,
    )
    events = Events(path=log, out=out)
    summary = run_job(job, events)
    events.close()
    assert summary["complete"] and summary["shard_complete"] and summary["ray_workers"] >= 1
    run = json.loads((out / "run.json").read_text())
    assert run["versions"]["torch"] and run["machine"] and run["request"]
    assert {e["ray"]["worker"] for e in run["runs"] if "ray" in e} == set(range(summary["ray_workers"]))
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    units = [e for e in lines if e["event"] == "unit_done"]
    assert len(units) == 4 and all("worker" in e and e["out"] == str(out) for e in units)
    assert not list(out.glob(".ray-probe-*"))  # the probe is removed
