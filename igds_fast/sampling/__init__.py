"""Sampling: a guided step (an engine) run over a schedule, one batch or one chunk of a class at a
time; the work units a class is split into; the assembly of models into a guided step."""

from .chain import ChainResult, ChunkResult, memory_tensors, run_chain, run_chunk, run_class
from .engine import StepEngine
from .units import WorkUnit, class_units, memory_rows, shard_classes

__all__ = [
    "ChainResult",
    "ChunkResult",
    "StepEngine",
    "WorkUnit",
    "class_units",
    "memory_rows",
    "memory_tensors",
    "run_chain",
    "run_chunk",
    "run_class",
    "shard_classes",
]
