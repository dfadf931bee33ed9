"""The embedded default: a small DiT and its critics trained on Imagenette, shipped inside the
package so the main job runs with no downloads (see igds_fast/data/MODEL_CARD.md); and the one rule
for which models a command uses when some paths are not given."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import UserError

DENOISER_FILE = "embedded_dit.safetensors"
CRITIC_FILE = "embedded_critic.safetensors"
VAE_FILE = "embedded_vae.safetensors"  # shipped only with a latent embedded model


def _data_path(name: str) -> Path:
    return Path(str(resources.files("igds_fast.data").joinpath(name)))


def embedded_path(name: str) -> Path:
    path = _data_path(name)
    if not path.exists():
        raise UserError(
            f"the embedded default model ({name}) is not built into this install; "
            "pass --denoiser/--critics paths, or train it with `igds-fast train-dit` and `igds-fast train-critics`"
        )
    return path


@dataclass(frozen=True)
class ModelPaths:
    denoiser: Path
    vae: str  # a VAE path, or "none" for pixel space
    critics: Path | None  # None when guidance is off

    def as_dict(self) -> dict[str, str | None]:
        return {"denoiser": str(self.denoiser), "vae": self.vae, "critics": self.critics and str(self.critics)}


def resolve_models(
    denoiser: str | Path | None, vae: str | Path | None, critics: str | Path | None, guidance: str
) -> ModelPaths:
    """The models a command runs: the embedded ones for what is not given (the embedded VAE and
    critics only go with the embedded denoiser); critics only when guidance is on."""
    own = denoiser is not None
    den = Path(denoiser) if own else embedded_path(DENOISER_FILE)
    if vae is None:
        vae = "none" if own or not _data_path(VAE_FILE).exists() else str(_data_path(VAE_FILE))
    crit: Path | None = None
    if guidance == "igds":
        if critics is not None:
            crit = Path(critics)
        elif own:
            raise UserError(
                "--guidance igds with your own --denoiser needs --critics PATH (train them with train-critics)"
            )
        else:
            crit = embedded_path(CRITIC_FILE)
    return ModelPaths(den, str(vae), crit)
