"""Scoring a sample set with the independent judge: the record and table of ``igds-fast quality``.

On a sample set (an ImageFolder) the judge (``judge.py``) reports

- accuracy: the fraction of samples it classifies as their own class (overall and per class);
- precision, recall, density, coverage (Kynkäänniemi et al. 2019; Naeem et al. 2020): k-NN manifolds
  (k = 5) in the judge's penultimate features, samples against real val images;
- saturation: the share of stored uint8 pixel values at exactly 0 or 255;
- within_class_distance: the mean pairwise L2 distance of penultimate features within a class,
  averaged over classes;

and the same for two reference rows computed with the same judge: real val images and random real
train images (as many per class as the samples). ``docs/quality_judge.md`` says what each number
does and does not measure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import resolve_device
from ..errors import UserError
from ..imagefolder import digest, image_size, listing, save_npz, scan_image_folder
from .judge import DEFAULT_NET, ImageSet, Judge, cache_root, load_images, load_or_train_judge
from .quality_metrics import K, knn_radii, mean_pairwise_distance, prdc
from .train import read_run_info

METRICS = ("accuracy", "precision", "recall", "density", "coverage", "saturation", "within_class_distance")
ROWS = (("samples", None), ("real val", "real_val"), ("random real train", "random_real_train"))


def sample_side(files: dict[str, list[Path]]) -> int:
    """The samples' side in px: every image must be the same square size (else pass a resolution)."""
    sizes = {image_size(p) for paths in files.values() for p in paths}
    if len(sizes) != 1 or len({*next(iter(sizes))}) != 1:
        shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4])
        raise UserError(f"the samples are not all one square size ({shown}): pass --resolution")
    return next(iter(sizes))[0]


SCORED_FIELDS = ("feats", "preds", "labels", "saturated", "values")


@dataclass
class Scored:
    """One row's images after the judge: features, predictions, labels and stored saturation."""

    feats: torch.Tensor
    preds: torch.Tensor
    labels: torch.Tensor
    saturated: torch.Tensor
    values: torch.Tensor

    @classmethod
    def of(cls, judge: Judge, images: ImageSet) -> Scored:
        feats, logits = judge.run(images.images)
        return cls(feats, logits.argmax(1), images.labels, images.saturated, images.values)

    def select(self, idx: torch.Tensor) -> Scored:
        return Scored(self.feats[idx], self.preds[idx], self.labels[idx], self.saturated[idx], self.values[idx])


def row_metrics(
    scored: Scored,
    classes: list[str],
    judge_classes: list[str],
    manifold: torch.Tensor,
    radii: torch.Tensor,
    prdc_of: Scored | None = None,
) -> dict[str, Any]:
    """The seven metrics and ``per_class`` of one row; PRDC from ``prdc_of`` (default: ``scored``)."""
    prdc_of = scored if prdc_of is None else prdc_of
    if len(prdc_of.feats) > K:
        manifolds = prdc(manifold, prdc_of.feats, K, radii)
    else:  # recall needs k-NN balls around the samples
        manifolds = dict.fromkeys(("precision", "recall", "density", "coverage"))
    per_class, distances = {}, []
    for c in classes:
        m = scored.labels == judge_classes.index(c)
        wcd = mean_pairwise_distance(scored.feats[m])
        if wcd is not None:
            distances.append(wcd)
        per_class[c] = {
            "accuracy": float((scored.preds[m] == scored.labels[m]).double().mean()),
            "saturation": float(scored.saturated[m].sum() / scored.values[m].sum()),
            "within_class_distance": wcd,
            "n": int(m.sum()),
        }
    return {
        "accuracy": float((scored.preds == scored.labels).double().mean()),
        **manifolds,
        "saturation": float(scored.saturated.sum() / scored.values.sum()),
        "within_class_distance": float(np.mean(distances)) if distances else None,
        "n": len(scored.labels),
        "per_class": per_class,
    }


def per_class_pick(labels: torch.Tensor, counts: dict[int, int], gen: torch.Generator) -> torch.Tensor:
    """Indices of ``counts[label]`` random rows of each label (fewer when a label has fewer), sorted."""
    picks = []
    for label, n in counts.items():
        rows = torch.nonzero(labels == label).flatten()
        picks.append(rows[torch.randperm(len(rows), generator=gen)[:n]])
    return torch.cat(picks).sort().values


