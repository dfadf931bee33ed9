"""Evaluation: networks, ImageFolder reading, augmentation, training, random-real baseline, report, CLI."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from igds_fast import machine
from igds_fast.augment import random_resized_crop_flip
from igds_fast.cli import main
from igds_fast.errors import UserError
from igds_fast.evaluation.data import cutmix
from igds_fast.evaluation.networks import build_net, count_parameters
from igds_fast.evaluation.report import README_BEGIN, README_END, write_report
from igds_fast.evaluation.train import (
    check_precision,
    epochs_for_ipc,
    evaluate_set,
    partial_path,
    reading_epochs,
    train_net,
    write_results,
)
from igds_fast.imagefolder import load_split, match_classes, scan_image_folder
from igds_fast.jobs.baseline import random_real
from igds_fast.jobs.image_manifest import MANIFEST_SCHEMA
from igds_fast.jobs.image_manifest import read_image_manifest as read_manifest
from igds_fast.jobs.image_manifest import write_image_manifest as write_manifest
from igds_fast.subsets import NO_IMAGENET_INDEX, class_info, resolve_classes

from .conftest import DATA_ROOT

DATA = DATA_ROOT / "imagenette-64"
WNIDS = ["n03888257", "n01440764"]  # deliberately not in sorted order
DOCS = Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"test data not found at {DATA}")

torch.set_num_threads(1)


# --- parameter counts from the layer formulas, independent of the module code ---


def conv(cin: int, cout: int, k: int, bias: bool = False) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def norm(c: int) -> int:  # affine GroupNorm / BatchNorm: a weight and a bias per channel
    return 2 * c


def linear(cin: int, cout: int) -> int:
    return cin * cout + cout


def convnet_params(depth: int, res: int, classes: int) -> int:
    blocks = conv(3, 128, 3, bias=True) + (depth - 1) * conv(128, 128, 3, bias=True) + depth * norm(128)
    side = res // 2**depth
    return blocks + linear(128 * side * side, classes)


def resnet_params(stem_kernel: int, blocks: tuple[int, ...], classes: int) -> int:
    total, cin = conv(3, 64, stem_kernel) + norm(64), 64
    for width, n in zip((64, 128, 256, 512), blocks, strict=True):
        for b in range(n):
            c = cin if b == 0 else width
            total += conv(c, width, 3) + conv(width, width, 3) + 2 * norm(width)
            if c != width:  # 1x1 projection shortcut
                total += conv(c, width, 1) + norm(width)
        cin = width
    return total + linear(512, classes)


def expected_params(name: str, res: int, classes: int = 10) -> int:
    if name.startswith("convnet"):
        return convnet_params(int(name[-1]), res, classes)
    if name == "resnetap10":
        return resnet_params(7 if res > 128 else 3, (1, 1, 1, 1), classes)
    return resnet_params(7, (2, 2, 2, 2), classes)


CASES = [("convnet3", 32), ("convnet3", 224), ("convnet6", 64), ("convnet6", 224)]
CASES += [("resnetap10", 32), ("resnetap10", 112), ("resnetap10", 224), ("resnet18", 32), ("resnet18", 224)]


@pytest.mark.parametrize("name,res", CASES)
def test_network_output_shape_and_parameter_count(name: str, res: int) -> None:
    net = build_net(name, 10, res).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 3, res, res)).shape == (2, 10)
    assert count_parameters(net) == expected_params(name, res)


def test_resnet18_matches_torchvision_count() -> None:
    assert count_parameters(build_net("resnet18", 1000, 224)) == 11_689_512  # torchvision's published count


def test_documented_parameter_counts() -> None:
    """docs/evaluation.md states counts at 10 classes for 32 px and 224 px; they must be the real ones."""
    text = DOCS.read_text()
    for name in ("convnet3", "convnet6", "resnetap10", "resnet18"):
        row = re.search(rf"^\| {name} \|([^|]*)\|([^|]*)\|", text, re.M)
        assert row, f"no parameter-count row for {name}"
        for res, cell in zip((32, 224), row.groups(), strict=True):
            if name == "convnet6" and res == 32:
                assert cell.strip().startswith("—")  # needs 64 px
                continue
            assert int(cell.strip().replace(",", "")) == expected_params(name, res), (name, res)


def test_too_small_input_is_a_user_error() -> None:
    with pytest.raises(UserError, match="at least 64 px"):
        build_net("convnet6", 10, 32)
    with pytest.raises(UserError, match="unknown network"):
        build_net("vgg11", 10, 32)


@pytest.mark.parametrize(
    "ipc,classes,epochs",
    [(1, 10, 3000), (10, 10, 2000), (11, 10, 1500), (50, 10, 1500), (100, 10, 1000)]
    + [(500, 10, 500), (501, 10, 300), (10, 100, 1333), (50, 100, 1000)],
)
def test_epochs_for_ipc(ipc: int, classes: int, epochs: int) -> None:
    assert epochs_for_ipc(ipc, classes) == epochs


# --- augmentation ---


def test_full_crop_is_identity_or_mirror() -> None:
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = random_resized_crop_flip(images, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    flipped = [torch.allclose(o, x.float().flip(-1), atol=1e-3) for o, x in zip(out, images, strict=True)]
    kept = [torch.allclose(o, x.float(), atol=1e-3) for o, x in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < len(images)  # both happen


def test_crop_is_deterministic_per_generator() -> None:
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    a, b, c = (random_resized_crop_flip(images, torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cutmix_kept_fraction_matches_the_pasted_box() -> None:
    images = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 16, 16).contiguous()  # image i is all i
    for seed in range(5):
        mixed, perm, kept = cutmix(images, torch.Generator().manual_seed(seed))
        for i in range(8):
            if perm[i] != i:
                own = (mixed[i] == i).float().mean().item()
                assert own == pytest.approx(kept)
                assert ((mixed[i] == i) | (mixed[i] == perm[i].item())).all()


# --- ImageFolder reading ---


def make_folder(root: Path, wnids: list[str], n: int, split: str = "train", skip: int = 0) -> Path:
    """A tiny ImageFolder with ``n`` real images per class copied from the shared data."""
    for wnid in wnids:
        (root / wnid).mkdir(parents=True)
        for src in sorted((DATA / split / wnid).iterdir())[skip : skip + n]:
            shutil.copy(src, root / wnid / src.name)
    return root


@needs_data
def test_labels_follow_the_given_wnid_order(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", WNIDS, 2)
    (root / "contact_sheets").mkdir()  # a folder of images is a class: outside the list, it is named
    shutil.copy(next((root / WNIDS[0]).iterdir()), root / "contact_sheets" / "sheet.jpg")
    with pytest.raises(UserError, match="outside the class list: contact_sheets"):
        match_classes(WNIDS, set(scan_image_folder(root, "train")), set(WNIDS))
    shutil.rmtree(root / "contact_sheets")
    files = scan_image_folder(root, "train")
    classes = match_classes(WNIDS, set(files), set(files))
    images, labels = load_split(files, classes, 16)
    assert classes == WNIDS
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 1, 1]  # n03888257 first although it sorts last


def test_class_sets_must_match() -> None:
    with pytest.raises(UserError, match="only in train: n01; only in val: n03"):
        match_classes(None, {"n01", "n02"}, {"n02", "n03"})
    with pytest.raises(UserError, match="missing from val: n02"):
        match_classes(["n01", "n02"], {"n01", "n02"}, {"n01", "n09"})
    assert match_classes(["n02"], {"n02"}, {"n01", "n02"}) == ["n02"]  # a larger val serves a subset


# --- the random-real baseline ---


def set_hashes(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.png"))}


@needs_data
def test_random_real_is_deterministic_per_seed(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", WNIDS, 8)
    classes = [class_info(w) for w in WNIDS]
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert random_real(data, classes, 3, seed, tmp_path / name)
    a, b, c = (set_hashes(tmp_path / n) for n in "abc")
    assert sorted(a) == [f"{w}/{i:05d}.png" for w in sorted(WNIDS) for i in range(3)]  # IPC per class
    assert a == b and a != c
    rows = read_manifest(tmp_path / "a" / "metadata.parquet")
    assert {r["path"]: r["sha256"] for r in rows} == a
    assert {r["class_index"] for r in rows} == {701, 0}
    assert all(r["backend"] == "real" and r["log_q"] is None for r in rows)
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["kind"] == "random-real" and run["ipc"] == 3 and run["classes"] == WNIDS
    assert run["resolution"] == 64 and run["complete"] is True


@needs_data
def test_random_real_rerun_is_a_no_op_and_refuses_another_run(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", WNIDS, 4)
    classes = [class_info(w) for w in WNIDS]
    out = tmp_path / "out"
    assert random_real(data, classes, 2, 0, out)
    stamp = (out / "run.json").stat().st_mtime_ns
    assert not random_real(data, classes, 2, 0, out)
    assert (out / "run.json").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="holds a different run"):
        random_real(data, classes, 3, 0, out)
    # an interrupted run (run.json still says incomplete) is finished by the same command
    finished = set_hashes(out)
    run = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps(run | {"complete": False}))
    (out / WNIDS[0] / "00001.png").unlink()
    assert random_real(data, classes, 2, 0, out)
    assert set_hashes(out) == finished
    with pytest.raises(UserError, match=r"fewer than 5 images in class n03888257 \(4\)"):
        random_real(data, classes, 5, 0, tmp_path / "other")


# --- manifest ---


def manifest_row(**changes: object) -> dict:
    row = {"wnid": "n01440764", "class_index": 0, "sample_index": 0, "seed": 2**62, "path": "n01440764/0.png"}
    row |= {"sha256": "00", "log_q": -0.5, "h2": 1.25, "backend": "eager", "engine_id": "abc"}
    return row | changes


def test_manifest_round_trip_and_checks(tmp_path: Path) -> None:
    rows = [manifest_row(), manifest_row(sample_index=1, log_q=None, h2=None, engine_id=None)]
    write_manifest(rows, tmp_path / "m.parquet")
    assert read_manifest(tmp_path / "m.parquet") == [r | {"saturation": None, "pixel_std": None} for r in rows]
    with pytest.raises(ValueError, match=r"missing columns \['h2'\]"):
        write_manifest([{k: v for k, v in manifest_row().items() if k != "h2"}], tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="'sha256' must not be null"):
        write_manifest([manifest_row(sha256=None)], tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()
    assert MANIFEST_SCHEMA.field("seed").type == "int64"


# --- evaluate end to end, through the CLI ---


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["igds-fast", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


RESULT_FIELDS = {"method", "ipc", "net", "resolution", "seeds", "accuracies", "mean", "std", "epochs"}
RESULT_FIELDS |= {"epochs_protocol", "scaled_down", "train_dir", "val_dir", "classes", "versions", "timings"}


@needs_data
def test_tiny_evaluate_run_writes_results(tmp_path: Path, monkeypatch, capsys) -> None:
    make_folder(tmp_path / "data", WNIDS, 4)
    make_folder(tmp_path / "val", WNIDS, 4, split="val")
    rr = tmp_path / "rr"
    code, text = run_cli(
        monkeypatch, capsys, "baseline", "random-real", "--data", tmp_path / "data", "--ipc", 2, "--out", rr
    )
    assert code == 2 and "lacks classes n02102040" in text  # imagenette by default: 8 classes are missing
    code, text = run_cli(
        monkeypatch,
        capsys,
        "baseline",
        "random-real",
        "--data",
        tmp_path / "data",
        "--ipc",
        2,
        "--out",
        rr,
        "--classes",
        ",".join(WNIDS),
    )
    assert code == 0, text
    out = tmp_path / "results.json"
    code, text = run_cli(
        monkeypatch,
        capsys,
        "evaluate",
        "--train",
        rr,
        "--val",
        tmp_path / "val",
        "--net",
        "convnet3",
        "--resolution",
        16,
        "--seeds",
        2,
        "--epochs",
        2,
        "--out",
        out,
    )
    assert code == 0, text
    result = json.loads(out.read_text())
    assert set(result) >= RESULT_FIELDS
    assert result["method"] == "random-real" and result["ipc"] == 2 and result["classes"] == WNIDS
    assert result["seeds"] == [0, 1] and len(result["accuracies"]) == 2
    assert all(0 <= a <= 1 for a in result["accuracies"])
    assert result["epochs"] == 2 and result["epochs_protocol"] == 2000 and result["scaled_down"]
    assert result["num_val"] == 8

    code, text = run_cli(monkeypatch, capsys, "report", out, "--out", tmp_path / "r.md", "--plot", tmp_path / "p.png")
    assert code == 0, text
    assert "| random real images |" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


@needs_data
def test_training_is_deterministic_per_seed(tmp_path: Path) -> None:
    files = scan_image_folder(make_folder(tmp_path / "d", WNIDS, 3), "train")
    images, labels = load_split(files, WNIDS, 16)
    a, b, c = (train_net("convnet3", images, labels, 2, 2, seed, progress=False).state_dict() for seed in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@needs_data
@pytest.mark.parametrize("problem", ["mismatch", "empty", "corrupt", "missing"])
def test_bad_inputs_exit_2_naming_the_problem(tmp_path: Path, monkeypatch, capsys, problem: str) -> None:
    train = make_folder(tmp_path / "train", WNIDS, 2)
    val = make_folder(tmp_path / "val", WNIDS, 2, split="val")
    if problem == "mismatch":
        shutil.rmtree(val / WNIDS[0])
        make_folder(val, ["n02102040"], 2, split="val")
        expected = "only in train: n03888257; only in val: n02102040"
    elif problem == "empty":
        (train / "n02979186").mkdir()
        expected = "n02979186' has no images"
    elif problem == "corrupt":
        bad = val / WNIDS[1] / "broken.jpg"
        bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        expected = f"cannot read image '{bad}'"
    else:
        val = tmp_path / "nowhere"
        expected = "val folder '.*nowhere' does not exist"
    args = ["evaluate", "--train", train, "--val", val, "--net", "convnet3", "--resolution", 16, "--seeds", 1]
    code, text = run_cli(monkeypatch, capsys, *args, "--epochs", 1, "--out", tmp_path / "r.json")
    assert code == 2
    assert re.search(expected, text), text
    assert len(text.strip().splitlines()) == 1  # one line, no traceback
    assert not (tmp_path / "r.json").exists()


def test_report_refuses_duplicates(tmp_path: Path) -> None:
    base = {"method": "igds", "ipc": 10, "net": "convnet6", "resolution": 224, "mean": 0.5, "std": 0.01}
    base |= {"accuracies": [0.49, 0.51], "epochs": 2000, "epochs_protocol": 2000}
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text(json.dumps(base))
    with pytest.raises(UserError, match="both hold igds convnet6@224px IPC 10"):
        write_report([tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "r.md", None)
    write_report([tmp_path / "a.json"], tmp_path / "r.md", None)
    assert "| IGDS (default) | 50.0 ± 1.0 [2 seeds] |" in (tmp_path / "r.md").read_text()


def test_report_shows_best_epoch_and_fills_the_readme_block(tmp_path: Path) -> None:
    r = {"method": "igds", "ipc": 10, "net": "convnet3", "resolution": 32, "mean": 0.4, "std": 0.01}
    r |= {"accuracies": [0.39, 0.40, 0.41], "epochs": 2000, "epochs_protocol": 2000, "best_mean": 0.42}
    r |= {"precision": "bf16"}
    (tmp_path / "a.json").write_text(json.dumps(r))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{README_BEGIN}\nold table\n{README_END}\nafter\n")
    write_report([tmp_path / "a.json"], tmp_path / "r.md", None, readme)
    table = (tmp_path / "r.md").read_text()
    assert "| IGDS (default) | 40.0 ± 1.0 (42.0) |" in table and "bf16" in table  # 3 seeds: no seed count in the cell
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{README_END}\nafter\n")
    assert (
        "old table" not in text and "| IGDS (default) | 40.0 ± 1.0 (42.0) |" in text and "#### convnet3 @ 32 px" in text
    )
    readme.write_text("no markers\n")
    with pytest.raises(UserError, match="needs the two results markers"):
        write_report([tmp_path / "a.json"], tmp_path / "r.md", None, readme)
    assert readme.read_text() == "no markers\n"


# --- evaluate: best epoch, bf16, resuming and extending seeds ---


def test_test_epochs_are_evenly_spread_and_end_at_the_last() -> None:
    assert reading_epochs(3) == [1, 2, 3]
    assert reading_epochs(2000) == list(range(200, 2001, 200))
    assert reading_epochs(25)[-1] == 25 and len(reading_epochs(25)) <= 13


def test_precision_is_checked() -> None:
    with pytest.raises(UserError, match="--precision must be one of fp32, bf16, got 'fp16'"):
        check_precision("fp16")


@needs_data
def test_evaluate_resumes_extends_and_refuses_another_run(tmp_path: Path) -> None:
    train = make_folder(tmp_path / "train", WNIDS, 2)
    val = make_folder(tmp_path / "val", WNIDS, 2, split="val")
    out = tmp_path / "r.json"
    partial = partial_path(out)
    kw = {"net": "convnet3", "resolution": 16, "epochs": 2, "progress": False, "out": out}

    first = evaluate_set(train, val, seeds=[0], **kw)  # as if stopped after seed 0: only the partial file
    assert partial.is_file() and not out.exists()
    seed0 = first["runs"][0]
    assert [epoch for epoch, _ in seed0["curve"]] == [1, 2] and seed0["final"] == seed0["curve"][-1][1]
    assert seed0["best"] >= seed0["final"] and seed0["best_epoch"] in (1, 2)

    resumed = evaluate_set(train, val, seeds=[0, 1], **kw)
    assert resumed["runs"][0] == seed0  # not trained again (its seconds too)
    assert resumed["seeds"] == [0, 1] and resumed["accuracies"][0] == seed0["final"]
    write_results(out, resumed)
    assert out.is_file() and not partial.exists()

    fewer = evaluate_set(train, val, seeds=[0], **kw)  # fewer seeds asked: none of the file's is dropped
    assert fewer["runs"] == resumed["runs"] and fewer["mean"] == resumed["mean"]

    with pytest.raises(UserError, match="other settings"):
        evaluate_set(train, val, seeds=[0], **(kw | {"epochs": 3}))
    with pytest.raises(UserError, match="other settings"):
        evaluate_set(train, val, seeds=[0], **(kw | {"precision": "bf16"}))


def train_only_seed(job: tuple) -> dict | None:
    """One ``--only-seed`` process of the test below (module level: spawned processes import it)."""
    train, val, out, seed, kw = job
    return evaluate_set(train, val, seeds=[0, 1, 2], out=out, only=[seed], **kw)


def test_only_seed_processes_share_one_results_file(tmp_path: Path) -> None:
    """--only-seed: seeds trained apart (here two processes at once) gather in one partial file; the
    results appear only once every seed is in, and equal a sequential run's."""
    train = make_folder(tmp_path / "train", WNIDS, 2)
    val = make_folder(tmp_path / "val", WNIDS, 2, split="val")
    kw = {"net": "convnet3", "resolution": 16, "epochs": 2, "progress": False}
    out = tmp_path / "r.json"
    with pytest.raises(UserError, match="--only-seed 3 is not one of seeds 0..2"):
        evaluate_set(train, val, seeds=[0, 1, 2], out=out, only=[3], **kw)

    assert evaluate_set(train, val, seeds=[0, 1, 2], out=out, only=[2], **kw) is None
    assert [r["seed"] for r in json.loads(partial_path(out).read_text())["runs"]] == [2]
    # processes, as in use: threads would share torch's global RNG and so not be deterministic per seed
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        both = list(pool.map(train_only_seed, [(train, val, out, k, kw) for k in (0, 1)]))
    assert sum(r is None for r in both) <= 1  # the one that finished last saw every seed
    gathered = next(r for r in both if r is not None)
    assert gathered["seeds"] == [0, 1, 2]

    sequential = evaluate_set(train, val, seeds=[0, 1, 2], out=tmp_path / "seq.json", **kw)
    assert gathered["accuracies"] == sequential["accuracies"]


