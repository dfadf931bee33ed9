"""An independent judge of a sample set: a classifier trained on real data, and what it sees in the samples.

The judge is one of the evaluation networks (default ConvNet-3) trained once on a real train split at
the set's resolution and cached on disk; it never sees the guidance critics. On a sample set it reports

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

import hashlib
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn
from tqdm import tqdm

from ..augment import random_resized_crop_flip
from ..config import resolve_device
from ..errors import UserError
from ..imagefolder import IMAGE_SUFFIXES, check_decode_memory
from ..machine import library_versions
from .data import normalize
from .networks import NET_NAMES, build_net

K = 5  # the papers' k for the k-NN manifolds
DEFAULT_NET = "convnet3"
DEFAULT_EPOCHS = 6
DEFAULT_CACHE_DIR = Path("~/.cache/igds-fast/judges")
# Bump when the judge's training recipe changes: part of the cache key, so old judges are not reused.
RECIPE_VERSION = 1
METRICS = ("accuracy", "precision", "recall", "density", "coverage", "saturation", "within_class_distance")
ROWS = (("samples", None), ("real val", "real_val"), ("random real train", "random_real_train"))


@dataclass(frozen=True)
class JudgeRecipe:
    """How the judge is trained: SGD (Nesterov) with a one-cycle schedule, flip + random-resized-crop."""

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    warmup: float = 0.15  # fraction of the steps with a rising learning rate
    crop_scale: tuple[float, float] = (0.5, 1.0)
    label_smoothing: float = 0.1
    test_batch_size: int = 500


# ---------------------------------------------------------------- image folders


def scan_classes(root: Path, what: str) -> dict[str, list[Path]]:
    """``root/<class>/<image>`` -> {class: sorted image files}; a class folder is any visible folder
    holding images (WNIDs or names), so a distilled set's other files (run.json, contact sheets) are skipped."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"{what} folder '{root}' is a file; give an ImageFolder root (<class>/<image>)")
    if not root.is_dir():
        raise UserError(f"{what} folder '{root}' does not exist")
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        if files:
            found[folder.name] = files
    if not found:
        raise UserError(f"{what} folder '{root}' has no class folders with images: expected {root}/<class>/<image>")
    return found


def check_complete(root: Path) -> None:
    """Refuse a distilled set whose run.json says it is unfinished."""
    path = Path(root) / "run.json"
    if not path.is_file():
        return
    try:
        info = json.loads(path.read_text())
    except ValueError as e:  # bad JSON, or bytes that are not UTF-8 text
        raise UserError(f"'{path}' is not valid JSON: {e}") from None
    if isinstance(info, dict) and info.get("complete") is False:
        raise UserError(f"'{root}' is incomplete (run.json says so): rerun the command that made it")


def listing(files: dict[str, list[Path]], classes: list[str]) -> list[str]:
    """'class/name:size:mtime_ns' per file: what the judge cache key hashes (cheap: stat only)."""
    out = []
    for c in classes:
        for p in files[c]:
            st = p.stat()
            out.append(f"{c}/{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return out


def digest(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def image_size(files: dict[str, list[Path]]) -> int:
    """The samples' side in px: every image must be the same square size (else pass a resolution)."""
    sizes = set()
    for paths in files.values():
        for p in paths:
            try:
                with Image.open(p) as im:
                    sizes.add(im.size)
            except (OSError, SyntaxError, ValueError) as e:
                raise UserError(f"cannot read image '{p}': {e}") from None
    if len(sizes) != 1 or len({*next(iter(sizes))}) != 1:
        shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4])
        raise UserError(f"the samples are not all one square size ({shown}): pass --resolution")
    return next(iter(sizes))[0]


