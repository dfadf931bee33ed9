"""``igds-fast distill`` (the main job) and ``igds-fast demo``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from . import options as opt


@opt.step_options()
def distill(
    ctx: typer.Context,
    out: Path = typer.Option(
        Path("distilled"), help="Output set: <wnid>/<index>.png + metadata.parquet + README.md card + run.json."
    ),
    config: Path | None = typer.Option(
        None,
        help="TOML job file: keys named like these options (ipc = 2, steps = 10, classes = [...]); "
        "the options given here override it.",
    ),
    subset: str | None = typer.Option(None, help="imagenette (default), imagewoof, imageidc, imagenet100, imagenet1k."),
    classes: str | None = typer.Option(None, help="Comma-separated WNIDs or class names (tench) instead of --subset."),
    classes_file: Path | None = typer.Option(None, help="File with one WNID or class name a line instead of --subset."),
    ipc: int = typer.Option(10, help="Images per class."),
    batch_size: int | None = typer.Option(
        None,
        help="Samples per denoiser call, whatever the IPC (chunks of several classes share one); "
        "default 50 on CPU, 64 on CUDA.",
    ),
    seed: int = typer.Option(0, help="Global seed; each image's noise derives from (seed, class, index)."),
    engines: Path | None = typer.Option(
        None, help="Engine folder from `igds-fast export` (fixes the backend; the step is the engine's)."
    ),
    backend: str = typer.Option(
        "auto", help="auto (the fastest measured for this machine), eager, onnxruntime, compiled or tensorrt."
    ),
    engine_cache: Path | None = typer.Option(
        None, help="Where exported engines are cached [$IGDS_ENGINE_CACHE or ~/.cache/igds-fast/engines]."
    ),
    denoiser: Path | None = opt.denoiser(),
    vae: str | None = opt.vae(),
    critics: Path | None = opt.critics(),
    image_format: str = typer.Option("png", "--format", help="png or jpeg."),
    resolution: int | None = typer.Option(None, help="Resize written images to R px (default: model output size)."),
    shard: str | None = typer.Option(None, help="i/n: run every n-th class starting at i (array jobs)."),
    ray: str | None = typer.Option(None, help="Run on a Ray cluster: 'local' or an address (needs igds-fast[ray])."),
    overwrite: bool = typer.Option(False, help="Replace an earlier run with another configuration in --out."),
    wait: bool = typer.Option(False, help="If another process is writing --out, wait for it instead of failing."),
    device: str = opt.device(),
    dtype: str | None = typer.Option(
        None, help="Denoiser precision: fp32, fp16 or bf16 [auto: bf16 on CPUs with AMX/AVX512-BF16, else fp32]."
    ),
    log_json: Path | None = typer.Option(
        None, "--log-json", help="Write the JSON events here (one a line) instead of to stdout ('-': stdout)."
    ),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bar on stderr [only when stderr is a terminal]."
    ),
    threads: int | None = typer.Option(
        None, help="CPU threads of torch and onnxruntime [all cores; 1 can be faster on a busy machine]."
    ),
    exit_zero_when_shard_done: bool = typer.Option(
        False,
        "--exit-zero-when-shard-done",
        help="Array jobs: exit 0 once this shard's classes are done, even while other shards' are not "
        "(default: 3 until the whole set is complete).",
    ),
    step: dict[str, Any] | None = None,
) -> None:
    """Distill a class subset into IPC synthetic images per class (the main job).

    Events (start, unit_done, class_done, damaged, repaired, finished, error) are JSON lines on
    stdout, or in --log-json FILE. Exit codes: 0 complete, 3 incomplete (other shards' classes
    missing), 2 user error, 1 bug."""
    from ..api import DISTILL_OPTIONS
    from ..api import distill as run_distill
    from ..jobs.events import Events, exit_code, is_stdout

    # Only the options given on the command line (the api's table of them): a job file's keys stand where a
    # flag is not given.
    given = {name: ctx.params[name] for name in DISTILL_OPTIONS if on_command_line(ctx, name)}
    res = run_distill(config=config, step=step, print_events=True, **given)
    if res.log_json is not None and not is_stdout(res.log_json):  # the summary also reaches stdout (once)
        Events(out=res.out).emit("finished", **res.summary)
    if code := exit_code(res.summary, exit_zero_when_shard_done):
        raise typer.Exit(code)


def on_command_line(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given (not its default): what a job file's key gives way to."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name != "DEFAULT"


def demo(
    out: Path = typer.Option(Path("distilled-demo"), help="Where the distilled set goes."),
    engines: Path = typer.Option(Path("engines/embedded-ort-demo"), help="Engine folder (exported once, reused)."),
    val: Path | None = typer.Option(None, help="Real Imagenette val folder (default: $IGDS_DATA/imagenette-64/val)."),
    epochs: int = typer.Option(30, help="Training epochs of the quick evaluation (the protocol uses 2000)."),
) -> None:
    """Export the embedded model (ONNX Runtime), distill Imagenette IPC 10, evaluate: the tour in minutes."""
    from ..jobs.demo import run_demo

    result = run_demo(out, engines, val, epochs, log=typer.echo)
    typer.echo(json.dumps(result, indent=1))


def register(app: typer.Typer) -> None:
    app.command()(distill)
    app.command()(demo)
