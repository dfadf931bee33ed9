"""Work units of a distill job: (class, chunk of sample indices).

Chunks depend only on (IPC, batch size), never on the number of shards or workers, so sharding,
ordering and resuming cannot change which samples share a batch, and so cannot change outputs.
A class's chunks run in order on one worker: chunk k's entropy term pairs with the features of
chunks 0..k-1 (the memory). Shards and Ray workers therefore split classes, not chunks.
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


def class_units(wnid: str, label: int, ipc: int, batch_size: int) -> list[WorkUnit]:
    return [
        WorkUnit(wnid, label, k, start, min(batch_size, ipc - start))
        for k, start in enumerate(range(0, ipc, batch_size))
    ]


def memory_rows(ipc: int, batch_size: int) -> int:
    """Memory rows the last chunk of a class needs: the features of all earlier chunks."""
    return max(0, (ipc - 1) // batch_size) * batch_size


def shard_classes(wnids: list[str], shard: int, num_shards: int) -> list[str]:
    """Classes of one shard: every n-th class of the job's class list."""
    return [w for k, w in enumerate(wnids) if k % num_shards == shard]
