"""The one way from options to a guided-step configuration, and the parsing every command shares.

``StepConfig`` is everything an exported engine fixes about the step; ``step_config`` turns the
options of ``sample``, ``distill``, ``export``, ``bench`` and ``demo`` into one (defaults, then a
recipe, then the flags given). The small parsers here (classes, shard, device, dtype, IPC and
batch) are the only copies of their rules. This module sits at the bottom of the import layers:
it imports nothing of the package but ``errors``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from .errors import UserError

# Defaults of the guided step, chosen by the independent judge on the embedded model
# (benchmarks/sweep_guidance.py, docs/sweep_guidance.md), in units of eps RMS: s for the prototype
# term, beta for the diversity term (a constant: the nearest-neighbour term needs no IPC schedule).
# Guidance acts only at t <= GUIDANCE_WINDOW_HI, where the critic knows most: guiding at high noise
# is what clipped pixels, and the stronger s and beta keep the accuracy and the spread there.
GUIDANCE_SCALE = 0.4
DIVERSITY_WEIGHT = 0.3
GUIDANCE_WINDOW_HI = 300
# Inside the window the clean estimate is also moved against its decoded pixels' excess beyond [-1, 1]
# (StepConfig.clip_guard): the judge's clipped share 0.067 -> 0.037 (guidance off 0.065, real images
# 0.034) at no measurable downstream cost. It differentiates the VAE decoder at every guided step:
# ~2x the embedded model's full step; for DiT-XL/2 with the SD VAE at 256 px the decoder's forward and
# input-gradient are ~2.6x the CFG denoiser pass (a FLOP count, never timed). --clip-guard 0 turns it off.
CLIP_GUARD = 0.5

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = ("fp32", "fp16", "bf16", "fp8")  # what an engine may be built in (fp8 is refused with a reason)


@dataclass
class StepConfig:
    steps: str = "50"
    sampler: str = "ddpm"  # ddpm | ddim
    eta: float = 0.0  # DDIM only
    cfg_scale: float = 4.0
    cfg_channels: int | None = 3  # None = all channels (diffusers)
    guidance: str = "igds"  # igds | off
    guidance_scale: float = 1.0
    beta: float = 0.0
    # Guide only where the training timestep t lies in [window_lo, window_hi].
    window_lo: int = 0
    window_hi: int = 999  # the dataclass guides everywhere; the command line's default is GUIDANCE_WINDOW_HI
    # The prototype term's weight over t: "ba" = the critic's held-out I(X;Y) bound at t (normalised),
    # "flat" = 1 inside the window.
    weighting: str = "ba"
    # The diversity term: "x0" (nearest-neighbour repulsion of the clean estimate's features from the
    # class's other samples), "collision" (H2 of same-step noisy features), "knn" (eager only).
    diversity: str = "x0"
    # Pixel-space models: guidance may not push the clean estimate outside [-1, 1] (no effect on latents).
    range_guard: bool = True
    # Guidance may not move the clean estimate's per-channel mean, nor widen its per-channel spatial
    # spread beyond the unguided estimate's (both spaces): it may reshape the picture, not recolour it
    # or raise its contrast. Off by default: it takes the judge's saturation back to guidance off's but
    # costs 1.7-2.5 points of downstream accuracy at IPC 1 and 10 (docs/sweep_guidance.md).
    moment_guard: bool = False
    # The spread half of the moment guard alone: guidance may not widen the clean estimate's
    # per-channel spatial spread beyond the unguided estimate's, and may move its mean (implied by
    # moment_guard). Off by default until its downstream accuracy is measured (docs/sweep_guidance.md).
    spread_guard: bool = False
    # Guidance may not take the clean estimate beyond the unguided estimate's per-channel spatial range
    # [min, max] (both spaces; for latents, the closest thing to the pixel range guard): it may
    # redistribute values inside the denoiser's own envelope, not add new extremes (docs/sweep_guidance.md).
    envelope_guard: bool = False
    # Inside the guidance window, move the clean estimate against its decoded pixels' excess beyond
    # [-1, 1] (the part that would be clipped), by this fraction of the step that would remove it all
    # were the decoder a scaled isometry (1 on a pixel model: clamp x0_hat). 0 = off. Unlike the range
    # guard it also acts on the denoiser's own excess, so it can clip less than guidance off does.
    clip_guard: float = 0.0

    def validate(self) -> StepConfig:
        if self.sampler not in ("ddpm", "ddim"):
            raise UserError(f"unknown sampler '{self.sampler}': use ddpm or ddim")
        if self.guidance not in ("igds", "off"):
            raise UserError(f"unknown guidance '{self.guidance}': use igds or off")
        if self.diversity not in ("x0", "collision", "knn"):
            raise UserError(f"unknown --diversity '{self.diversity}': use x0, collision or knn")
        if self.weighting not in ("ba", "flat"):
            raise UserError(f"unknown --weighting '{self.weighting}': use ba (the critic's bound per t) or flat")
        for name in ("eta", "cfg_scale", "guidance_scale", "beta", "clip_guard"):
            if not math.isfinite(getattr(self, name)):
                raise UserError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(self, name)}")
        if self.cfg_scale < 1:
            raise UserError(f"--cfg-scale must be >= 1 (1 disables classifier-free guidance), got {self.cfg_scale}")
        if not 0 <= self.eta <= 1:
            raise UserError(f"--eta must lie in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got {self.eta}")
        if self.guidance_scale < 0 or self.beta < 0:
            raise UserError("--guidance-scale and --beta must be >= 0")
        if not 0 <= self.window_lo <= 999 or not 0 <= self.window_hi <= 999:
            raise UserError(
                f"the guidance window [{self.window_lo}, {self.window_hi}] must lie within the training "
                "timesteps 0..999: use --window-lo/--window-hi in 0..999"
            )
        if self.window_lo > self.window_hi:
            raise UserError(f"empty guidance window [{self.window_lo}, {self.window_hi}]")
        if not 0 <= self.clip_guard <= 1:
            raise UserError(f"--clip-guard must lie in [0, 1] (0 = off, 1 = the full step), got {self.clip_guard}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Every field: what run.json and engine manifests record."""
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """What digests and cache keys hash (``step_identity``)."""
        return step_identity(self.to_dict())


