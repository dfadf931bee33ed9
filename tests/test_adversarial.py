"""Adversarial inputs and environments: links inside --out, hostile manifests and image files, a full
disk or a file-size limit at any stage, a closed stdout, odd option values. Each test failed before
the change it covers: data was written through a link, output was silently wrong, or a traceback
(exit 1) came instead of one ``error:`` line (exit 2)."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from igds_fast import imageio
from igds_fast.errors import UserError
from igds_fast.imagefolder import read_image
from igds_fast.jobs.image_manifest import read_image_manifest as read_manifest
from igds_fast.jobs.image_manifest import write_image_manifest
from igds_fast.jobs.run import run_job as run_request
from igds_fast.jobs.verify import verify_set

from .test_distill import WNIDS, models, request, snapshot  # noqa: F401 (models is a fixture)
from .test_job_safety import events, job_args, main

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]
W0, W1 = WNIDS[:2]


@pytest.fixture(scope="module")
def finished(models, tmp_path_factory) -> tuple[Path, dict[str, str]]:  # noqa: F811
    """A finished set (2 classes, IPC 5) and its snapshot; tests work on copies."""
    out = tmp_path_factory.mktemp("finished") / "set"
    assert run_request(request(models, out))["complete"]
    return out, snapshot(out)


def copy_set(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    for lock in dst.glob(".igds-lock*"):
        lock.unlink()
    return dst


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    """``igds-fast ARGS`` in a fresh interpreter (one thread)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "igds_fast.cli", *map(str, args)], env=env, text=True, timeout=300, **kw
    )


# ------------------------------------------------------------------ no write or delete through a link


def test_lock_file_that_is_a_link_is_refused_and_its_target_kept(models, tmp_path):  # noqa: F811
    """The lock's JSON replaced the user's file the link pointed to."""
    mine = tmp_path / "thesis.txt"
    mine.write_text("my thesis")
    out = tmp_path / "set"
    out.mkdir()
    (out / ".igds-lock").symlink_to(mine)
    with pytest.raises(UserError, match=r"\.igds-lock' is a symbolic link"):
        run_request(request(models, out))
    assert mine.read_text() == "my thesis"


def test_lock_file_hard_linked_to_a_users_file_is_never_overwritten(models, tmp_path):  # noqa: F811
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes")
    out = tmp_path / "set"
    out.mkdir()
    os.link(mine, out / ".igds-lock")
    assert run_request(request(models, out, ipc=2))["complete"]
    assert mine.read_text() == "my notes"


def test_run_log_that_is_a_link_is_refused_and_its_target_kept(models, finished, tmp_path):  # noqa: F811
    """A rerun appended its run-log line to the file the link pointed to."""
    out = copy_set(finished[0], tmp_path / "set")
    mine = tmp_path / "diary.txt"
    mine.write_text("dear diary\n")
    (out / ".igds-runs.jsonl").unlink()
    (out / ".igds-runs.jsonl").symlink_to(mine)
    (out / W0 / "00001.png").unlink()  # a repair: the rerun has a line to log
    with pytest.raises(UserError, match=r"\.igds-runs\.jsonl' is a symbolic link"):
        run_request(request(models, out))
    assert mine.read_text() == "dear diary\n"


def test_class_folder_that_is_a_link_is_refused_and_its_target_kept(models, finished, tmp_path):  # noqa: F811
    """A rerun wrote its images into the folder the link pointed to (the user's 00001.png replaced)."""
    out = copy_set(finished[0], tmp_path / "set")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "00001.png").write_bytes(b"my photo")
    shutil.rmtree(out / W0)
    (out / W0).symlink_to(photos, target_is_directory=True)
    with pytest.raises(UserError, match=rf"class folder '.*{W0}' is a symbolic link"):
        run_request(request(models, out))
    assert sorted(p.name for p in photos.iterdir()) == ["00001.png"]
    assert (photos / "00001.png").read_bytes() == b"my photo"
    with pytest.raises(UserError, match="is a symbolic link"):  # and with --overwrite: nothing deleted there
        run_request(request(models, out, ipc=3, overwrite=True))
    assert (photos / "00001.png").read_bytes() == b"my photo"
    with pytest.raises(UserError, match="is a symbolic link"):  # verify never vouches for it either
        verify_set(out)


