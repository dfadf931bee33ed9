"""A set is a dataset: loaders read it as is (Hugging Face ``datasets`` imagefolder with the metadata
columns, torchvision's ImageFolder), its Parquet names its schema and version, its dataset card is
deterministic, and a set of the previous layout is verified and moved to this one by a rerun."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import igds_fast
from igds_fast.jobs import job as job_mod
from igds_fast.jobs.baseline import random_real
from igds_fast.jobs.dataset_card import distilled_card
from igds_fast.jobs.identity import DistillConfig
from igds_fast.jobs.image_manifest import MANIFEST_SCHEMA, SET_FORMAT, read_image_manifest
from igds_fast.jobs.run import run_job as run_request
from igds_fast.jobs.verify import repair_set, verify_set
from igds_fast.subsets import class_info

from .test_distill import WNIDS, models, request  # noqa: F401 (models is a fixture)

pytestmark = pytest.mark.usefixtures("single_thread")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # a local folder: never ask the Hub

CLASSES = sorted(WNIDS[:2])
# torchvision.datasets.folder.IMG_EXTENSIONS
TV_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def images(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): sha(p) for p in sorted(out.glob("n*/*.png"))}


def load_imagefolder(out: Path, tmp_path: Path, **kw):
    datasets = pytest.importorskip(
        "datasets", reason="Hugging Face `datasets` is not installed (pip install datasets; in the dev extra)"
    )
    datasets.logging.set_verbosity_error()
    return datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path), **kw)


def torchvision_view(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, samples) as torchvision's ImageFolder finds them: every folder at the root is a class
    (hidden ones too), every image file anywhere below it a sample (``find_classes``, ``make_dataset``)."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    samples = []
    for label, name in enumerate(classes):
        for folder, _, files in sorted(os.walk(root / name, followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(TV_EXTENSIONS):
                    samples.append(((Path(folder) / f).relative_to(root).as_posix(), label))
    return classes, samples


@pytest.fixture(scope="module")
def distilled(models, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("layout") / "set"
    assert run_request(request(models, out, ipc=2))["complete"]
    return out


def copy_of(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def to_previous_layout(out: Path, wnids: list[str], sheets: bool = True) -> list[dict]:
    """What the previous release left: ``manifest.parquet`` (rows with ``path``, no label, no schema
    tag), contact sheets at the root, no ``metadata.parquet`` and no card. Returns its rows."""
    rows = read_image_manifest(out / "metadata.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), out / "manifest.parquet")
    (out / "metadata.parquet").unlink()
    (out / "README.md").unlink()
    if sheets:
        for w in wnids:
            (out / f".igds-contact-{w}.png").rename(out / f"contact_{w}.png")
    return rows


def test_the_root_holds_only_class_folders_and_non_image_files(distilled):
    visible = sorted(p.name for p in distilled.iterdir() if not p.name.startswith("."))
    assert visible == sorted([*CLASSES, "README.md", "metadata.parquet", "run.json"])
    for w in CLASSES:  # the contact sheets: hidden files, readable images
        with Image.open(distilled / f".igds-contact-{w}.png") as sheet:
            assert sheet.width >= 2 * 96
    hidden_dirs = [p.name for p in distilled.iterdir() if p.is_dir() and p.name.startswith(".")]
    assert hidden_dirs == []  # torchvision would take a hidden folder for a class


def test_datasets_imagefolder_loads_exactly_the_images_with_labels_and_metadata(distilled, tmp_path):
    from datasets import Image as HFImage

    ds = load_imagefolder(distilled, tmp_path / "cache")
    assert len(ds) == 4
    assert ds.features["label"].names == CLASSES  # the class names are the WNIDs
    for column in ("seed", "sha256", "class_index", "sample_index", "log_q", "h2", "saturation", "pixel_std"):
        assert column in ds.features
    files = ds.cast_column("image", HFImage(decode=False))
    got = {}
    for row, raw in zip(ds, files["image"], strict=True):
        path = Path(raw["path"])
        rel = path.relative_to(distilled.resolve()).as_posix()
        assert ds.features["label"].int2str(row["label"]) == row["wnid"] == rel.split("/")[0]
        assert row["class_index"] == class_info(row["wnid"]).imagenet_index
        assert row["image"].size == (8, 8)
        got[rel] = row["sha256"]
    assert got == images(distilled)  # every image once, its own sha256; no contact sheet, no other file
    whole = load_imagefolder(distilled, tmp_path / "cache2", drop_labels=False)
    assert whole.features["label"].names == CLASSES and len(whole) == 4


def test_datasets_reads_the_folder_by_path_with_its_card(distilled, tmp_path):
    datasets = pytest.importorskip("datasets", reason="Hugging Face `datasets` is not installed")
    ds = datasets.load_dataset(str(distilled), split="train", cache_dir=str(tmp_path))
    assert len(ds) == 4 and ds.features["label"].names == CLASSES


def test_torchvision_imagefolder_gives_the_same_labels(distilled):
    classes, samples = torchvision_view(distilled)
    rows = {r["path"]: r for r in read_image_manifest(distilled / "metadata.parquet")}
    assert classes == CLASSES
    assert sorted(p for p, _ in samples) == sorted(rows)  # only the set's images
    table = pq.read_table(distilled / "metadata.parquet").to_pylist()
    assert {r["file_name"]: r["label"] for r in table} == dict(samples)  # metadata label == ImageFolder's
    try:
        from torchvision.datasets import ImageFolder
    except Exception:  # not installed, or a build for another torch (the PyPI wheel needs CUDA torch)
        return  # the rule above is torchvision's own (torchvision/datasets/folder.py)
    tv = ImageFolder(str(distilled))
    assert tv.classes == CLASSES
    assert [(Path(p).relative_to(distilled).as_posix(), t) for p, t in tv.samples] == samples


def test_verify_passes_on_the_layout(distilled):
    rep = verify_set(distilled)
    assert rep.ok, rep.problems()
    assert rep.card == "ok" and rep.manifest == "ok" and rep.previous == [] and rep.intact == 4


def test_parquet_names_its_schema_and_version(distilled):
    schema = pq.read_schema(distilled / "metadata.parquet")
    meta = schema.metadata
    assert meta[b"igds_fast.schema"].decode() == SET_FORMAT == "igds-fast/images-v2"
    assert meta[b"igds_fast.version"].decode() == igds_fast.__version__
    features = json.loads(meta[b"huggingface"])["info"]["features"]
    assert features["label"] == {"names": CLASSES, "_type": "ClassLabel"}
    assert schema.names[:2] == ["file_name", "label"] and "path" not in schema.names


def test_a_damaged_label_is_damage(distilled, tmp_path):
    out = copy_of(distilled, tmp_path / "set")
    path = out / "metadata.parquet"
    table = pq.read_table(path)
    labels = table.column("label").to_pylist()
    table = table.set_column(1, table.schema.field("label"), pa.array(labels[::-1], pa.int64()))
    pq.write_table(table, path)
    assert verify_set(out).manifest == "damaged"


def test_the_card_is_written_once_and_the_same_for_the_same_config(models, distilled, tmp_path, monkeypatch):  # noqa: F811
    card = distilled / "README.md"
    text = card.read_text()
    header = text.split("---\n")[1]
    assert "task_categories:\n- image-classification" in header and "size_categories:\n- n<1K" in header
    assert f"| igds-fast | {igds_fast.__version__} |" in text
    assert "eager, fp32" in text and '"steps": "4"' in text and "--ipc 2 --batch-size 2 --seed 3" in text
    for label, w in enumerate(CLASSES):  # both label spaces
        assert f"| {label} | `{w}` | {class_info(w).name} | {class_info(w).imagenet_index} |" in text
    assert "non-commercial research" in text
    before = (card.read_bytes(), card.stat().st_mtime_ns)
    monkeypatch.setattr(job_mod, "build_pipeline", lambda *a, **k: pytest.fail("a finished set loaded weights"))
    assert run_request(request(models, distilled, ipc=2))["nothing_to_do"]
    assert (card.read_bytes(), card.stat().st_mtime_ns) == before  # a rerun writes nothing
    monkeypatch.undo()
    other = tmp_path / "again"
    assert run_request(request(models, other, ipc=2))["complete"]
    assert (other / "README.md").read_bytes() == before[0]  # no clock time inside
    assert images(other) == images(distilled)


def test_the_card_of_the_embedded_model_quotes_its_licence():
    data = json.loads((Path(igds_fast.__file__).parent / "data" / "embedded.json").read_text())
    hashes = {"denoiser": data["denoiser"]["sha256"], "vae": data["vae"]["sha256"], "critics": data["critic"]["sha256"]}
    cfg = DistillConfig(wnids=CLASSES, labels=[0, 1], ipc=1, batch_size=1, seed=0, models=hashes)
    rows = [{"wnid": w, "class_index": class_info(w).imagenet_index} for w in CLASSES]
    text = distilled_card(cfg, rows, ["0.1.0"]).decode()
    assert "(the embedded model)" in text and "--denoiser" not in text
    assert "Licence of the training images: ImageNet's terms (non-commercial research)" in text
    assert distilled_card(cfg, rows, ["0.1.0"]) == text.encode()


def test_a_set_of_the_previous_layout_is_verified_and_moved_by_a_rerun(models, distilled, tmp_path, monkeypatch):  # noqa: F811
    out = copy_of(distilled, tmp_path / "set")
    want = {p.name: p.read_bytes() for p in (out / f".igds-contact-{w}.png" for w in CLASSES)}
    want_card, want_meta = (out / "README.md").read_bytes(), read_image_manifest(out / "metadata.parquet")
    imgs = images(out)
    to_previous_layout(out, CLASSES)
    rep = verify_set(out)  # the images check out; the layout is named
    assert not rep.ok and rep.intact == 4 and not rep.missing and not rep.damaged
    assert rep.manifest == "previous layout"
    assert rep.previous == ["manifest.parquet"] + [f"contact_{w}.png" for w in CLASSES]
    assert any("previous layout" in p for p in rep.problems())
    monkeypatch.setattr(job_mod, "build_pipeline", lambda *a, **k: pytest.fail("weights loaded to move a set"))
    summary = run_request(request(models, out, ipc=2))
    assert summary["nothing_to_do"] and summary["complete"]
    assert verify_set(out).ok
    assert not (out / "manifest.parquet").exists() and not list(out.glob("contact_*"))
    assert {n: (out / n).read_bytes() for n in want} == want  # the same sheets, moved
    assert (out / "README.md").read_bytes() == want_card
    assert read_image_manifest(out / "metadata.parquet") == want_meta and images(out) == imgs
    last = json.loads((out / "run.json").read_text())["runs"][-1]
    assert last["rebuilt"] == ["metadata.parquet", *want, "README.md"]
    assert last["removed"] == ["manifest.parquet"] + [f"contact_{w}.png" for w in CLASSES]
    # interrupted after the new files were written: the old ones are removed by the next run
    (out / f"contact_{CLASSES[0]}.png").write_bytes(want[f".igds-contact-{CLASSES[0]}.png"])
    assert verify_set(out).previous == [f"contact_{CLASSES[0]}.png"]
    assert run_request(request(models, out, ipc=2))["nothing_to_do"]
    assert verify_set(out).ok and not list(out.glob("contact_*"))


def test_verify_repair_moves_a_set_of_the_previous_layout(models, distilled, tmp_path, monkeypatch):  # noqa: F811
    out = copy_of(distilled, tmp_path / "set")
    to_previous_layout(out, CLASSES)
    monkeypatch.setattr(job_mod, "build_pipeline", lambda *a, **k: pytest.fail("weights loaded to move a set"))
    rep, summary = repair_set(out, denoiser=models["dit"], vae="none", critics=models["critic"])
    assert rep.ok and summary["nothing_to_do"] and summary["images_made"] == 0
    assert (out / "metadata.parquet").is_file() and not (out / "manifest.parquet").exists()


def make_data(root: Path, per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for w in CLASSES:
        (root / w).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / w / f"img{k}.png")
    return root


def test_the_random_real_baseline_has_the_same_layout(tmp_path):
    data, out = make_data(tmp_path / "data"), tmp_path / "real"
    classes = [class_info(w) for w in CLASSES]
    assert random_real(data, classes, 2, 0, out)
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == sorted([*CLASSES, "README.md", "metadata.parquet", "run.json"])
    assert torchvision_view(out)[0] == CLASSES
    rep = verify_set(out)
    assert rep.ok and rep.kind == "manifest" and rep.card == "ok", rep.problems()
    text = (out / "README.md").read_text()
    assert "random-real" in text and "| 1 | `n02102040` |" in text
    assert pq.read_schema(out / "metadata.parquet").metadata[b"igds_fast.schema"].decode() == SET_FORMAT
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert not random_real(data, classes, 2, 0, out)  # finished: nothing written
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # the previous layout: manifest.parquet, no card; verified as is, moved by a rerun
    imgs = images(out)
    rows = read_image_manifest(out / "metadata.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), out / "manifest.parquet")
    (out / "metadata.parquet").unlink()
    (out / "README.md").unlink()
    rep = verify_set(out)
    assert not rep.ok and rep.intact == 4 and rep.previous == ["manifest.parquet"]
    assert random_real(data, classes, 2, 0, out)
    assert verify_set(out).ok and not (out / "manifest.parquet").exists() and images(out) == imgs
    assert {p: p.stat().st_mtime_ns for p in stamps if p.suffix == ".png"} == {
        p: t for p, t in stamps.items() if p.suffix == ".png"
    }  # the images were not rewritten
    ds = load_imagefolder(out, tmp_path / "cache")
    assert ds.features["label"].names == CLASSES and len(ds) == 4 and ds[0]["seed"] == 0
