"""``igds-fast export`` (build an engine folder) and ``igds-fast doctor`` (what runs here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .defaults import GUIDANCE_SCALE
from .errors import UserError

# Recipe keys (TOML, same names as the flags with '_' for '-') and their defaults.
DEFAULTS: dict[str, Any] = {
    "denoiser": None,
    "vae": None,
    "critics": None,
    "batch_size": 16,
    "memory_size": 64,
    "steps": "50",
    "sampler": "ddpm",
    "eta": 0.0,
    "cfg_scale": 4.0,
    "cfg_channels": "3",
    "guidance": "igds",
    "guidance_scale": GUIDANCE_SCALE,
    "beta": None,  # None: beta(IPC), the same default as distill
    "ipc": 10,
    "window_lo": 0,
    "window_hi": 999,
    "precision": "fp32",
    "backend": "onnxruntime",
    "opset": 18,
    "split": False,
    "device": "cpu",
}


def read_recipe(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise UserError("--recipe needs Python 3.11+ (tomllib)") from None
    if not path.is_file():
        raise UserError(f"recipe '{path}' does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise UserError(f"{path}: unknown recipe key '{unknown[0]}' (known: {', '.join(DEFAULTS)})")
    return data


def resolve_settings(recipe: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    """Defaults, then the recipe, then every flag given on the command line."""
    out = dict(DEFAULTS)
    if recipe is not None:
        out.update(read_recipe(recipe))
    out.update({k: v for k, v in flags.items() if v is not None})
    return out


def export(
    out: Path = typer.Option(..., help="Engine folder to create, e.g. engines/dit-b16."),
    recipe: Path | None = typer.Option(None, help="TOML recipe (export/*.toml); flags override its fields."),
    denoiser: Path | None = typer.Option(None, help="Denoiser checkpoint/folder (default: embedded model)."),
    vae: str | None = typer.Option(None, help="diffusers AutoencoderKL folder, or 'none' for pixel space."),
    critics: Path | None = typer.Option(None, help="Critics file (needed for --guidance igds)."),
    batch_size: int | None = typer.Option(None, help="Static batch B of the engine [16]."),
    memory_size: int | None = typer.Option(None, help="Static memory rows M (earlier samples' features) [64]."),
    steps: str | None = typer.Option(None, help="Respaced steps: 50, sections 10,20, or ddimN [50]."),
    sampler: str | None = typer.Option(None, help="ddpm or ddim [ddpm]."),
    eta: float | None = typer.Option(None, help="DDIM eta [0]."),
    cfg_scale: float | None = typer.Option(None, help="Classifier-free guidance scale [4]."),
    cfg_channels: str | None = typer.Option(None, help="Channels CFG applies to: 3 or all [3]."),
    guidance: str | None = typer.Option(None, help="igds or off [igds]."),
    guidance_scale: float | None = typer.Option(None, help="IGDS gradient scale s [4]."),
    beta: float | None = typer.Option(None, help="Weight of the H2 term, a constant of the engine [beta(IPC)]."),
    ipc: int | None = typer.Option(None, help="Images per class the engine is for, for the default beta [10]."),
    precision: str | None = typer.Option(None, help="fp32, fp16, bf16 (fp8: see docs/export.md) [fp32]."),
    backend: str | None = typer.Option(None, help="onnxruntime, tensorrt or compiled [onnxruntime]."),
    split: bool | None = typer.Option(None, "--split/--no-split", help="Also write denoiser/critic graphs."),
    device: str | None = typer.Option(None, help="Device to trace/compile on: cpu or cuda [cpu]."),
    verify: bool = typer.Option(False, help="Compare the engine with the eager step on random inputs."),
    overwrite: bool = typer.Option(False, help="Replace an existing engine folder."),
) -> None:
    """Export the fused guided step (and the VAE decoder) as an engine folder with a manifest."""
    from .cli import parse_cfg_channels
    from .guidance.step import StepConfig
    from .models.embedded import critics_or_default, denoiser_or_default
    from .pipeline import resolve_beta

    flags = dict(locals())
    for k in ("out", "recipe", "verify", "overwrite"):
        flags.pop(k)
    s = resolve_settings(recipe, flags)
    cfg = StepConfig(
        steps=str(s["steps"]),
        sampler=s["sampler"],
        eta=float(s["eta"]),
        cfg_scale=float(s["cfg_scale"]),
        cfg_channels=parse_cfg_channels(str(s["cfg_channels"])),
        guidance=s["guidance"],
        guidance_scale=float(s["guidance_scale"]),
        beta=resolve_beta(None if s["beta"] is None else float(s["beta"]), int(s["ipc"]), s["guidance"]),
        window_lo=int(s["window_lo"]),
        window_hi=int(s["window_hi"]),
    )
    den = denoiser_or_default(s["denoiser"])
    crit = critics_or_default(s["critics"], s["denoiser"] is not None) if cfg.guidance == "igds" else None
    vae = s["vae"] if s["vae"] is not None else "none"
    spec = _spec(den, vae, crit, cfg, s, out, overwrite)
    from .backends.build import export_engine

    export_engine(spec)
    typer.echo(f"wrote {out} ({spec.backend}, {spec.precision}, batch {spec.batch_size}, memory {spec.memory_size})")
    if verify:
        _verify(out, spec)


def _spec(den: Path, vae: str, crit: Path | None, cfg: Any, s: dict[str, Any], out: Path, overwrite: bool) -> Any:
    from .backends.build import ExportSpec

    return ExportSpec(
        denoiser=Path(den),
        vae=vae,
        critics=Path(crit) if crit is not None else None,
        cfg=cfg,
        batch_size=int(s["batch_size"]),
        memory_size=int(s["memory_size"]),
        precision=s["precision"],
        backend=s["backend"],
        out=out,
        overwrite=overwrite,
        split=bool(s["split"]),
        opset=int(s["opset"]),
        device=s["device"],
    )


def _verify(out: Path, spec: Any) -> None:
    from .backends.build import verify_engine
    from .backends.registry import load_engine
    from .pipeline import build_pipeline

    dtype = spec.precision if spec.precision in ("fp16", "bf16") else "fp32"
    pipe = build_pipeline(spec.denoiser, spec.vae, spec.critics, spec.cfg, device=spec.device, dtype=dtype)
    engine = load_engine(out, device=spec.device)
    rows = verify_engine(engine, pipe.step)
    typer.echo("relative error ||engine - eager|| / ||eager|| on random inputs:")
    for r in rows:
        typer.echo(f"  step {r['i']:>4}: " + "  ".join(f"{k} {v:.2e}" for k, v in r.items() if k != "i"))
    worst = max(v for r in rows for k, v in r.items() if k != "i")
    tol = 1e-3 if spec.precision == "fp32" else 5e-2
    if not worst <= tol:  # also catches NaN
        raise UserError(f"--verify: worst relative error {worst:.2e} exceeds {tol:g}")


def doctor() -> None:
    """Report the device, libraries and what each backend can do on this machine."""
    from .backends.doctor import report

    typer.echo(report())


def register(app: typer.Typer) -> None:
    app.command()(export)
    app.command()(doctor)
