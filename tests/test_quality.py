"""The quality judge (igds_fast.evaluation: judge, quality_metrics, scoring): PRDC against hand-computed
cases, saturation, within-class distance, and a judge trained for a few steps on a tiny temporary ImageFolder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from igds_fast.errors import UserError
from igds_fast.evaluation import judge as judge_module
from igds_fast.evaluation.judge import Judge, load_images, load_or_train_judge
from igds_fast.evaluation.quality_metrics import knn_radii, mean_pairwise_distance, prdc, saturation
from igds_fast.evaluation.scoring import METRICS, format_table, judge_samples

pytestmark = pytest.mark.usefixtures("single_thread")

COLORS = {"n00000001": (200, 40, 40), "n00000002": (40, 200, 40), "blue": (40, 40, 200)}  # WNIDs and a name
SIDE = 16
EPOCHS = 6


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(-1, 1)


# ---------------------------------------------------------------- metrics on hand-computed cases


def test_prdc_identical_sets():
    x = torch.randn(60, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = prdc(x, x.clone(), k=5)
    assert r["precision"] == r["recall"] == r["coverage"] == 1.0
    # every real ball holds its centre and its k neighbours: density = (k + 1) / k without ties
    assert r["density"] == pytest.approx(6 / 5)


def test_prdc_far_away_set():
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r = prdc(x, x + 1000.0, k=5)
    assert r == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_hand_computed_1d():
    # real 0, 1, 2, 50 (k = 1): radii 1, 1, 1, 48 -> balls [-1,1], [0,2], [1,3], [2,98]
    # fake 0, 1, 2: radii 1, 1, 1
    real, fake = t([0, 1, 2, 50]), t([0, 1, 2])
    assert knn_radii(real, 1).tolist() == [1, 1, 1, 48]
    r = prdc(real, fake, k=1)
    assert r["precision"] == 1.0  # every fake lies in some real ball
    assert r["recall"] == 0.75  # real 50 lies in no fake ball
    assert r["coverage"] == 1.0  # real 50's nearest fake (2) is at exactly its radius 48: closed balls
    # fake 0 lies in the balls of 0, 1; fake 1 in those of 0, 1, 2; fake 2 in those of 1, 2, 50
    assert r["density"] == pytest.approx((2 + 3 + 3) / (1 * 3))


def test_prdc_density_definition():
    # real 0, 1, 3 (k = 1): radii 1, 1, 2 -> balls [-1,1], [0,2], [1,5]; fake 0.5 in two, 4 in one, 10 in none
    r = prdc(t([0, 1, 3]), t([0.5, 4, 10]), k=1)
    assert r["density"] == pytest.approx(1.0)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["coverage"] == 1.0


def test_prdc_precomputed_radii_and_small_sets():
    x = torch.randn(30, 3, generator=torch.Generator().manual_seed(2))
    y = torch.randn(20, 3, generator=torch.Generator().manual_seed(3))
    assert prdc(x, y, 5, knn_radii(x, 5)) == prdc(x, y, 5)
    # chunked radii match one block
    assert torch.equal(knn_radii(x, 5, chunk=7), knn_radii(x, 5))
    with pytest.raises(ValueError, match="more than 5"):
        knn_radii(x[:5], 5)


def test_saturation_and_within_class_distance():
    img = torch.full((3, 10, 10), 128, dtype=torch.uint8)
    img.view(-1)[:30] = 0
    img.view(-1)[30:50] = 255
    assert saturation(img) == pytest.approx(50 / 300)
    assert saturation(torch.full((2, 3, 4, 4), 7, dtype=torch.uint8)) == 0.0
    with pytest.raises(TypeError):
        saturation(img.float())
    assert mean_pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])) == pytest.approx(10 / 3)
    assert mean_pairwise_distance(torch.zeros(1, 2)) is None


def test_saturation_counts_stored_pixels(tmp_path):
    arr = np.full((32, 32, 3), 100, dtype=np.uint8)
    arr[:8] = 255  # a quarter of the stored image is saturated
    Image.fromarray(arr).save(tmp_path / "a.png")
    s = load_images([tmp_path / "a.png"], [0], 16)
    assert s.images.shape == (1, 3, 16, 16) and s.images.dtype == torch.uint8
    assert int(s.saturated[0]) == 8 * 32 * 3 and int(s.values[0]) == 32 * 32 * 3


# ---------------------------------------------------------------- a judge on a tiny ImageFolder


def write_folder(root: Path, n: int, seed: int, noise: bool = False, classes=tuple(COLORS)) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            if noise:
                arr = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
            else:
                base = np.array(COLORS[c], dtype=np.float64)
                arr = np.clip(base + rng.normal(0, 25, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    return {
        "train": write_folder(root / "train", 20, 0),
        "val": write_folder(root / "val", 12, 1),
        "real": write_folder(root / "real_samples", 8, 2),
        "noise": write_folder(root / "noise_samples", 8, 3, noise=True),
        "cache": root / "cache",
    }


@pytest.fixture(scope="module")
def judged(folders):
    """The first call trains (counted); the second must load the cached judge."""
    calls = []
    real_train = judge_module.train_judge

    def counting(*args, **kwargs):
        calls.append(1)
        return real_train(*args, **kwargs)

    judge_module.train_judge = counting
    try:
        kw = dict(epochs=EPOCHS, cache_dir=folders["cache"], progress=False)
        first = judge_samples(folders["real"], folders["train"], folders["val"], **kw)
        weights = sorted(folders["cache"].glob("*.safetensors"))
        mtime = weights[0].stat().st_mtime_ns
        second = judge_samples(folders["noise"], folders["train"], folders["val"], **kw)
    finally:
        judge_module.train_judge = real_train
    return {"real": first, "noise": second, "calls": calls, "weights": weights, "mtime": mtime}


def test_judge_is_cached(judged, folders):
    assert judged["calls"] == [1], "the second call retrained the judge"
    assert len(judged["weights"]) == 1 and judged["weights"][0].with_suffix(".json").is_file()
    assert judged["weights"][0].stat().st_mtime_ns == judged["mtime"]
    assert judged["real"]["judge"]["cached"] is False and judged["noise"]["judge"]["cached"] is True
    assert judged["real"]["judge"]["cache_key"] == judged["noise"]["judge"]["cache_key"]
    # the second call read the judge's real-val outputs from the cache the first one wrote
    assert len(list((folders["cache"] / "features").glob("val_*.npz"))) == 1
    # another setting is another judge
    key = load_or_train_judge(folders["train"], SIDE, epochs=1, cache_dir=folders["cache"], progress=False)
    assert key.info["cache_key"] != judged["real"]["judge"]["cache_key"]


def test_json_keys(judged):
    r = judged["real"]
    assert set(METRICS) | {"per_class", "reference", "judge"} <= set(r)
    json.dumps(r)  # JSON-ready
    assert set(r["per_class"]) == set(COLORS)
    for row in (r, *r["reference"].values()):
        assert set(METRICS) <= set(row)
        for per_class in row["per_class"].values():
            assert set(per_class) == {"accuracy", "saturation", "within_class_distance", "n"}
    assert set(r["reference"]) == {"real_val", "random_real_train"}
    assert {"net", "resolution", "epochs", "real_val_accuracy", "cache_key"} <= set(r["judge"])
    assert r["judge"]["resolution"] == SIDE and r["judge"]["net"] == "convnet3"
    assert r["per_class"]["blue"]["n"] == 8 and r["n"] == 24
    assert r["reference"]["random_real_train"]["n"] == 24  # as many per class as the samples
    assert r["reference"]["real_val"]["n"] == 36 and r["reference"]["real_val"]["prdc_n"] == 18
    table = format_table(r)
    assert table.count("\n| ") == 3 and "real val" in table and "random real train" in table


def test_real_beats_noise(judged):
    real, noise = judged["real"], judged["noise"]
    assert real["judge"]["real_val_accuracy"] > 0.9
    assert real["accuracy"] > noise["accuracy"] + 0.3
    assert real["precision"] > noise["precision"] and real["density"] > noise["density"]
    assert noise["saturation"] == pytest.approx(2 / 256, abs=0.004)  # uniform noise: 2 of 256 values
    # the reference rows do not depend on the sample set
    assert real["reference"] == noise["reference"]


def test_judge_object_and_reuse(judged, folders):
    judge = Judge.load(judged["weights"][0])
    images = load_images(sorted((folders["real"] / "blue").glob("*.png")), [0] * 8, SIDE).images
    feats, logits = judge.run(images)
    assert feats.shape == (8, 128 * 2 * 2) and logits.shape == (8, 3)
    assert torch.equal(judge.predict(images), logits.argmax(1))
    assert torch.allclose(judge.features(images), feats)
    big = torch.nn.functional.interpolate(images.float(), scale_factor=2, mode="nearest").to(torch.uint8)
    assert judge.features(big).shape == feats.shape  # other sizes are resized
    # a sweep passes the judge: same numbers, references memoised
    kw = dict(cache_dir=folders["cache"], progress=False, judge=judge)
    again = judge_samples(folders["real"], folders["train"], folders["val"], **kw)
    assert again["accuracy"] == judged["real"]["accuracy"]
    assert again["precision"] == pytest.approx(judged["real"]["precision"])
    refs = judge.memo["references"][1]
    judge_samples(folders["noise"], folders["train"], folders["val"], **kw)
    assert judge.memo["references"][1] is refs


def test_errors(judged, folders, tmp_path):
    kw = dict(epochs=EPOCHS, cache_dir=folders["cache"], progress=False)
    with pytest.raises(UserError, match="does not exist"):
        judge_samples(tmp_path / "nope", folders["train"], folders["val"], **kw)
    with pytest.raises(UserError, match="real val folder .* does not exist"):
        judge_samples(folders["real"], folders["train"], tmp_path / "nope", **kw)
    odd = write_folder(tmp_path / "odd", 6, 4, classes=("blue",))
    write_folder(tmp_path / "odd_extra", 6, 4, classes=("blue",))
    (tmp_path / "odd_extra" / "blue").rename(odd / "n09999999")
    with pytest.raises(UserError, match="n09999999 missing from real train"):
        judge_samples(odd, folders["train"], folders["val"], **kw)
    misnamed = write_folder(tmp_path / "misnamed", 2, 4, classes=("blue",))
    (misnamed / "blue").rename(misnamed / "sea blue")  # refused by name, never skipped
    with pytest.raises(UserError, match="'.*sea blue' holds images but its name is not"):
        judge_samples(misnamed, folders["train"], folders["val"], **kw)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        judge_samples(tmp_path / "empty", folders["train"], folders["val"], **kw)
    with pytest.raises(UserError, match="unknown network"):
        judge_samples(folders["real"], folders["train"], folders["val"], net="vgg", **kw)
    mixed = write_folder(tmp_path / "mixed", 2, 5, classes=("blue",))
    Image.new("RGB", (20, 20)).save(mixed / "blue" / "big.png")
    with pytest.raises(UserError, match="one square size"):
        judge_samples(mixed, folders["train"], folders["val"], **kw)
    (folders["real"] / "run.json").write_text('{"complete": false}')
    try:
        with pytest.raises(UserError, match="incomplete"):
            judge_samples(folders["real"], folders["train"], folders["val"], **kw)
    finally:
        (folders["real"] / "run.json").unlink()


def test_cli(judged, folders, tmp_path):
    import typer
    from typer.testing import CliRunner

    from igds_fast.cli import eval as cli_eval

    app = typer.Typer()
    cli_eval.register(app)
    out = tmp_path / "q.json"
    args = ["quality", "--samples", str(folders["real"]), "--real-train", str(folders["train"])]
    args += ["--real-val", str(folders["val"]), "--epochs", str(EPOCHS), "--cache-dir", str(folders["cache"])]
    res = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "| samples |" in res.output and "(cached)" in res.output
    assert json.loads(out.read_text())["accuracy"] == judged["real"]["accuracy"]
