"""Work units of a distill job, and the batches they are sampled in.

A unit is one chunk of one class's sample indices: what a set records, checks and repairs. A batch
is what one denoiser call holds: chunk k of every class of a *group* of consecutive classes, so an
IPC 1 job over many classes still fills the batch. Chunks, groups and batches depend only on the
class list, IPC and batch size, never on the number of shards or workers, so sharding, ordering and
resuming cannot change which samples share a batch, and so cannot change outputs. A group's batches
run in chunk order on one worker: chunk k's diversity term pairs each class with the features of its
own chunks 0..k-1 (the memory). Shards and Ray workers therefore split groups, not chunks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkUnit:
    wnid: str
    label: int  # the denoiser's class label
    chunk: int
    start: int  # first sample index of the chunk
    count: int

    @property
    def indices(self) -> range:
        return range(self.start, self.start + self.count)

    @property
    def key(self) -> str:
        return f"{self.wnid}-{self.chunk:04d}"


# The units sampled together in one batch: chunk k of each class of a group, in class order.
Batch = tuple[WorkUnit, ...]


def chunk_size(ipc: int, batch_size: int) -> int:
    """Samples of one class in one batch."""
    return min(ipc, batch_size)


def classes_per_batch(ipc: int, batch_size: int) -> int:
    """Classes sampled side by side: as many whole chunks as the batch holds."""
    return max(1, batch_size // chunk_size(ipc, batch_size))


def class_units(wnid: str, label: int, ipc: int, batch_size: int) -> list[WorkUnit]:
    """A class's units, in chunk order."""
    size = chunk_size(ipc, batch_size)
    return [WorkUnit(wnid, label, k, start, min(size, ipc - start)) for k, start in enumerate(range(0, ipc, size))]


def group_batches(classes: list[tuple[str, int]], ipc: int, batch_size: int) -> list[Batch]:
    """The batches of one group of (wnid, label) classes, in chunk order."""
    per_class = [class_units(w, label, ipc, batch_size) for w, label in classes]
    return [tuple(units[k] for units in per_class) for k in range(len(per_class[0]))] if per_class else []


def class_groups(wnids: list[str], ipc: int, batch_size: int) -> list[list[str]]:
    """The job's classes in groups of ``classes_per_batch`` consecutive ones (the last may be smaller)."""
    n = classes_per_batch(ipc, batch_size)
    return [wnids[k : k + n] for k in range(0, len(wnids), n)]


def batch_rows(ipc: int, batch_size: int, num_classes: int) -> int:
    """Rows of a job's fullest batch (an exported engine's static batch): at most ``batch_size``."""
    return min(num_classes, classes_per_batch(ipc, batch_size)) * chunk_size(ipc, batch_size)


def memory_rows(ipc: int, batch_size: int) -> int:
    """Memory rows the last batch of a class needs: the features of its earlier chunks. Only a class
    that fills batches alone has earlier chunks, so a batch never needs more."""
    return max(0, (ipc - 1) // batch_size) * batch_size


def shard_classes(wnids: list[str], shard: int, num_shards: int, ipc: int, batch_size: int) -> list[str]:
    """Classes of one shard: the classes of every n-th group (one class per group unless the batch
    holds several)."""
    groups = class_groups(wnids, ipc, batch_size)
    return [w for k, g in enumerate(groups) if k % num_shards == shard for w in g]