def real_val_scores(judge: Judge, real_val: Path, classes: list[str], cache_dir: Path | str | None) -> Scored:
    """The judge on every real val image of ``classes``: memoised on the judge, and on disk the resized
    images (per resolution) and the judge's outputs on them (per cached judge)."""
    files = scan_image_folder(real_val, "real val")
    missing = [c for c in classes if c not in files]
    if missing:
        raise UserError(f"real val folder '{real_val}' has no class folder for sample class(es) {', '.join(missing)}")
    key = digest(
        {
            "res": judge.resolution,
            "classes": classes,
            "labels": judge.classes,  # labels are positions in the judge's class list
            "files": listing(files, classes),
            "root": str(Path(real_val).resolve()),
        }
    )
    memo = judge.memo.get("val")
    if memo is not None and memo[0] == key:
        return memo[1]
    root = cache_root(cache_dir)
    judge_key = judge.info.get("cache_key")
    scores = root / "features" / f"val_{judge_key}_{key}.npz" if judge_key else None
    if scores is not None and scores.is_file():
        with np.load(scores) as z:
            scored = Scored(*(torch.from_numpy(z[k]) for k in SCORED_FIELDS))
    else:
        paths = [p for c in classes for p in files[c]]
        labels = [judge.classes.index(c) for c in classes for _ in files[c]]
        images = load_images(paths, labels, judge.resolution, root / "images" / f"val_{judge.resolution}px_{key}.npz")
        scored = Scored.of(judge, images)
        if scores is not None:
            save_npz(scores, {k: getattr(scored, k).numpy() for k in SCORED_FIELDS})
    judge.memo["val"] = (key, scored)
    return scored


@dataclass
class References:
    """What the rows share: the real manifold and its k-NN radii, and the two reference rows."""

    manifold: torch.Tensor
    radii: torch.Tensor
    rows: dict[str, Any]
    val_accuracy: float


