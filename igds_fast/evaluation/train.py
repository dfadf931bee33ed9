"""Train on a distilled set, test on the real val set: MinimaxDiffusion's protocol (docs/evaluation.md)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..augment import random_resized_crop_flip
from ..config import resolve_device
from ..errors import UserError
from ..imagefolder import load_split, match_classes, scan_image_folder
from ..imageio import open_nofollow, write_atomic
from ..machine import library_versions
from .data import cutmix, normalize
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


PRECISIONS = ("fp32", "bf16")
# Val accuracy is read this many times over a run (the best-epoch column; the last reading is the final one):
# one reading of the 3,925 Imagenette val images takes ~6-12 s on the CPU here, 20-40 IPC 10 epochs.
TEST_POINTS = 10


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast for the forward passes (2.9x per step on an AMX CPU for ConvNet-3 at 32 px), or nothing."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def reading_epochs(epochs: int) -> list[int]:
    """The epochs (1-based) after which the val set is tested: evenly spaced, always including the last."""
    step = max(1, epochs // TEST_POINTS)
    return sorted({*range(step, epochs + 1, step), epochs})


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
def top1_accuracy(
    net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int, precision: str = "fp32"
) -> float:
    net.eval()
    device = next(net.parameters()).device
    correct = 0
    for i in range(0, len(images), batch_size):
        with autocast(precision, str(device)):
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
    precision: str = "fp32",
    on_epoch: Callable[[int, torch.nn.Module], None] | None = None,
) -> torch.nn.Module:
    """Train a fresh ``net_name`` on uint8 ``images``; the seed fixes the init and every data/augment draw.

    ``on_epoch(epoch, net)`` runs after each epoch (1-based), e.g. to test the net part-way.
    """
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
    for epoch in bar:
        net.train()
        order = torch.randperm(len(images), generator=gen).to(device)
        for i in range(0, len(images), protocol.batch_size):
            idx = order[i : i + protocol.batch_size]
            x = random_resized_crop_flip(images[idx], gen, protocol.crop_scale)
            x, perm, kept = cutmix(x, gen)
            y, y_partner = labels[idx], labels[idx][perm.to(device)]
            with autocast(precision, device):
                logits = net(normalize(x)).float()
            loss = kept * F.cross_entropy(logits, y) + (1 - kept) * F.cross_entropy(logits, y_partner)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if on_epoch is not None:
            on_epoch(epoch + 1, net)
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


def partial_path(out: Path) -> Path:
    """Where evaluate keeps finished seeds while it runs (a rerun resumes from it)."""
    return out.with_name(out.name + ".partial")


def lock_path(path: Path) -> Path:
    """The file ``locked`` holds for ``path``."""
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``lock_path(path)`` (POSIX flock; no lock where fcntl is missing). The lock
    file is opened without following a link and never truncated (a link there is refused)."""
    try:
        import fcntl
    except ImportError:  # Windows: one process per results file
        yield
        return
    fd = open_nofollow(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def train_one_seed(
    net: str,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    epochs: int,
    seed: int,
    device: str,
    precision: str,
    progress: bool,
) -> dict[str, Any]:
    """One seed: val accuracy at ``reading_epochs`` (the curve), the final and the best of those."""
    checkpoints = set(reading_epochs(epochs))
    curve: list[list[float]] = []

    def test(epoch: int, trained: torch.nn.Module) -> None:
        if epoch in checkpoints:
            curve.append([epoch, top1_accuracy(trained, *val, TrainProtocol.test_batch_size, precision)])

    t = time.perf_counter()
    train_net(net, *train, num_classes, epochs, seed, device, progress=progress, precision=precision, on_epoch=test)
    best_epoch, best = max(curve, key=lambda point: (point[1], -point[0]))  # earliest epoch among ties
    return {
        "seed": seed,
        "final": curve[-1][1],
        "best": best,
        "best_epoch": int(best_epoch),
        "curve": curve,
        "seconds": round(time.perf_counter() - t, 3),
    }


def finished_seeds(paths: list[Path], settings: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Seeds already trained with these exact settings: in an interrupted run's partial file, or in an
    earlier results file (so ``--seeds 3`` extends a 1-seed result). A file of another run is an error;
    a results file from before per-seed records is replaced."""
    done: dict[int, dict[str, Any]] = {}
    for path in paths:
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
            if "runs" not in record and "settings" not in record and "accuracies" in record:
                continue  # an older results file: no per-seed records to keep
            runs = {int(r["seed"]): r for r in record["runs"]}
            same = record["settings"] == settings
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"'{path}' is not an evaluate results or partial file ({e}); move it away") from None
        if not same:
            raise UserError(
                f"'{path}' holds seeds of an evaluate run with other settings (set, val, net, epochs or precision): "
                "move it away or choose another --out"
            )
        done |= runs
    return done


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
    precision: str = "fp32",
    out: Path | None = None,
    only: list[int] | None = None,
) -> dict[str, Any] | None:
    """Train ``net`` once per seed on ``train_dir`` and test on ``val_dir``; the results.json record.

    With ``out`` (the results file ``write_results`` will write), each finished seed is saved in
    ``partial_path(out)``, and seeds found there or in an earlier ``out`` with the same settings are not
    trained again. ``only``: train just these of ``seeds`` now (several processes, one per seed, may share
    ``out``: the partial file is merged under a lock); None while other seeds are still missing.
    """
    t0 = time.perf_counter()
    resolve_device(device)
    check_precision(precision)
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
    if only is not None:
        if out is None:
            raise UserError("training only some seeds needs a results file (--out) to gather them in")
        if stray := sorted(set(only) - set(seeds)):
            raise UserError(f"--only-seed {stray[0]} is not one of seeds 0..{max(seeds)}: raise --seeds")
    settings = {
        "train_dir": str(train_dir.resolve()),
        "val_dir": str(val_dir.resolve()),
        "net": net,
        "resolution": resolution,
        "epochs": used_epochs,
        "precision": precision,
        "classes": classes,
    }
    partial = partial_path(out) if out is not None else None
    done = finished_seeds([out, partial] if out is not None else [], settings)
    train = load_split(train_files, classes, resolution)
    val = load_split(val_files, classes, resolution)
    t_loaded = time.perf_counter()
    for seed in seeds:
        if seed in done:
            if progress:
                tqdm.write(f"seed {seed}: top-1 {100 * done[seed]['final']:.2f}% (trained before)")
            continue
        if only is not None and seed not in only:
            continue
        r = train_one_seed(net, train, val, len(classes), used_epochs, seed, device, precision, progress)
        done[seed] = r
        if partial is not None:
            with locked(partial):  # another process may have added its seeds meanwhile
                done |= finished_seeds([partial], settings) | {seed: r}
                record = {"settings": settings, "runs": [done[k] for k in sorted(done)]}
                write_atomic(partial, (json.dumps(record, indent=1) + "\n").encode())
        if progress:
            tqdm.write(
                f"seed {seed}: top-1 {100 * r['final']:.2f}% final, {100 * r['best']:.2f}% best "
                f"(epoch {r['best_epoch']}) ({r['seconds']:.1f} s)"
            )
    if only is not None:
        with locked(partial):
            done |= finished_seeds([out, partial], settings)
        if any(seed not in done for seed in seeds):
            return None
    runs = [done[seed] for seed in sorted(done)]  # seeds trained before are never dropped
    finals = [r["final"] for r in runs]
    bests = [r["best"] for r in runs]
    return {
        "method": method or method_name(info, train_dir),
        "ipc": ipc,
        "net": net,
        "resolution": resolution,
        "seeds": [r["seed"] for r in runs],
        "accuracies": finals,
        "mean": float(np.mean(finals)),
        "std": float(np.std(finals)),  # population std over seeds, as numpy/the papers report it
        # The best of TEST_POINTS val readings: selection on the test set, so optimistic (papers often report it).
        "best_accuracies": bests,
        "best_epochs": [r["best_epoch"] for r in runs],
        "best_mean": float(np.mean(bests)),
        "best_std": float(np.std(bests)),
        "runs": runs,  # per seed: final, best, best_epoch, the val curve, seconds
        "epochs": used_epochs,
        "epochs_protocol": protocol_epochs,
        "scaled_down": used_epochs != protocol_epochs,
        "precision": precision,
        "train_dir": str(train_dir),
        "val_dir": str(val_dir),
        "classes": classes,
        "num_train": len(train[1]),
        "num_val": len(val[1]),
        "protocol": asdict(TrainProtocol())
        | {"milestones": "2/3, 5/6 of epochs", "augment": "random-resized-crop, flip, cutmix(beta 1, p 1)"},
        "device": device,
        "settings": settings,  # what a rerun must match to reuse these seeds
        "versions": library_versions(),
        "timings": {
            "load_s": round(t_loaded - t0, 3),
            "train_test_s": [r["seconds"] for r in runs],
            "total_s": round(time.perf_counter() - t0, 3),
        },
    }


def write_results(out: Path, results: dict[str, Any]) -> None:
    """The finished results file, then its partial file is dropped (the results now hold every seed)."""
    write_atomic(out, (json.dumps(results, indent=2) + "\n").encode())
    partial = partial_path(out)
    partial.unlink(missing_ok=True)
    lock_path(partial).unlink(missing_ok=True)


def seed_list(count: int) -> list[int]:
    if count < 1:
        raise UserError(f"--seeds must be at least 1, got {count}")
    return list(range(count))
