"""Train on a distilled set, test on the real val set: MinimaxDiffusion's protocol (docs/evaluation.md)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import resolve_device
from ..errors import UserError
from ..imagefolder import load_split, match_classes, scan_image_folder
from ..machine import library_versions
from .data import cutmix, normalize, random_resized_crop_flip
from .networks import build_net


@dataclass(frozen=True)
class TrainProtocol:
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    gamma: float = 0.2
    crop_scale: tuple[float, float] = (0.5, 1.0)
    test_batch_size: int = 500


def epochs_for_ipc(ipc: int, num_classes: int) -> int:
    """Minimax's schedule: fewer images per class, more epochs; 2/3 as many for 100 or more classes."""
    if ipc <= 1:
        epochs = 3000
    elif ipc <= 10:
        epochs = 2000
    elif ipc <= 50:
        epochs = 1500
    elif ipc <= 200:
        epochs = 1000
    elif ipc <= 500:
        epochs = 500
    else:
        epochs = 300
    return epochs * 2 // 3 if num_classes >= 100 else epochs


@torch.no_grad()
def top1_accuracy(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    net.eval()
    device = next(net.parameters()).device
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = net(normalize(images[i : i + batch_size].to(device)))
        correct += int((logits.argmax(1).cpu() == labels[i : i + batch_size]).sum())
    return correct / len(images)


def train_net(
    net_name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    epochs: int,
    seed: int,
    device: str = "cpu",
    protocol: TrainProtocol = TrainProtocol(),
    progress: bool = True,
) -> torch.nn.Module:
    """Train a fresh ``net_name`` on uint8 ``images``; the seed fixes the init and every data/augment draw."""
    images, labels = images.to(device), labels.to(device)
    torch.manual_seed(seed)
    net = build_net(net_name, num_classes, images.shape[-1]).to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(
        net.parameters(), lr=protocol.lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay
    )
    milestones = [2 * epochs // 3, 5 * epochs // 6]  # Minimax's integer rounding
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=protocol.gamma)
    bar = tqdm(range(epochs), desc=f"{net_name} seed {seed}", disable=not progress, leave=False)
    for _ in bar:
        net.train()
        order = torch.randperm(len(images), generator=gen).to(device)
        for i in range(0, len(images), protocol.batch_size):
            idx = order[i : i + protocol.batch_size]
            x = random_resized_crop_flip(images[idx], gen, protocol.crop_scale)
            x, perm, kept = cutmix(x, gen)
            y, y_partner = labels[idx], labels[idx][perm.to(device)]
            logits = net(normalize(x))
            loss = kept * F.cross_entropy(logits, y) + (1 - kept) * F.cross_entropy(logits, y_partner)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return net


def read_run_info(train_dir: Path) -> dict[str, Any]:
    """The set's ``run.json``, or {} for a plain ImageFolder."""
    path = train_dir / "run.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except ValueError as e:  # bad JSON, or bytes that are not UTF-8 text
        raise UserError(f"'{path}' is not valid JSON: {e}") from None
    if not isinstance(info, dict):
        raise UserError(
            f"'{path}' is not a run record (it holds a {type(info).__name__}); rerun the command that made the set"
        )
    if info.get("complete") is False:
        raise UserError(f"'{train_dir}' is incomplete (run.json says so): rerun the command that made it")
    return info


def method_name(info: dict[str, Any], train_dir: Path) -> str:
    """'random-real', the distill run's guidance ('igds', 'off' -> 'dit'), or the folder name."""
    if info.get("method"):
        return str(info["method"])
    if info.get("kind") == "distilled":
        guidance = info.get("guidance", info.get("config", {}).get("guidance"))
        return {"igds": "igds", "off": "dit"}.get(guidance, "distilled")
    return str(info.get("kind") or train_dir.name)


def images_per_class(info: dict[str, Any], files: dict[str, list[Path]], classes: list[str]) -> int:
    counts = {w: len(files[w]) for w in classes}
    ipc = info.get("ipc")
    if ipc is not None:
        wrong = {w: n for w, n in counts.items() if n != ipc}
        if wrong:
            w, n = next(iter(wrong.items()))
            raise UserError(f"class {w} holds {n} images but run.json says ipc {ipc}: the set is incomplete")
        return int(ipc)
    return max(counts.values())


def evaluate_set(
    train_dir: Path,
    val_dir: Path,
    net: str,
    resolution: int,
    seeds: list[int],
    epochs: int | None = None,
    class_order: list[str] | None = None,
    method: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``net`` once per seed on ``train_dir`` and test on ``val_dir``; the results.json record."""
    t0 = time.perf_counter()
    resolve_device(device)
    build_net(net, 2, resolution)  # fail on a bad net/resolution before loading any image
    info = read_run_info(train_dir)
    train_files = scan_image_folder(train_dir, "train")
    val_files = scan_image_folder(val_dir, "val")
    order = class_order if class_order is not None else info.get("classes")
    classes = match_classes(order, set(train_files), set(val_files))
    ipc = images_per_class(info, train_files, classes)
    protocol_epochs = epochs_for_ipc(ipc, len(classes))
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}")
    used_epochs = epochs if epochs is not None else protocol_epochs
    train = load_split(train_files, classes, resolution)
    val = load_split(val_files, classes, resolution)
    t_loaded = time.perf_counter()
    accuracies, seconds = [], []
    for seed in seeds:
        t = time.perf_counter()
        trained = train_net(net, *train, len(classes), used_epochs, seed, device, progress=progress)
        acc = top1_accuracy(trained, *val, TrainProtocol.test_batch_size)
        accuracies.append(acc)
        seconds.append(round(time.perf_counter() - t, 3))
        if progress:
            tqdm.write(f"seed {seed}: top-1 {100 * acc:.2f}% ({seconds[-1]:.1f} s)")
    return {
        "method": method or method_name(info, train_dir),
        "ipc": ipc,
        "net": net,
        "resolution": resolution,
        "seeds": list(seeds),
        "accuracies": accuracies,
        "mean": float(np.mean(accuracies)),
        "std": float(np.std(accuracies)),  # population std over seeds, as numpy/the papers report it
        "epochs": used_epochs,
        "epochs_protocol": protocol_epochs,
        "scaled_down": used_epochs != protocol_epochs,
        "train_dir": str(train_dir),
        "val_dir": str(val_dir),
        "classes": classes,
        "num_train": len(train[1]),
        "num_val": len(val[1]),
        "protocol": asdict(TrainProtocol())
        | {"milestones": "2/3, 5/6 of epochs", "augment": "random-resized-crop, flip, cutmix(beta 1, p 1)"},
        "device": device,
        "versions": library_versions(),
        "timings": {
            "load_s": round(t_loaded - t0, 3),
            "train_test_s": seconds,
            "total_s": round(time.perf_counter() - t0, 3),
        },
    }


def seed_list(count: int) -> list[int]:
    if count < 1:
        raise UserError(f"--seeds must be at least 1, got {count}")
    return list(range(count))