def test_overwrite_deletes_only_the_images_the_records_list(models, tmp_path, monkeypatch):  # noqa: F811
    """--overwrite deleted every NNNNN.png, the user's own and altered ones included."""
    out = tmp_path / "set"
    assert run_request(request(models, out, ipc=4))["complete"]
    (out / W0 / "00007.png").write_bytes(b"mine, not the run's")
    (out / W0 / "00003.png").write_bytes(b"edited by me")  # listed, but no longer the bytes recorded
    assert run_request(request(models, out, ipc=2, overwrite=True))["complete"]
    assert (out / W0 / "00007.png").read_bytes() == b"mine, not the run's"
    assert (out / W0 / "00003.png").read_bytes() == b"edited by me"
    assert not (out / W0 / "00002.png").exists() and not (out / W1 / "00002.png").exists()  # listed: gone
    assert len(read_manifest(out / "metadata.parquet")) == 4


def test_overwrite_deletes_the_images_of_a_unit_cut_short(models, tmp_path, monkeypatch):  # noqa: F811
    """Images written before their unit's record (a crash) are the tool's too: listed as pending."""
    from igds_fast.jobs import unit_writer

    out = tmp_path / "set"
    real = unit_writer.write_atomic

    def crash_at_second_record(path, data):
        if path.name == f".unit-{W0}-0001.json":
            raise OSError(errno.EIO, "Input/output error")
        real(path, data)

    monkeypatch.setattr(unit_writer, "write_atomic", crash_at_second_record)
    with pytest.raises(UserError, match="cannot write class"):
        run_request(request(models, out, ipc=4))
    monkeypatch.setattr(unit_writer, "write_atomic", real)
    assert (out / W0 / "00003.png").exists()  # written, never committed
    assert run_request(request(models, out, ipc=2, overwrite=True))["complete"]
    assert sorted(p.name for p in (out / W0).iterdir()) == ["00000.png", "00001.png"]


def test_dangling_out_link_is_named_as_such(models, tmp_path):  # noqa: F811
    """A dangling --out link gave "cannot write to --out ...: File exists"."""
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "gone")
    with pytest.raises(UserError, match="is a dangling symbolic link"):
        run_request(request(models, out))
    code, _, stderr = main(*job_args(models, out))
    assert code == 2 and "dangling symbolic link" in one_error_line(stderr)


