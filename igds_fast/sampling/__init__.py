"""Sampling: a guided step (an engine) run over a schedule, one batch at a time; the work units a
class is split into and the batches they are sampled in; the assembly of models into a guided step."""

from .chain import ChainResult, ChunkResult, memory_tensors, run_batch, run_chain, run_group
from .engine import StepEngine
from .units import (
    Batch,
    WorkUnit,
    batch_rows,
    class_groups,
    class_units,
    group_batches,
    memory_rows,
    shard_classes,
)

__all__ = [
    "Batch",
    "ChainResult",
    "ChunkResult",
    "StepEngine",
    "WorkUnit",
    "batch_rows",
    "class_groups",
    "class_units",
    "group_batches",
    "memory_rows",
    "memory_tensors",
    "run_chain",
    "run_batch",
    "run_group",
    "shard_classes",
]