def read_image(path: Path, resolution: int) -> tuple[np.ndarray, int, int]:
    """(RGB uint8 HWC resized to ``resolution``, saturated values, all values) of one stored image.

    Saturation counts the stored pixels (before resizing). The resize is PIL's bicubic on the shorter
    side plus a center crop (``ImageOps.fit``); PIL widens the kernel by the scale factor when it
    shrinks, so a downsample is antialiased (like area averaging, sharper).
    """
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            stored = np.asarray(im, dtype=np.uint8)
            if im.size != (resolution, resolution):
                im = ImageOps.fit(im, (resolution, resolution), Image.Resampling.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image '{path}': {e}") from None
    saturated = int(np.count_nonzero((stored == 0) | (stored == 255)))
    return arr, saturated, stored.size


@dataclass
class ImageSet:
    """Images of some classes: uint8 (N, 3, R, R), labels (N,) = positions in the judge's classes,
    and per image the saturated and total stored values."""

    images: torch.Tensor
    labels: torch.Tensor
    saturated: torch.Tensor
    values: torch.Tensor

    def select(self, idx: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[idx], self.labels[idx], self.saturated[idx], self.values[idx])


def load_images(
    paths: list[Path], labels: list[int], resolution: int, cache: Path | None = None, workers: int = 4
) -> ImageSet:
    """Read (and resize) ``paths``; with ``cache``, an .npz of the result is reused when present."""
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            return ImageSet(*(torch.from_numpy(z[k]) for k in ("images", "labels", "saturated", "values")))
    if not paths:
        raise UserError("no images to read")
    check_decode_memory(len(paths), resolution, workers)
    # PIL decodes without the GIL, so threads overlap the decoding
    with ThreadPoolExecutor(max_workers=workers) as pool:
        read = list(pool.map(lambda p: read_image(p, resolution), paths))
    out = ImageSet(
        torch.from_numpy(np.stack([r[0] for r in read])).permute(0, 3, 1, 2).contiguous(),
        torch.tensor(labels, dtype=torch.int64),
        torch.tensor([r[1] for r in read], dtype=torch.int64),
        torch.tensor([r[2] for r in read], dtype=torch.int64),
    )
    if cache is not None:
        save_npz(cache, {k: getattr(out, k).numpy() for k in ("images", "labels", "saturated", "values")})
    return out


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write to a temporary name, then rename: a cache file is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


# ---------------------------------------------------------------- metrics


def knn_radii(x: torch.Tensor, k: int = K, chunk: int = 1024) -> torch.Tensor:
    """Distance of each row of ``x`` to its k-th nearest other row (the radius of its k-NN ball)."""
    if len(x) <= k:
        raise ValueError(f"a k-NN radius with k = {k} needs more than {k} points, got {len(x)}")
    out = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i : i + chunk], x)
        # the (k+1)-th smallest: the row's distance to itself (0) is the first
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, -1])
    return torch.cat(out)


def prdc(
    real: torch.Tensor, fake: torch.Tensor, k: int = K, real_radii: torch.Tensor | None = None
) -> dict[str, float]:
    """Precision, recall (Kynkäänniemi et al. 2019), density, coverage (Naeem et al. 2020).

    With B(x, r) the closed ball and NND_k(x) the distance from x to its k-th nearest neighbour in
    its own set (real: N points X, fake: M points Y):
    precision = 1/M sum_j 1[Y_j in some B(X_i, NND_k(X_i))];  recall = 1/N sum_i 1[X_i in some
    B(Y_j, NND_k(Y_j))];  density = 1/(kM) sum_j sum_i 1[Y_j in B(X_i, NND_k(X_i))];  coverage =
    1/N sum_i 1[some Y_j in B(X_i, NND_k(X_i))]. ``real_radii`` reuses NND_k of ``real``.
    """
    rr = knn_radii(real, k) if real_radii is None else real_radii
    fr = knn_radii(fake, k)
    d = torch.cdist(real, fake)  # (N, M)
    in_real_balls = d <= rr[:, None]
    return {
        "precision": float(in_real_balls.any(dim=0).double().mean()),
        "recall": float((d <= fr[None, :]).any(dim=1).double().mean()),
        "density": float(in_real_balls.sum(dim=0).double().mean() / k),
        "coverage": float((d.min(dim=1).values <= rr).double().mean()),
    }


