"""Up-front limits: estimate a distill job's memory and disk from its shape and refuse, with the
numbers, a job this machine cannot hold (before any weights load or any file is written).

Memory: a class's chunks run in order, each seeing every earlier chunk's critic features at every
step, so the feature memory of a class is ``steps x IPC x features x 4 B``, held twice (the stored
chunks and the engine's padded memory input). Each image writer thread holds one resized image and
its encoded bytes (``2 x R^2 x 3 B``). Disk: every image (PNG at most its raw size plus headers,
JPEG about a quarter), the stored features of every unit, and a manifest row per image.
The clip guard's decoder gradient (``check_clip_guard_memory``) is checked once the engine is built,
against the memory where it computes (a GPU's included), before the first chunk.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..memory import MEMORY_HEADROOM, available_memory, check_memory, device_free_memory, gib
from ..sampling.engine import StepEngine

WRITER_THREADS = 2
MANIFEST_ROW_BYTES = 256
# Images per class: a class's images are sampled as one run, every chunk guided against all the
# class's earlier ones (its work grows with IPC squared). Distilled sets keep IPC far below the
# ~1300 real images of an ImageNet class; past this an IPC is a typo, not a job.
MAX_IPC = 10_000


@dataclass(frozen=True)
class JobShape:
    classes: int  # classes this run writes (its shard)
    ipc: int
    batch_size: int
    num_steps: int
    feat_dim: int
    image_side: int  # written images' side in px
    image_format: str = "png"


def memory_bytes(s: JobShape) -> dict[str, int]:
    feats = 2 * s.num_steps * s.ipc * s.feat_dim * 4
    images = WRITER_THREADS * 2 * s.image_side**2 * 3 + s.batch_size * s.image_side**2 * 3
    return {"feature_memory": feats, "image_buffers": images}


def disk_bytes(s: JobShape, images_left: int | None = None) -> int:
    n = s.classes * s.ipc if images_left is None else images_left
    per_image = s.image_side**2 * 3 + 1024
    if s.image_format == "jpeg":
        per_image = per_image // 4 + 1024
    feats = s.num_steps * s.feat_dim * 4
    return n * (per_image + feats + MANIFEST_ROW_BYTES)


def free_disk(out: Path) -> int | None:
    """Free bytes on the filesystem that holds (or will hold) ``out``."""
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    with contextlib.suppress(OSError):
        return shutil.disk_usage(probe).free
    return None


def check_limits(
    s: JobShape, out: Path, images_left: int | None = None, memory: int | None = -1, disk: int | None = -1
) -> dict[str, int]:
    """Refuse a job whose estimate exceeds this machine (``memory``/``disk``: override what is measured)."""
    mem = memory_bytes(s)
    need_mem = sum(mem.values())
    have_mem = available_memory() if memory == -1 else memory
    if have_mem is not None:
        if mem["feature_memory"] >= mem["image_buffers"]:
            what = (
                f"the {s.num_steps} steps x {s.ipc} images x {s.feat_dim} critic features of a class that "
                f"--ipc {s.ipc} keeps"
            )
            fix = "lower --ipc (a class's images are sampled together; shards split classes, not a class)"
        else:
            what = f"the buffers to resize and encode {s.image_side} px images"
            fix = "lower --resolution"
        check_memory(need_mem, what, fix, have=have_mem)
    need_disk = disk_bytes(s, images_left)
    have_disk = free_disk(out) if disk == -1 else disk
    if have_disk is not None and need_disk > have_disk:
        n = s.classes * s.ipc if images_left is None else images_left
        raise UserError(
            f"{n} images of {s.image_side} px ({s.image_format}) need about {gib(need_disk)} of disk, "
            f"'{out}' has {gib(have_disk)} free; free space, choose another --out, or lower --ipc/--resolution"
        )
    if s.ipc > MAX_IPC:  # fits, but is no distilled set: days of sampling
        raise UserError(
            f"--ipc {s.ipc} is more than {MAX_IPC} images per class: a class's images are sampled together, "
            "each guided against all earlier ones (work grows with IPC squared); use a smaller --ipc"
        )
    return {"memory_bytes": need_mem, "disk_bytes": need_disk}


def check_clip_guard_memory(engine: StepEngine, batch: int, have: int | None = -1) -> int:
    """Refuse a batch whose clip guard would not fit: at every guided step it differentiates the decoder
    for the whole batch (a chunk of one class: at most --batch-size and IPC), keeping its activations
    (``clip_guard_bytes`` per image; ~1.4 GiB fp32 for the SD VAE at 256 px). Without this check an
    over-large batch fails at the first guided step, 35 of 50 steps into the first chunk. ``have``: the
    memory to compare with (default: free where the engine computes). Returns the bytes needed (0: no
    clip guard, or an exported engine, which allocates its own)."""
    per_image = engine.clip_guard_bytes()
    if per_image == 0:
        return 0
    need = batch * per_image
    have = device_free_memory(engine.device) if have == -1 else have
    if have is not None:
        fits = max(1, int(MEMORY_HEADROOM * have) // per_image)
        check_memory(
            need,
            f"the activations the clip guard keeps for a batch of {batch} on {engine.device} "
            f"({gib(per_image)} per image)",
            f"lower --batch-size (about {fits} fits) or pass --clip-guard 0",
            have=have,
        )
    return need