@needs_data
def test_bf16_evaluate_gives_finite_accuracies(tmp_path: Path) -> None:
    train = make_folder(tmp_path / "train", WNIDS, 2)
    val = make_folder(tmp_path / "val", WNIDS, 2, split="val")
    r = evaluate_set(train, val, "convnet3", 16, [0], epochs=2, progress=False, precision="bf16")
    assert r["precision"] == "bf16" and 0 <= r["accuracies"][0] <= 1 and 0 <= r["best_accuracies"][0] <= 1


# --- classes named by folder (a dataset that is not ImageNet) ---


def write_pngs(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_class_folders_named_by_name(tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    write_pngs(root / "airplane", 3, 0)
    write_pngs(root / "cat", 3, 1)
    (root / "notes").mkdir()  # no images: not a class
    (root / "my notes").mkdir()
    write_pngs(root / ".tmp", 1, 3)  # hidden: an interrupted write, not a class
    assert sorted(scan_image_folder(root, "train")) == ["airplane", "cat"]
    write_pngs(root / "n01440764", 2, 2)  # WNID and named class folders side by side: all are classes
    assert sorted(scan_image_folder(root, "train")) == ["airplane", "cat", "n01440764"]
    shutil.rmtree(root / "n01440764")
    (root / "n01443537").mkdir()
    with pytest.raises(UserError, match="n01443537' has no images"):  # a WNID folder must hold images
        scan_image_folder(root, "train")
    (root / "n01443537").rmdir()
    write_pngs(root / "sea lion", 1, 4)  # never skipped: refused, by name
    with pytest.raises(UserError, match="class folder '.*sea lion' holds images but its name is not"):
        scan_image_folder(root, "train")
    shutil.rmtree(root / "sea lion")

    plane, cat = resolve_classes(wnids="airplane,cat")
    assert (plane.wnid, plane.name, plane.imagenet_index) == ("airplane", "airplane", NO_IMAGENET_INDEX)
    assert plane.seed_key >= 1000 and plane.seed_key != cat.seed_key  # never an ImageNet-1k index
    assert plane.seed_key == class_info("airplane").seed_key and class_info("n01440764").seed_key == 0
    with pytest.raises(UserError, match="neither a WNID"):
        class_info("../etc")
    with pytest.raises(UserError, match="unknown WNID 'n99999999'"):
        class_info("n99999999")

    assert random_real(root, [plane, cat], 2, 0, tmp_path / "rr")
    assert sorted(str(p.relative_to(tmp_path / "rr")) for p in (tmp_path / "rr").rglob("*.png")) == [
        "airplane/00000.png",
        "airplane/00001.png",
        "cat/00000.png",
        "cat/00001.png",
    ]


def test_a_named_class_reaches_only_a_model_that_names_it() -> None:
    from igds_fast.models.labels import labels_for_wnids

    assert labels_for_wnids(["cat", "airplane"], 2, ["airplane"]) == [1]  # a model trained on named folders
    assert labels_for_wnids([], 1000, ["n01440764"]) == [0]  # an ImageNet-1k model: the ImageNet index
    with pytest.raises(UserError, match="class 'airplane' is named by folder"):
        labels_for_wnids([], 1000, ["airplane"])  # never label -1


def test_run_results_report_only_tabulates_what_exists(tmp_path: Path) -> None:
    """REPORT_ONLY=1 runs no stage: the tables (docs and the README block) come from the results files there."""
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    data = tmp_path / "data" / "imagenette-64"
    for split in ("train", "val"):
        (data / split).mkdir(parents=True)
    work = tmp_path / "work"
    (work / "results").mkdir(parents=True)
    r = {"method": "igds", "ipc": 10, "net": "convnet3", "resolution": 32, "mean": 0.4, "std": 0.01}
    r |= {"accuracies": [0.39, 0.40, 0.41], "epochs": 2000, "epochs_protocol": 2000, "best_mean": 0.42}
    (work / "results" / "igds-ipc10-convnet3-32px.json").write_text(json.dumps(r))
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n{README_BEGIN}\n{README_END}\n")
    env = os.environ | {
        "IGDS_DATA": str(tmp_path / "data"),
        "WORK": str(work),
        "DOCS_DIR": str(tmp_path / "docs"),
        "README": str(readme),
        "REPORT_ONLY": "1",
        "NOTE": "IPC 10 came from elsewhere.",
        "IPCS": "10",
        "BACKEND": "eager",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    done = subprocess.run(
        ["bash", "benchmarks/run_results.sh"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = (tmp_path / "docs" / "results.md").read_text()
    assert "| IGDS (default) | 40.0 ± 1.0 (42.0) |" in table and "random real images" not in table  # no file: no row
    assert "igds-fast distill" in table  # the commands that would make the sets are listed
    assert table.index("| IGDS (default) |") < table.index("IPC 10 came from elsewhere.") < table.index("## Commands")
    assert "| IGDS (default) | 40.0 ± 1.0 (42.0) |" in readme.read_text()
    assert not (work / "sets" / "igds-ipc10").exists()  # nothing ran


def test_bf16_warning_only_where_bf16_is_emulated() -> None:
    note = machine.slow_bf16_warning("bf16", "cpu", {"avx2", "fma"})
    assert note is not None and "--precision fp32" in note and "amx_bf16" in note
    for flags in ({"avx512f", "avx512_bf16"}, {"amx_bf16", "amx_tile"}):
        assert machine.slow_bf16_warning("bf16", "cpu", flags) is None
    assert machine.slow_bf16_warning("fp32", "cpu", {"avx2"}) is None
    assert machine.slow_bf16_warning("bf16", "cuda:0", set()) is None


@needs_data
def test_evaluate_in_bf16_warns_on_a_cpu_without_bf16_units(tmp_path: Path, monkeypatch, capsys) -> None:
    make_folder(tmp_path / "data", WNIDS, 2)
    make_folder(tmp_path / "val", WNIDS, 2, split="val")
    rr = tmp_path / "rr"
    args = ("--data", tmp_path / "data", "--ipc", 1, "--out", rr, "--classes", ",".join(WNIDS))
    assert run_cli(monkeypatch, capsys, "baseline", "random-real", *args)[0] == 0
    runs = {}
    for name, flags in (("avx2", {"avx2"}), ("amx", {"amx_bf16"})):
        monkeypatch.setattr(machine, "cpu_flags", lambda flags=flags: flags)
        out = tmp_path / f"{name}.json"
        runs[name] = run_cli(
            monkeypatch, capsys, "evaluate", "--train", rr, "--val", tmp_path / "val", "--net", "convnet3",
            "--resolution", 16, "--seeds", 1, "--epochs", 1, "--precision", "bf16", "--out", out,
        )  # fmt: skip
        assert runs[name][0] == 0 and json.loads(out.read_text())["accuracies"], runs[name][1]
    assert "warning: this CPU has no bf16 units" in runs["avx2"][1] and "--precision fp32" in runs["avx2"][1]
    assert "no bf16 units" not in runs["amx"][1]