def mean_pairwise_distance(x: torch.Tensor) -> float | None:
    """Mean L2 distance over the pairs i < j of the rows of ``x``; None for fewer than 2 rows."""
    if len(x) < 2:
        return None
    return float(torch.pdist(x.double()).mean())


def saturation(images: torch.Tensor) -> float:
    """Share of values at exactly 0 or 255 in uint8 images (any shape)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"saturation is defined on uint8 images, got {images.dtype}")
    return float(((images == 0) | (images == 255)).double().mean())


# ---------------------------------------------------------------- the judge


def last_linear(net: nn.Module) -> nn.Linear:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"{type(net).__name__} has no linear layer to take penultimate features from")
    return linears[-1]


class Judge:
    """A classifier trained on real images; ``features`` are the inputs of its last (linear) layer.

    Images are uint8 (or float in [0, 255]) (N, 3, H, W); other sizes than ``resolution`` are resized
    (bicubic, antialiased). ``predict`` returns positions in ``classes``.
    """

    def __init__(self, net: nn.Module, classes: list[str], resolution: int, info: dict[str, Any], device: str = "cpu"):
        self.net = net.to(device).eval()
        self.classes = list(classes)
        self.resolution = resolution
        self.info = info
        self.device = device
        self._captured: list[torch.Tensor] = []
        last_linear(self.net).register_forward_pre_hook(lambda _m, inputs: self._captured.append(inputs[0]))
        self._memo: dict[str, Any] = {}  # per-process reuse of real-image features (see judge_samples)

    @torch.no_grad()
    def run(
        self, images: torch.Tensor, batch_size: int = JudgeRecipe.test_batch_size
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features (N, D), logits (N, C)) on the CPU, float32."""
        feats, logits = [], []
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(self.device).float()
            if x.shape[-2:] != (self.resolution, self.resolution):
                size = (self.resolution, self.resolution)
                x = F.interpolate(x, size=size, mode="bicubic", antialias=True).round().clamp(0, 255)
            self._captured.clear()
            logits.append(self.net(normalize(x)).float().cpu())
            feats.append(self._captured[-1].flatten(1).float().cpu())
        self._captured.clear()
        if not feats:
            return torch.zeros(0, 0), torch.zeros(0, len(self.classes))
        return torch.cat(feats), torch.cat(logits)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images)[0]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images)[1]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).argmax(dim=1)

    @classmethod
    def load(cls, weights: Path, device: str = "cpu") -> Judge:
        """A cached judge: ``<name>.safetensors`` + ``<name>.json``."""
        from safetensors.torch import load_file

        meta = Path(weights).with_suffix(".json")
        if not Path(weights).is_file() or not meta.is_file():
            raise UserError(f"no judge at '{weights}' (needs the .safetensors and its .json)")
        info = json.loads(meta.read_text())
        net = build_net(info["net"], len(info["classes"]), info["resolution"])
        net.load_state_dict(load_file(str(weights)))
        return cls(net, info["classes"], info["resolution"], info, device)

    def save(self, weights: Path) -> None:
        from safetensors.torch import save_file

        weights = Path(weights)
        weights.parent.mkdir(parents=True, exist_ok=True)
        tmp = weights.with_name(f".{weights.stem}.{os.getpid()}.tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}, str(tmp))
        meta_tmp = tmp.with_suffix(".json.tmp")
        meta_tmp.write_text(json.dumps(self.info, indent=2) + "\n")
        os.replace(tmp, weights)  # weights first: a judge counts as cached only once its .json exists
        os.replace(meta_tmp, weights.with_suffix(".json"))


def train_judge(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    net_name: str,
    epochs: int,
    seed: int,
    device: str = "cpu",
    recipe: JudgeRecipe = JudgeRecipe(),
    progress: bool = True,
) -> nn.Module:
    """A fresh ``net_name`` trained on uint8 ``images``; the seed fixes the init and every draw."""
    torch.manual_seed(seed)
    net = build_net(net_name, num_classes, images.shape[-1]).to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(
        net.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, nesterov=True
    )
    steps_per_epoch = math.ceil(len(images) / recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe.lr, total_steps=epochs * steps_per_epoch, pct_start=recipe.warmup
    )
    images, labels = images.to(device), labels.to(device)
    bar = tqdm(range(epochs), desc=f"judge {net_name}", disable=not progress, leave=False)
    for _ in bar:
        net.train()
        order = torch.randperm(len(images), generator=gen).to(device)
        for i in range(0, len(images), recipe.batch_size):
            idx = order[i : i + recipe.batch_size]
            x = random_resized_crop_flip(images[idx], gen, recipe.crop_scale)
            loss = F.cross_entropy(net(normalize(x)), labels[idx], label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return net.eval()


def cache_root(cache_dir: Path | str | None) -> Path:
    root = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    if root.exists() and not root.is_dir():
        raise UserError(f"judge cache '{root}' is a file; give --cache-dir a folder")
    return root


def load_or_train_judge(
    real_train: Path,
    resolution: int,
    net: str = DEFAULT_NET,
    epochs: int | None = None,
    seed: int = 0,
    cache_dir: Path | str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> Judge:
    """The judge for (real train files, classes, net, resolution, epochs, seed): loaded from the cache,
    or trained on every class of ``real_train`` and cached (safetensors + json)."""
    epochs = DEFAULT_EPOCHS if epochs is None else epochs
    if epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}")
    if net not in NET_NAMES:
        raise UserError(f"unknown network '{net}': choose one of {', '.join(NET_NAMES)}")
    if resolution < 1:
        raise UserError(f"--resolution must be positive, got {resolution}")
    build_net(net, 2, resolution)  # fail on a bad net/resolution before reading any image
    files = scan_classes(real_train, "real train")
    classes = sorted(files)
    settings = {"recipe": RECIPE_VERSION, "net": net, "resolution": resolution, "epochs": epochs, "seed": seed}
    key = digest({**settings, "classes": classes, "files": listing(files, classes)})
    weights = cache_root(cache_dir) / f"{net}_{resolution}px_{epochs}ep_seed{seed}_{key}.safetensors"
    if weights.is_file() and weights.with_suffix(".json").is_file():
        judge = Judge.load(weights, device)
        judge.info["cached"] = True
        return judge
    t0 = time.perf_counter()
    paths = [p for c in classes for p in files[c]]
    labels = [i for i, c in enumerate(classes) for _ in files[c]]
    train = load_images(paths, labels, resolution)
    t_loaded = time.perf_counter()
    model = train_judge(train.images, train.labels, len(classes), net, epochs, seed, device, progress=progress)
    t_trained = time.perf_counter()
    info = {
        **settings,
        "cache_key": key,
        "classes": classes,
        "real_train": str(Path(real_train).resolve()),
        "num_train": len(paths),
        "recipe_settings": asdict(JudgeRecipe()) | {"augment": "random-resized-crop (0.5, 1) + flip", "epochs": epochs},
        "train_device": device,
        "train_threads": torch.get_num_threads(),
        "load_s": round(t_loaded - t0, 2),
        "train_s": round(t_trained - t_loaded, 2),
        "versions": library_versions(),
    }
    judge = Judge(model, classes, resolution, info, device)
    judge.save(weights)
    judge.info["cached"] = False
    return judge


# ---------------------------------------------------------------- judging a set


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
    files = scan_classes(real_val, "real val")
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
    memo = judge._memo.get("val")
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
    judge._memo["val"] = (key, scored)
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
    train_files = scan_classes(real_train, "real train")
    missing = [c for c in classes if c not in train_files]
    if missing:
        raise UserError(f"real train folder '{real_train}' lacks class(es) {', '.join(missing)}")
    key = digest({"val": judge._memo["val"][0], "train": listing(train_files, classes), "seed": seed, "counts": counts})
    memo = judge._memo.get("references")
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
    judge._memo["references"] = (key, refs)
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
    sample_files = scan_classes(samples, "samples")
    check_complete(samples)
    scan_classes(Path(real_val), "real val")  # every input checked before the judge trains (minutes)
    cache_root(cache_dir)
    resolve_device(device)
    if resolution is None:
        resolution = image_size(sample_files) if judge is None else judge.resolution
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
