"""What identifies a distilled set: ``DistillConfig`` (every option that changes its bytes), its
fingerprint and job digest (including the digests older releases recorded the same job under), and
the work units it is made of."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..config import step_spellings
from ..errors import UserError
from ..sampling import WorkUnit, class_units
from .state import digest


@dataclass
class DistillConfig:
    """What defines the output; two runs with equal configs produce byte-identical sets."""

    wnids: list[str]
    labels: list[int]  # the denoiser's label of each class
    ipc: int
    batch_size: int
    seed: int
    image_format: str = "png"
    resolution: int | None = None  # resize written images (bicubic); None keeps the model's size
    step: dict[str, Any] = field(default_factory=dict)  # StepConfig.identity() of the engine
    models: dict[str, str | None] = field(default_factory=dict)  # sha256 of denoiser, vae, critics
    backend: str = "eager"
    engine_id: str | None = None
    precision: str = "fp32"  # the denoiser's precision (eager dtype, or the engine's)
    engine_key: str | None = None  # an engine from the cache: the digest of what it is built from

    def validate(self) -> DistillConfig:
        if self.ipc <= 0:
            raise UserError(f"--ipc must be >= 1, got {self.ipc}")
        if self.batch_size <= 0:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.resolution is not None and self.resolution < 8:
            raise UserError(f"--resolution must be >= 8, got {self.resolution}")
        if self.image_format not in ("png", "jpeg"):
            raise UserError(f"unknown --format '{self.image_format}': use png or jpeg")
        if not self.wnids:
            raise UserError("no classes to distill")
        return self

    def fingerprint(self) -> dict[str, Any]:
        """The fields that change images. The backend and precision may differ only by numerics, so
        they count. A cached engine counts by what it is built from (``engine_key``): re-exporting it
        after the cache was cleared gives a new manifest id (its creation time) but the same step."""
        fp = asdict(self)
        if self.engine_key is not None:
            fp.pop("engine_id")
        return fp

    @property
    def digest(self) -> str:
        return digest(self.fingerprint())

    def digests(self) -> set[str]:
        """Every digest this job's units may be recorded under: today's, and those of releases which wrote
        the step's added fields out at their old values (``step_spellings``)."""
        fp = self.fingerprint()  # its step is the identity: the first spelling, so today's digest is among them
        return {digest(fp | {"step": step}) for step in step_spellings(self.step)}

    @classmethod
    def from_fingerprint(cls, fp: dict[str, Any]) -> DistillConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in fp.items() if k in names})


def all_units(cfg: DistillConfig, wnids: list[str] | None = None) -> list[WorkUnit]:
    """The job's units (or those of ``wnids``), class by class in chunk order."""
    labels = dict(zip(cfg.wnids, cfg.labels, strict=True))
    return [u for w in (wnids or cfg.wnids) for u in class_units(w, labels[w], cfg.ipc, cfg.batch_size)]