def test_out_that_is_a_link_to_a_folder_is_followed(models, finished, tmp_path):  # noqa: F811
    """The user named the link as --out: the set goes into the folder it points to."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "out").symlink_to(real, target_is_directory=True)
    assert run_request(request(models, tmp_path / "out"))["complete"]
    assert snapshot(real) == finished[1]


def test_image_that_is_a_link_is_never_written_through(models, finished, tmp_path):  # noqa: F811
    out = copy_set(finished[0], tmp_path / "set")
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"my picture")
    (out / W0 / "00002.png").unlink()
    (out / W0 / "00002.png").symlink_to(mine)
    with pytest.raises(UserError, match="00002.png' is a symbolic link"):
        run_request(request(models, out))
    assert mine.read_bytes() == b"my picture"


def test_random_real_class_folder_that_is_a_link_is_refused(tmp_path):
    """The random-real baseline wrote its picks into the folder a class-folder link pointed to."""
    from igds_fast.jobs.baseline import random_real
    from igds_fast.subsets import class_info

    write_pngs(tmp_path / "data" / W0, 3, 0)
    assert random_real(tmp_path / "data", [class_info(W0)], 2, 0, tmp_path / "rr")
    run = json.loads((tmp_path / "rr" / "run.json").read_text())
    (tmp_path / "rr" / "run.json").write_text(json.dumps(run | {"complete": False}))  # an interrupted run
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.rmtree(tmp_path / "rr" / W0)
    (tmp_path / "rr" / W0).symlink_to(photos, target_is_directory=True)
    with pytest.raises(UserError, match="is a symbolic link"):
        random_real(tmp_path / "data", [class_info(W0)], 2, 0, tmp_path / "rr")
    assert not list(photos.iterdir())


def test_evaluate_results_lock_that_is_a_link_is_refused_and_its_target_kept(tmp_path):
    """evaluate's `<out>.lock` was opened for writing: the user's file a link there pointed to was emptied."""
    from igds_fast.evaluation.train import lock_path, locked

    mine = tmp_path / "mine.txt"
    mine.write_text("my results")
    lock_path(tmp_path / "results.json").symlink_to(mine)
    with pytest.raises(UserError, match=r"results\.json\.lock' is a symbolic link"), locked(tmp_path / "results.json"):
        pass
    assert mine.read_text() == "my results"


# ------------------------------------------------------------------ no silent wrong output


def test_verify_refuses_manifest_rows_outside_the_set(finished, tmp_path):
    """A manifest-only set whose rows point outside its folder was reported intact."""
    out = copy_set(finished[0], tmp_path / "set")
    for hidden in [*out.glob(".unit-*"), out / ".igds-job.json"]:
        hidden.unlink()
    assert verify_set(out).ok
    secret = tmp_path / "secret.png"
    shutil.copy(out / W0 / "00000.png", secret)
    rows = read_manifest(out / "metadata.parquet")
    rows[0]["path"] = "../secret.png"
    write_image_manifest(rows, out / "metadata.parquet")
    with pytest.raises(UserError, match=r"lists '\.\./secret\.png', which is not a file inside the set"):
        verify_set(out)
    rows[0]["path"] = str(secret)  # an absolute path
    write_image_manifest(rows, out / "metadata.parquet")
    with pytest.raises(UserError, match="not a file inside the set"):
        verify_set(out)


def png_16bit_grey(path: Path, value: int, side: int = 8) -> None:
    Image.fromarray(np.full((side, side), value, dtype=np.uint16)).save(path)


def test_16_bit_and_other_modes_are_read_as_they_look(tmp_path):
    """A 16-bit grey PNG was read as almost white (PIL clips at 255)."""
    png_16bit_grey(tmp_path / "grey16.png", 32768)
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    assert (read_image(tmp_path / "grey16.png") == 128).all()
    png_16bit_grey(tmp_path / "dark16.png", 1000)
    assert (read_image(tmp_path / "dark16.png") == 4).all()
    Image.new("LA", (4, 4), (100, 50)).save(tmp_path / "la.png")
    assert (read_image(tmp_path / "la.png") == 100).all()
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.save(tmp_path / "p.png")
    assert (read_image(tmp_path / "p.png") == [10, 20, 30]).all()
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert (read_image(tmp_path / "c.jpg") >= 250).all()
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(UserError, match=r"f\.tif': 32-bit float pixels have no fixed range"):
        read_image(tmp_path / "f.tif")


def write_pngs(folder: Path, n: int, seed: int, side: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.mark.parametrize("name", ["dog house", "-dash", "café", "new\nline"])
def test_evaluate_never_drops_a_class_folder(tmp_path, name):
    """Folders whose names did not match a pattern were skipped: a 2-class accuracy for a 6-class set."""
    for split, n in (("train", 2), ("val", 2)):
        for k, cls in enumerate(["airplane", "cat", name]):
            write_pngs(tmp_path / split / cls, n, k)
    code, _, stderr = main(
        "evaluate", "--train", tmp_path / "train", "--val", tmp_path / "val", "--net", "convnet3",
        "--resolution", "32", "--seeds", "1", "--epochs", "1", "--out", tmp_path / "r.json",
    )  # fmt: skip
    line = one_error_line(stderr)
    assert code == 2 and repr(name)[1:-1] in line and "rename it" in line
    assert not (tmp_path / "r.json").exists()


def bomb_png(path: Path, side: int) -> None:
    """A PNG of ``side``² black grey pixels: a few hundred kB that decode to ``side``² bytes."""
    raw = zlib.compress(b"".join(b"\x00" + bytes(side) for _ in range(side)), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def test_quality_refuses_a_decompression_bomb_in_one_line(finished, tmp_path):
    """A 144 Mpx PNG among the samples gave PIL's warning (three lines) and, with --resolution, gigabytes
    of decoding after the judge's training; now it is refused before the judge trains."""
    samples = copy_set(finished[0], tmp_path / "samples")
    bomb_png(samples / W0 / "00003.png", 12000)
    for split in ("train", "val"):
        for k, w in enumerate((W0, W1)):
            write_pngs(tmp_path / split / w, 6, k, side=32)
    for extra in ([], ["--resolution", "32"]):
        code, _, stderr = main(
            "quality", "--samples", samples, "--real-train", tmp_path / "train", "--real-val", tmp_path / "val",
            "--epochs", "1", "--cache-dir", tmp_path / "cache", *extra,
        )  # fmt: skip
        assert code == 2 and "decompression bomb" in one_error_line(stderr)


