"""Options several commands share, defined once (help texts name the defaults they resolve to).

The guided step's flags are added to a command by ``step_options``: the command receives them as one
``step`` mapping of the flags given (a flag not given is absent), which ``config.step_config`` lays
over ``StepConfig()`` (and a recipe), so the defaults live in one place: the dataclass.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import typer

from ..config import STEP_FIELDS, StepConfig

_DEFAULT = StepConfig()
_PANEL = "Guided step (defaults: the shipped step)"


def _step_option(help_text: str, *names: str) -> Any:
    return typer.Option(None, *names, help=help_text, rich_help_panel=_PANEL, show_default=False)


def _switch(name: str, what: str) -> Any:
    flag = name.replace("_", "-")
    on = "on" if getattr(_DEFAULT, name) else "off"
    return _step_option(f"{what} (default {on}).", f"--{flag}/--no-{flag}")


# One definition per step flag: (type, typer option). Every field of StepConfig has one.
STEP_FLAGS: dict[str, tuple[Any, Any]] = {
    "steps": (str | None, _step_option(f"Respaced steps: 50, sections 10,20, or ddimN (default {_DEFAULT.steps}).")),
    "sampler": (str | None, _step_option(f"ddpm (ancestral, learned variance) or ddim (default {_DEFAULT.sampler}).")),
    "eta": (float | None, _step_option(f"DDIM eta in [0, 1] (default {_DEFAULT.eta:g}).")),
    "cfg_scale": (
        float | None,
        _step_option(f"Classifier-free guidance scale, 1 = off (default {_DEFAULT.cfg_scale:g})."),
    ),
    "cfg_channels": (
        str | None,
        _step_option(f"Channels CFG applies to: 3 (DiT/Minimax) or all (diffusers) (default {_DEFAULT.cfg_channels})."),
    ),
    "guidance": (str | None, _step_option("igds (our information guidance) or off (default igds; sample: off).")),
    "guidance_scale": (float | None, _step_option(f"Prototype term's scale s (default {_DEFAULT.guidance_scale:g}).")),
    "beta": (float | None, _step_option(f"Diversity term's weight, in units of eps (default {_DEFAULT.beta:g}).")),
    "window_lo": (int | None, _step_option(f"Guide only at timesteps t >= this (default {_DEFAULT.window_lo}).")),
    "window_hi": (int | None, _step_option(f"Guide only at timesteps t <= this (default {_DEFAULT.window_hi}).")),
    "weighting": (
        str | None,
        _step_option(
            "Weight of the guidance over t: ba (the critic's held-out I(X;Y) bound per t) or flat "
            f"(default {_DEFAULT.weighting})."
        ),
    ),
    "range_guard": (
        bool | None,
        _switch("range_guard", "Pixel models: guidance may not push the clean estimate outside [-1, 1]"),
    ),
    "clip_guard": (
        float | None,
        _step_option(
            "Inside the window, move the clean estimate against its decoded pixels' excess beyond [-1, 1], "
            f"by this fraction of the full step; 0 = off (default {_DEFAULT.clip_guard:g})."
        ),
    ),
}
assert set(STEP_FLAGS) == set(STEP_FIELDS), "every step field needs exactly one flag"


def step_flag(name: str) -> Any:
    """The typer option of one step flag, for a command that takes only that one."""
    return STEP_FLAGS[name][1]


def step_options(guidance: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: add the step flags to a command, which then takes ``step``: the flags given, by field
    name. ``guidance``: the command's own default for --guidance where it is not the step's (``sample``
    samples unguided)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(command).parameters.values() if p.name != "step"]
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
            for name, (kind, option) in STEP_FLAGS.items()
        ]

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in STEP_FLAGS}
            own_default = {} if guidance is None else {"guidance": guidance}
            flags = own_default | {k: v for k, v in given.items() if v is not None}
            return command(**kwargs, step=flags)

        run.__signature__ = inspect.Signature(own + added)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in own + added}
        return run

    return decorate


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


def warn_if_slow_bf16(precision: str, device: str) -> None:
    """Say so on stderr when bf16 would run emulated on this CPU (the run goes on: it is only slow)."""
    from ..machine import slow_bf16_warning

    if note := slow_bf16_warning(precision, device):
        typer.echo(f"warning: {note}", err=True)
