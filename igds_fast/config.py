"""The one way from options to a guided-step configuration, and the parsing every command shares.

``StepConfig`` is everything an exported engine fixes about the step; ``step_config`` turns the
options of ``sample``, ``distill``, ``export``, ``bench`` and ``demo`` into one (defaults, then a
recipe, then the flags given). The small parsers here (classes, shard, device, dtype, IPC and
batch) are the only copies of their rules. This module sits at the bottom of the import layers:
it imports nothing of the package but ``errors``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:
    import torch

# Defaults of the guided step, chosen by the independent judge on the embedded model
# (benchmarks/sweep_guidance.py, docs/experiments/sweep_guidance.md), in units of eps RMS: s for the prototype
# term, beta for the diversity term (a constant: the nearest-neighbour term needs no IPC schedule).
# Guidance acts only at t <= GUIDANCE_WINDOW_HI, where the critic knows most: guiding at high noise
# is what clipped pixels, and the stronger s and beta keep the accuracy and the spread there.
GUIDANCE_SCALE = 0.4
DIVERSITY_WEIGHT = 0.3
GUIDANCE_WINDOW_HI = 300
# 20 respaced DDPM steps: the judge scores them as the 50 of earlier releases (accuracy 0.93 vs 0.92,
# coverage 0.135 vs 0.123), and so 25 (0.92, 0.124), at 40 % of the denoiser passes; downstream accuracy
# at IPC 10 likewise (benchmarks/sweep_solver.py, docs/experiments/sweep_solver.md).
STEPS = "20"
# The clip guard (StepConfig.clip_guard) moves the clean estimate against its decoded pixels' excess
# beyond [-1, 1]. It lowers the judge's clipped share (0.059 -> 0.033 at 25 steps) and moves neither
# accuracy, coverage nor downstream accuracy beyond their spread, but it differentiates the VAE decoder
# at every guided step: 2x the embedded model's step, and on DiT-XL/2 with the SD VAE at 256 px +3.6x
# the CFG pass per guided step (a FLOP count). So it is off by default; --clip-guard 0.5 turns it on.
CLIP_GUARD = 0.0


class _Dtypes(Mapping[str, "torch.dtype"]):
    """fp32 / fp16 / bf16 -> the torch dtype. torch loads on the first lookup, not with this module: the
    command line parses its options (and prints --help) without it."""

    _NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

    def __getitem__(self, name: str) -> torch.dtype:
        import torch

        return getattr(torch, self._NAMES[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._NAMES)

    def __len__(self) -> int:
        return len(self._NAMES)


DTYPES = _Dtypes()
PRECISIONS = ("fp32", "fp16", "bf16", "fp8")  # what an engine may be built in (fp8 is refused with a reason)


@dataclass
class StepConfig:
    """The guided step. ``StepConfig()`` is the shipped default; ``step_config`` applies a recipe and flags."""

    steps: str = STEPS
    sampler: str = "ddpm"  # ddpm | ddim
    eta: float = 0.0  # DDIM only
    cfg_scale: float = 4.0
    cfg_channels: int | None = 3  # None = all channels (diffusers)
    guidance: str = "igds"  # igds | off
    guidance_scale: float = GUIDANCE_SCALE
    beta: float = DIVERSITY_WEIGHT
    # Guide only where the training timestep t lies in [window_lo, window_hi].
    window_lo: int = 0
    window_hi: int = GUIDANCE_WINDOW_HI
    # The weight of both terms over t: "ba" = the critic's held-out I(X;Y) bound at t (normalised),
    # "flat" = 1 inside the window.
    weighting: str = "ba"
    # Pixel-space models: guidance may not push the clean estimate outside [-1, 1] (no effect on latents).
    range_guard: bool = True
    # Inside the guidance window, move the clean estimate against its decoded pixels' excess beyond
    # [-1, 1] (the part that would be clipped), by this fraction of the step that would remove it all
    # were the decoder a scaled isometry (1 on a pixel model: clamp x0_hat). 0 = off. Unlike the range
    # guard it also acts on the denoiser's own excess, so it can clip less than guidance off does.
    clip_guard: float = CLIP_GUARD

    def validate(self) -> StepConfig:
        """The checked step; without guidance it carries no guidance weights (one identity for "off")."""
        if self.sampler not in ("ddpm", "ddim"):
            raise UserError(f"unknown sampler '{self.sampler}': use ddpm or ddim")
        if self.guidance not in ("igds", "off"):
            raise UserError(f"unknown guidance '{self.guidance}': use igds or off")
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
        return self if self.guidance == "igds" else replace(self, beta=0.0, clip_guard=0.0)

    def to_dict(self) -> dict[str, Any]:
        """Every field: what run.json and engine manifests record."""
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """What digests and cache keys hash (``step_identity``)."""
        return step_identity(self.to_dict())

    @classmethod
    def from_record(cls, recorded: dict[str, Any]) -> StepConfig:
        """The step a job file, engine manifest or identity recorded (``complete_step``: a field it
        leaves out is its old value, not today's default)."""
        return cls(**complete_step(recorded)).validate()


STEP_FIELDS = tuple(f.name for f in fields(StepConfig))

# How a recorded step (a job file, an engine manifest, a cache key) is read across releases.
# Added fields: each with the value that reproduces the runs recorded before it existed, in the order
# they were added; a record without the field reads as that value, so upgrading igds-fast neither
# orphans a half-finished set nor re-exports a cached engine. Retired fields: options that were tried
# and removed from the product; a record holding one at its neutral value (what every shipped default
# used) reads as today's step, any other value is refused (that step no longer exists).
_ADDED_FIELDS: tuple[tuple[str, Any], ...] = (
    ("moment_guard", False),
    ("spread_guard", False),
    ("envelope_guard", False),
    ("clip_guard", 0.0),
)
RETIRED_STEP_FIELDS: dict[str, Any] = {
    "diversity": "x0",
    "moment_guard": False,
    "spread_guard": False,
    "envelope_guard": False,
}
ADDED_STEP_FIELDS: dict[str, Any] = {k: v for k, v in _ADDED_FIELDS if k not in RETIRED_STEP_FIELDS}


def drop_retired(recorded: dict[str, Any], where: str = "the recorded step") -> dict[str, Any]:
    """``recorded`` without the retired fields (at their neutral values); a UserError names a retired
    option used with another value."""
    for name, neutral in RETIRED_STEP_FIELDS.items():
        if name in recorded and recorded[name] != neutral:
            raise UserError(
                f"{where} uses {name}={recorded[name]!r}, an option igds-fast no longer has "
                f"(only {name}={neutral!r} is supported); start it again in another folder"
            )
    return {k: v for k, v in recorded.items() if k not in RETIRED_STEP_FIELDS}


def complete_step(recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded step as today's fields: the added ones at their old behaviour, retired ones dropped."""
    return ADDED_STEP_FIELDS | drop_retired(recorded)


def step_spellings(step: dict[str, Any]) -> list[dict[str, Any]]:
    """The step as each release may have recorded it: its identity (today's spelling), and the spelling
    of each earlier release, which wrote the retired fields at their neutral values and the added fields
    out, up to the newest one it knew, at their old values (where the step's own value is the old one)."""
    today = step_identity(step)
    known = {"diversity": RETIRED_STEP_FIELDS["diversity"]}  # every earlier release wrote it
    out = [today, known | today]
    for name, old in _ADDED_FIELDS:
        known[name] = old
        out.append(known | today)  # the step's own value wins where it is not the old one
    return out


def step_identity(step: dict[str, Any]) -> dict[str, Any]:
    """The step as digests and keys see it: retired fields dropped, an added field at its old value left
    out, so a run recorded before the field existed and the same options today have one identity."""
    kept = drop_retired(step)
    return {k: v for k, v in kept.items() if k not in ADDED_STEP_FIELDS or v != ADDED_STEP_FIELDS[k]}


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


# How a value as typed (flag or recipe) becomes the field's type.
_PARSE: dict[str, Callable[[Any], Any]] = {
    "steps": str,
    "sampler": str,
    "eta": float,
    "cfg_scale": float,
    "cfg_channels": parse_cfg_channels,
    "guidance": str,
    "guidance_scale": float,
    "beta": float,
    "window_lo": int,
    "window_hi": int,
    "weighting": str,
    "range_guard": bool,
    "clip_guard": float,
}


def step_config(*layers: Mapping[str, Any] | None) -> StepConfig:
    """The step for these options: ``StepConfig()`` (the shipped default), then each layer in order (a
    recipe, the flags), where a layer's None values mean "not given". A layer may hold other keys
    (export settings); a retired step option is accepted at its neutral value and refused otherwise."""
    given: dict[str, Any] = {}
    for layer in layers:
        present = {k: v for k, v in (layer or {}).items() if v is not None}
        drop_retired(present, "the options")
        given.update({k: _PARSE[k](v) for k, v in present.items() if k in _PARSE})
    return replace(StepConfig(), **given).validate()


def resolve_device(name: str) -> torch.device:
    import torch

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


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file (a job file, an export recipe) as a dict, or a one-line UserError. ``tomllib`` on
    Python 3.11+, the ``tomli`` package on 3.10."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser, packaged as tomli
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise UserError(f"reading the {what} '{path}' on Python 3.10 needs tomli: pip install tomli") from None
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} '{path}' does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} '{path}' is not valid TOML ({e})") from None


def read_toml_options(
    path: Path,
    known: Collection[str],
    what: str,
    accepted: Collection[str] = (),
    aliases: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A TOML file of options, keyed as the command line spells them (``batch-size`` or ``batch_size``):
    the values by option name (``_``; ``aliases`` maps other spellings to a name). A key that is not in
    ``known`` (or ``accepted``: read but not listed, e.g. retired step options) is refused in one line
    naming the key and the file."""
    aliases = aliases or {}
    out: dict[str, Any] = {}
    for key, value in read_toml(path, what).items():
        name = key.replace("-", "_")
        name = aliases.get(name, name)
        if name not in known and name not in accepted:
            spelled = {v: k for k, v in aliases.items()}  # as the command line spells them (format, not image_format)
            listed = ", ".join(spelled.get(k, k) for k in known)
            raise UserError(f"unknown key '{key}' in the {what} '{path}' (known: {listed})")
        if name in out:
            raise UserError(f"'{key}' is given twice in the {what} '{path}'")
        out[name] = value
    return out
