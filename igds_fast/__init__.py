"""igds-fast: Information-Guided Diffusion Sampling for dataset distillation.

The Python API (docs/api.md)::

    import igds_fast

    res = igds_fast.distill(out="set", classes=["n01440764", "n02102040"], ipc=2, steps=10)
    print(res.images, res.out)

``distill``, ``export``, ``sample``, ``evaluate`` and ``quality`` take the keyword arguments of the
commands of the same names and return result dataclasses; bad input raises ``UserError``. Importing
the package loads nothing heavy: the API (and torch) load on first use of one of these names, so the
API can still set the process's OpenMP wait policy before torch starts.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "distill",
    "export",
    "sample",
    "evaluate",
    "quality",
    "recipes",
    "DistillResult",
    "ExportResult",
    "SampleResult",
    "EvaluateResult",
    "QualityResult",
    "StepConfig",
    "UserError",
    "__version__",
]
# Where each name of the API is defined, imported on its first use (PEP 562).
_LAZY = {name: "api" for name in __all__[:11]} | {"StepConfig": "config", "UserError": "errors"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # import_module, not an import statement: the package's own import of its API is a lazy lookup,
    # not a dependency of the modules below that read __version__ (the import layers stay one way).
    value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
