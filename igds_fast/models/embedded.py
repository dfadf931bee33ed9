"""The embedded default: a small pixel-space DiT and its critics trained on Imagenette at 32 px,
shipped inside the package so the main job runs with no downloads (see igds_fast/data/MODEL_CARD.md)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import UserError

DENOISER_FILE = "embedded_dit.safetensors"
CRITIC_FILE = "embedded_critic.safetensors"


def embedded_path(name: str) -> Path:
    path = Path(str(resources.files("igds_fast.data").joinpath(name)))
    if not path.exists():
        raise UserError(
            f"the embedded default model ({name}) is not built into this install; "
            "pass --denoiser/--critics paths, or train it with `igds-fast train-dit` and `igds-fast train-critics`"
        )
    return path


def denoiser_or_default(path: str | Path | None) -> Path:
    return Path(path) if path is not None else embedded_path(DENOISER_FILE)


def critics_or_default(path: str | Path | None, denoiser_given: bool) -> Path | None:
    """Critics default to the embedded ones only when the denoiser is the embedded one too."""
    if path is not None:
        return Path(path)
    return None if denoiser_given else embedded_path(CRITIC_FILE)
