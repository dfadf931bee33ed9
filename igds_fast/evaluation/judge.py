"""The independent judge: a classifier trained on real images, cached on disk, and its features.

The judge is one of the evaluation networks (default ConvNet-3) trained once on a real train split at
the set's resolution and cached under a key of everything its training depends on; it never sees the
guidance critics. ``scoring`` turns its outputs on a sample set into the metrics.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..augment import random_resized_crop_flip
from ..errors import UserError
from ..imagefolder import digest, listing, read_image_saturation, read_images, save_npz, scan_image_folder, stack_images
from ..imageio import write_atomic
from ..machine import library_versions
from .data import normalize
from .networks import NET_NAMES, build_net

DEFAULT_NET = "convnet3"
DEFAULT_EPOCHS = 6
DEFAULT_CACHE_DIR = Path("~/.cache/igds-fast/judges")
# Bump when the judge's training recipe changes: part of the cache key, so old judges are not reused.
RECIPE_VERSION = 1
IMAGE_FIELDS = ("images", "labels", "saturated", "values")


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


@dataclass
class ImageSet:
    """Images of some classes: uint8 (N, 3, R, R), labels (N,) = positions in the judge's classes,
    and per image the saturated and total stored values."""

    images: torch.Tensor
    labels: torch.Tensor
    saturated: torch.Tensor
    values: torch.Tensor


def load_images(
    paths: list[Path], labels: list[int], resolution: int, cache: Path | None = None, workers: int = 4
) -> ImageSet:
    """Read (and resize) ``paths``; with ``cache``, an .npz of the result is reused when present."""
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            return ImageSet(*(torch.from_numpy(z[k]) for k in IMAGE_FIELDS))
    if not paths:
        raise UserError("no images to read")
    read = read_images(paths, lambda p: read_image_saturation(p, resolution), resolution, workers)
    out = ImageSet(
        stack_images([r[0] for r in read]),
        torch.tensor(labels, dtype=torch.int64),
        torch.tensor([r[1] for r in read], dtype=torch.int64),
        torch.tensor([r[2] for r in read], dtype=torch.int64),
    )
    if cache is not None:
        save_npz(cache, {k: getattr(out, k).numpy() for k in IMAGE_FIELDS})
    return out


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
        # real-image outputs reused across the sets of one process (``scoring.judge_samples``), keyed by their inputs
        self.memo: dict[str, tuple[str, Any]] = {}

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
        """Weights, then their ``.json`` (a judge counts as cached only once its .json exists), each
        written atomically (never through a link; a full disk in one line)."""
        from safetensors.torch import save

        weights = Path(weights)
        weights.parent.mkdir(parents=True, exist_ok=True)
        data = save({k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()})
        write_atomic(weights, data)
        write_atomic(weights.with_suffix(".json"), (json.dumps(self.info, indent=2) + "\n").encode())


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
    files = scan_image_folder(real_train, "real train")
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