# Step fields added after runs were first recorded, each with the value that reproduces those runs: a
# job file, request key, engine manifest or cache key made before a field existed reads as that value,
# so upgrading igds-fast neither orphans a half-finished set nor re-exports a cached engine.
ADDED_STEP_FIELDS: dict[str, Any] = {
    "moment_guard": False,
    "spread_guard": False,
    "envelope_guard": False,
    "clip_guard": 0.0,
}


def complete_step(recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded step dict with the fields added since it was written, at their old behaviour."""
    return ADDED_STEP_FIELDS | recorded


def step_spellings(step: dict[str, Any]) -> list[dict[str, Any]]:
    """The step as each release may have recorded it: its identity (today's spelling), and the spelling
    of a release that wrote the added fields out, up to the newest one it knew (fields are added in
    ``ADDED_STEP_FIELDS`` order), at their old values."""
    out, known = [step_identity(step)], {}
    for name, old in ADDED_STEP_FIELDS.items():
        known[name] = old
        out.append(known | out[0])  # the step's own value wins where it is not the old one
    return out


def step_identity(step: dict[str, Any]) -> dict[str, Any]:
    """The step as digests and keys see it: an added field at its old value is left out, so a run
    recorded before the field existed and the same options today have one identity."""
    return {k: v for k, v in step.items() if k not in ADDED_STEP_FIELDS or v != ADDED_STEP_FIELDS[k]}


# The step options as the command line and recipes spell them, with their defaults. ``beta`` None
# means the default diversity weight; ``cfg_channels`` is "3" or "all".
STEP_DEFAULTS: dict[str, Any] = {
    "steps": "50",
    "sampler": "ddpm",
    "eta": 0.0,
    "cfg_scale": 4.0,
    "cfg_channels": "3",
    "guidance": "igds",
    "guidance_scale": GUIDANCE_SCALE,
    "beta": None,
    "window_lo": 0,
    "window_hi": GUIDANCE_WINDOW_HI,
    "weighting": "ba",
    "diversity": "x0",
    "range_guard": True,
    "moment_guard": False,
    "spread_guard": False,
    "envelope_guard": False,
    "clip_guard": CLIP_GUARD,
}


def parse_cfg_channels(text: str | int | None) -> int | None:
    if text is None or str(text) == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise UserError(f"--cfg-channels must be a positive count or 'all', got '{text}'")
    return n


def resolve_beta(beta: float | None, guidance: str) -> float:
    if guidance == "off":
        return 0.0
    if beta is not None:
        if not beta >= 0:  # also NaN
            raise UserError(f"--beta must be >= 0, got {beta}")
        return float(beta)
    return DIVERSITY_WEIGHT


def step_config(ipc: int | None, *layers: dict[str, Any] | None) -> StepConfig:
    """The step for these options: ``STEP_DEFAULTS``, then each layer in order (a recipe, the flags),
    where a layer's None values mean "not given". ``ipc``: the job's IPC (callers check it; the
    defaults no longer depend on it)."""
    s = dict(STEP_DEFAULTS)
    for layer in layers:
        s.update({k: v for k, v in (layer or {}).items() if k in STEP_DEFAULTS and v is not None})
    cfg = StepConfig(
        steps=str(s["steps"]),
        sampler=str(s["sampler"]),
        eta=float(s["eta"]),
        cfg_scale=float(s["cfg_scale"]),
        cfg_channels=parse_cfg_channels(s["cfg_channels"]),
        guidance=str(s["guidance"]),
        guidance_scale=float(s["guidance_scale"]),
        beta=resolve_beta(None if s["beta"] is None else float(s["beta"]), str(s["guidance"])),
        window_lo=int(s["window_lo"]),
        window_hi=int(s["window_hi"]),
        weighting=str(s["weighting"]),
        diversity=str(s["diversity"]),
        range_guard=bool(s["range_guard"]),
        moment_guard=bool(s["moment_guard"]),
        spread_guard=bool(s["spread_guard"]),
        envelope_guard=bool(s["envelope_guard"]),
        clip_guard=float(s["clip_guard"]),
    ).validate()
    # checked as given, then, as beta, nothing without guidance (one engine and one digest for guidance off)
    return cfg if cfg.guidance == "igds" else replace(cfg, clip_guard=0.0)


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is visible; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"unknown device '{name}': use cpu or cuda[:N]")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}': use cpu or cuda[:N]") from None


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}': use {', '.join(DTYPES)}")
    return DTYPES[name]


def parse_classes(text: str) -> list[int | str]:
    """``"207,3"`` (the model's labels) or WNIDs ``"n01440764,..."`` (mapped through the model later)."""
    out: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.startswith("n") and part[1:].isdigit():
            out.append(part)
        else:
            try:
                out.append(int(part))
            except ValueError:
                raise UserError(f"bad class '{part}' in --classes: use labels like 207,3 or WNIDs") from None
    if not out:
        raise UserError("--classes is empty: pass labels like 207,3")
    return out


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"bad --shard '{text}': use i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"bad --shard '{text}': need 0 <= i < n")
    return i, n


def check_count(value: int, option: str) -> int:
    """A count the user gives (IPC, images per class, batch size) must be >= 1."""
    if value < 1:
        raise UserError(f"{option} must be >= 1, got {value}")
    return value