def references(
    judge: Judge,
    real_train: Path,
    real_val: Path,
    classes: list[str],
    counts: dict[int, int],
    seed: int,
    cache_dir: Path | str | None,
) -> References:
    """The real manifold and the reference rows, memoised on the judge by their inputs (a sweep that
    judges many sets with the same class counts computes them once)."""
    val = real_val_scores(judge, real_val, classes, cache_dir)
    train_files = scan_image_folder(real_train, "real train")
    missing = [c for c in classes if c not in train_files]
    if missing:
        raise UserError(f"real train folder '{real_train}' lacks class(es) {', '.join(missing)}")
    key = digest({"val": judge.memo["val"][0], "train": listing(train_files, classes), "seed": seed, "counts": counts})
    memo = judge.memo.get("references")
    if memo is not None and memo[0] == key:
        return memo[1]
    gen = torch.Generator().manual_seed(seed)
    # the real-val row's PRDC set: as many per class as the samples, keeping at least half in the manifold
    held = per_class_pick(val.labels, {c: min(n, int((val.labels == c).sum()) // 2) for c, n in counts.items()}, gen)
    rest = torch.ones(len(val.labels), dtype=torch.bool)
    rest[held] = False
    manifold = val.feats[rest]
    if len(manifold) <= K:
        raise UserError(f"real val has {len(manifold)} images of the sample classes: the k-NN manifold needs > {K}")
    radii = knn_radii(manifold, K)
    # random real train images, as many per class as the samples (seeded)
    paths = [p for c in classes for p in train_files[c]]
    labels = torch.tensor([judge.classes.index(c) for c in classes for _ in train_files[c]])
    pick = per_class_pick(labels, counts, gen).tolist()
    random_train = Scored.of(judge, load_images([paths[i] for i in pick], labels[pick].tolist(), judge.resolution))
    rows = {
        "real_val": row_metrics(val, classes, judge.classes, manifold, radii, prdc_of=val.select(held))
        | {"prdc_n": len(held), "manifold_n": len(manifold)},
        "random_real_train": row_metrics(random_train, classes, judge.classes, manifold, radii),
    }
    refs = References(manifold, radii, rows, float((val.preds == val.labels).double().mean()))
    judge.memo["references"] = (key, refs)
    return refs


def judge_samples(
    samples: Path,
    real_train: Path,
    real_val: Path,
    resolution: int | None = None,
    net: str = DEFAULT_NET,
    epochs: int | None = None,
    seed: int = 0,
    cache_dir: Path | str | None = None,
    device: str = "cpu",
    judge: Judge | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Judge the sample set ``samples`` (ImageFolder) against real data; the JSON-ready record.

    Trains (or loads) the judge on ``real_train`` unless ``judge`` is given (a sweep passes one judge
    to many calls: its real-val features are then computed once). The real manifold of precision,
    recall, density and coverage is real val minus a seeded held-out subset with the samples' count
    per class; that subset is the real-val row's PRDC set, so all three rows face the same manifold.
    The real-val row's other metrics use every real val image of the samples' classes.
    """
    t0 = time.perf_counter()
    samples = Path(samples)
    sample_files = scan_image_folder(samples, "samples")
    read_run_info(samples)  # refuses an unfinished set
    scan_image_folder(Path(real_val), "real val")  # every input checked before the judge trains (minutes)
    cache_root(cache_dir)
    resolve_device(device)
    side = sample_side(sample_files) if resolution is None and judge is None else None
    if side is None:  # every sample's header read all the same: a broken file or a bomb fails here, not later
        for paths in sample_files.values():
            for p in paths:
                image_size(p)
    if resolution is None:
        resolution = side if judge is None else judge.resolution
    if judge is None:
        judge = load_or_train_judge(real_train, resolution, net, epochs, seed, cache_dir, device, progress)
    elif judge.resolution != resolution:
        raise UserError(f"the judge works at {judge.resolution} px, not the requested {resolution} px")
    unknown = sorted(set(sample_files) - set(judge.classes))
    if unknown:
        raise UserError(
            f"sample class(es) {', '.join(unknown)} missing from real train '{real_train}' "
            f"(its classes: {', '.join(judge.classes[:5])}{', ...' if len(judge.classes) > 5 else ''})"
        )
    classes = [c for c in judge.classes if c in sample_files]  # the judge's order
    # samples
    paths = [p for c in classes for p in sample_files[c]]
    labels = [judge.classes.index(c) for c in classes for _ in sample_files[c]]
    sample_scores = Scored.of(judge, load_images(paths, labels, resolution))
    counts = {judge.classes.index(c): len(sample_files[c]) for c in classes}

    refs = references(judge, Path(real_train), Path(real_val), classes, counts, seed, cache_dir)
    result = row_metrics(sample_scores, classes, judge.classes, refs.manifold, refs.radii)
    return {
        **{m: result[m] for m in METRICS},
        "per_class": result["per_class"],
        "n": result["n"],
        "reference": refs.rows,
        "judge": {
            "net": judge.info["net"],
            "resolution": judge.resolution,
            "epochs": judge.info["epochs"],
            "seed": judge.info["seed"],
            "real_val_accuracy": refs.val_accuracy,
            "cache_key": judge.info["cache_key"],
            "cached": judge.info.get("cached"),
            "train_s": judge.info.get("train_s"),
            "num_train": judge.info.get("num_train"),
            "classes": judge.classes,
        },
        "k": K,
        "samples": str(samples),
        "real_train": str(real_train),
        "real_val": str(real_val),
        "classes": classes,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def format_table(result: dict[str, Any]) -> str:
    """Markdown: rows samples / real val / random real train, columns the metrics."""
    header = ["set", "n", *METRICS]
    lines = ["| " + " | ".join(h.replace("_", " ") for h in header) + " |", "|" + "---|" * len(header)]
    for name, ref in ROWS:
        row = result if ref is None else result["reference"][ref]
        n = f"{row['n']}" + (f" ({row['prdc_n']} for PRDC)" if "prdc_n" in row else "")
        cells = ["—" if row[m] is None else f"{row[m]:.3f}" for m in METRICS]
        lines.append("| " + " | ".join([name, n, *cells]) + " |")
    j = result["judge"]
    epochs = f"{j['epochs']} epoch" + ("s" if j["epochs"] != 1 else "")
    lines.append("")
    lines.append(
        f"judge: {j['net']} at {j['resolution']} px, {epochs} on {j['num_train'] or '?'} real train "
        f"images{' (cached)' if j['cached'] else ''}; real val top-1 {100 * j['real_val_accuracy']:.1f}%; "
        f"k = {result['k']}; key {j['cache_key']}"
    )
    return "\n".join(lines)