# ------------------------------------------------------------------ a full disk, a file-size limit


@pytest.mark.parametrize("victim", ["metadata.parquet", f".igds-contact-{W1}.png", "run.json"])
def test_disk_full_while_assembling_is_one_line_and_the_rerun_finishes(models, finished, tmp_path, monkeypatch, victim):  # noqa: F811
    """ENOSPC while the metadata, a contact sheet or run.json was written: a traceback (exit 1)."""
    real = imageio._create_temp

    def full(tmp: Path) -> int:
        if tmp.name.startswith(f".{victim}."):
            return os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
        return real(tmp)

    monkeypatch.setattr(imageio, "_create_temp", full)
    out = tmp_path / "set"
    with pytest.raises(UserError, match=rf"disk full while writing '.*{victim}': free space and rerun"):
        run_request(request(models, out))
    assert not list(out.glob("**/*.tmp")) and len(list(out.glob(".unit-*.json"))) == 6  # every unit kept
    monkeypatch.setattr(imageio, "_create_temp", real)
    summary = run_request(request(models, out))
    assert summary["complete"] and summary["images_made"] == 0 and snapshot(out) == finished[1]


def test_file_size_limit_while_assembling_is_one_line_and_the_rerun_finishes(models, finished, tmp_path):  # noqa: F811
    """RLIMIT_FSIZE (ulimit -f) below the metadata's size: EFBIG, a traceback (exit 1)."""
    out = tmp_path / "set"

    def limit() -> None:  # units' files are < 2 kB here; metadata.parquet is ~6 kB
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    res = cli(*job_args(models, out, "--clip-guard", "0"), capture_output=True, preexec_fn=limit)
    assert res.returncode == 2 and "file size limit reached" in one_error_line(res.stderr)
    assert len(list(out.glob(".unit-*.json"))) == 6 and not (out / "metadata.parquet").exists()
    assert events(res.stdout)[-1]["event"] == "error"
    res = cli(*job_args(models, out, "--clip-guard", "0"), capture_output=True)
    assert res.returncode == 0, res.stderr
    assert events(res.stdout)[-1]["images_made"] == 0 and snapshot(out) == finished[1]


# ------------------------------------------------------------------ pipes, logs, odd values


def test_closed_stdout_never_stops_the_job(models, finished, tmp_path):  # noqa: F811
    """`igds-fast distill ... | head -1` stopped the job after the first images, exit 1, stderr empty."""
    out = tmp_path / "set"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    args = [sys.executable, "-m", "igds_fast.cli", *job_args(models, out, "--clip-guard", "0")]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
        assert json.loads(proc.stdout.readline())["event"] == "start"
        proc.stdout.close()  # the reader goes away, as `head -1` does
        stderr = proc.stderr.read().decode()
        code = proc.wait(timeout=300)
    assert code == 0 and stderr.strip() == ""
    assert snapshot(out) == finished[1]


def test_log_json_to_stdout_writes_each_event_once(models, finished, tmp_path):  # noqa: F811
    """--log-json /dev/stdout corrupted the first line and wrote `finished` twice; `-` made a file '-'."""
    out = tmp_path / "set"
    log = tmp_path / "stdout.txt"
    with open(log, "w") as f:  # stdout is a file (not opened for appending), as `> file` makes it
        res = cli(*job_args(models, out, "--clip-guard", "0", "--log-json", "/dev/stdout"), stdout=f, cwd=tmp_path)
    assert res.returncode == 0
    evs = events(log.read_text())
    kinds = [e["event"] for e in evs]
    assert kinds[0] == "start" and kinds.count("finished") == 1 and kinds[-1] == "finished"
    code, stdout, _ = main(*job_args(models, out, "--clip-guard", "0", "--log-json", "-"))
    assert code == 0 and [e["event"] for e in events(stdout)] == ["start", "finished"]
    assert not (Path.cwd() / "-").exists() and not (tmp_path / "-").exists()


def test_control_characters_in_an_option_are_shown_escaped(models, tmp_path):  # noqa: F811
    """A newline in --classes gave a two-line error."""
    code, _, stderr = main("distill", "--out", tmp_path / "o", "--classes", "tench\nfoo\x1b[31m", "--backend", "eager")
    line = one_error_line(stderr)
    assert code == 2 and "foo\\x1b[31m" in line and "\\n" in line
