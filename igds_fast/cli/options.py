"""Options several commands share, defined once (help texts name the defaults they resolve to).

Step options default to None ("not given"): ``config.step_config`` fills the defaults, so a recipe
can sit between the defaults and the flags."""

from __future__ import annotations

from typing import Any

import typer

from ..config import DIVERSITY_WEIGHT, STEP_DEFAULTS

STEP_OPTIONS = tuple(STEP_DEFAULTS)


def steps() -> Any:
    return typer.Option(None, help="Respaced steps: 50, sections 10,20, or ddimN [50].")


def sampler() -> Any:
    return typer.Option(None, help="ddpm (ancestral, learned variance) or ddim [ddpm].")


def eta() -> Any:
    return typer.Option(None, help="DDIM eta in [0, 1] [0].")


def cfg_scale() -> Any:
    return typer.Option(None, help="Classifier-free guidance scale, 1 = off [4].")


def cfg_channels() -> Any:
    return typer.Option(None, help="Channels CFG applies to: 3 (DiT/Minimax) or all (diffusers) [3].")


def guidance(default: str) -> Any:
    return typer.Option(None, help=f"igds (our information guidance) or off [{default}].")


def guidance_scale() -> Any:
    return typer.Option(None, help=f"IGDS gradient scale s [{STEP_DEFAULTS['guidance_scale']:g}].")


def beta() -> Any:
    return typer.Option(None, help=f"Weight of the diversity term, in units of eps [{DIVERSITY_WEIGHT:g}].")


def weighting() -> Any:
    return typer.Option(
        None,
        help="Weight of the guidance over t: ba (the critic's held-out I(X;Y) bound per t) or flat "
        f"[{STEP_DEFAULTS['weighting']}].",
    )


def diversity() -> Any:
    return typer.Option(
        None,
        help="Diversity term: x0 (repel the clean estimate from the class's other samples), collision or "
        f"knn (same-step estimators; knn is eager only) [{STEP_DEFAULTS['diversity']}].",
    )


def window_lo() -> Any:
    return typer.Option(None, help="Guide only at timesteps t >= this [0].")


def window_hi() -> Any:
    return typer.Option(None, help=f"Guide only at timesteps t <= this [{STEP_DEFAULTS['window_hi']}].")


def _switch(name: str, what: str) -> Any:
    """An on/off step option (``--name/--no-name``) whose help names its default."""
    on = "on" if STEP_DEFAULTS[name] else "off"
    flag = name.replace("_", "-")
    return typer.Option(None, f"--{flag}/--no-{flag}", help=f"{what} [{on}].")


def range_guard() -> Any:
    return _switch("range_guard", "Pixel models: guidance may not push the clean estimate outside [-1, 1]")


def moment_guard() -> Any:
    return _switch("moment_guard", "Guidance keeps the clean estimate's per-channel mean and at most its spread")


def spread_guard() -> Any:
    return _switch("spread_guard", "Guidance may move the clean estimate's per-channel mean but not widen its spread")


def envelope_guard() -> Any:
    return _switch("envelope_guard", "Guidance keeps the clean estimate inside the unguided one's per-channel range")


def clip_guard() -> Any:
    return typer.Option(
        None,
        help="Inside the window, move the clean estimate against its decoded pixels' excess beyond [-1, 1], "
        f"by this fraction of the full step (0 = off) [{STEP_DEFAULTS['clip_guard']}].",
    )


def denoiser() -> Any:
    return typer.Option(None, help="Denoiser checkpoint/folder (default: the embedded model).")


def vae() -> Any:
    return typer.Option(None, help="VAE: diffusers AutoencoderKL folder or .safetensors, or 'none' (pixel space).")


def critics() -> Any:
    return typer.Option(
        None, help="Critics file from train-critics (default: the embedded ones with the embedded model)."
    )


def device() -> Any:
    return typer.Option("cpu", help="cpu or cuda[:N].")


def step_flags(values: dict[str, Any]) -> dict[str, Any]:
    """The step options among a command's parameters (None = not given)."""
    return {k: values[k] for k in STEP_OPTIONS if k in values}


def warn_if_slow_bf16(precision: str, device: str) -> None:
    """Say so on stderr when bf16 would run emulated on this CPU (the run goes on: it is only slow)."""
    from ..machine import slow_bf16_warning

    if note := slow_bf16_warning(precision, device):
        typer.echo(f"warning: {note}", err=True)
