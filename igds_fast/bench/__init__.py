"""``igds-fast bench``: every backend side by side on one model, as JSON with machine and versions."""

from .config import BenchConfig
from .run import BenchTerminated, run_bench, write_json

__all__ = ["BenchConfig", "BenchTerminated", "run_bench", "write_json"]
