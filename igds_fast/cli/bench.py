"""``igds-fast bench``: throughput of every backend on one model, written as JSON (see docs/benchmarks.md)."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from ..errors import UserError
from . import options as opt

# The bench's rows as bench.config spells them (tests/test_cli_polish.py keeps these equal to
# DEFAULT_BACKENDS and variant_names()): written out here because the backend table imports torch,
# and --help starts without it.
DEFAULT_BACKENDS = ("eager-ref", "eager", "torch-compile", "onnxruntime", "tensorrt")
VARIANTS = ("eager-ref", "eager", "compiled", "onnxruntime", "tensorrt", "torch-compile", "torch-compile-cg")


def parse_list(text: str, option: str) -> list[str]:
    items = [p.strip() for p in text.split(",") if p.strip()]
    if not items:
        raise UserError(f"{option} is empty")
    return items


def canonical_command(ctx: typer.Context) -> str:
    """The command with every option spelled out (defaults too): it reruns this exact bench, however
    it was invoked (shell, script, test runner)."""
    words = ["igds-fast", ctx.info_name or "bench"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or param.param_type_name != "option":
            continue
        if getattr(param, "is_flag", False):
            flag = param.opts[0] if value else (param.secondary_opts or [None])[0]
            words += [flag] if flag else []
        else:
            words += [param.opts[0], str(value)]
    return shlex.join(words)


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        ctx: typer.Context,
        model: str = typer.Option("embedded", help="embedded, dit-s2, dit-b2 or dit-xl2 (DiTs have random weights)."),
        random_weights: bool = typer.Option(False, help="Embedded: use a random stand-in even when it is built."),
        resolution: int | None = typer.Option(None, help="Image size in px (DiTs: latent R/8; default 256)."),
        batch_size: int = typer.Option(8, help="Images per guided step."),
        steps: int = typer.Option(50, help="Respaced steps: the schedule, and the end-to-end chain length."),
        backends: str = typer.Option(
            ",".join(DEFAULT_BACKENDS),
            help="Comma list of "
            + ", ".join(VARIANTS)
            + " (compiled = the AOTInductor engine); NAME@fp16 etc. runs one row in its own precision.",
        ),
        e2e_backends: str | None = typer.Option(
            None, help="Backends that also run the full chain + decode + PNG (default: all; 'none' for none)."
        ),
        guidance: str = typer.Option("igds", help="igds (critic gradient in the step) or off."),
        clip_guard: float | None = opt.step_flag("clip_guard"),
        warmup: int = typer.Option(2, help="Untimed calls before timing."),
        repeats: int = typer.Option(5, help="Timed calls (median reported), fresh inputs each."),
        device: str = typer.Option("cpu", help="cpu or cuda[:N]."),
        dtype: str = typer.Option("fp32", help="Denoiser precision of all but eager-ref: fp32, bf16 or fp16."),
        memory_size: int = typer.Option(32, help="Rows of the critic-feature memory input."),
        parity_inputs: int = typer.Option(1, help="Fresh inputs for the error check against eager fp32."),
        peak_tflops: float | None = typer.Option(None, help="Peak TFLOP/s to compare with (default: measured)."),
        threads: int | None = typer.Option(None, help="CPU threads for torch and onnxruntime."),
        attention: str = typer.Option(
            "sdpa",
            help="Denoiser attention of the eager rows: sdpa (fused) or math (exported graphs choose their own).",
        ),
        ref_images: int | None = typer.Option(
            None,
            help="eager-ref's end-to-end chain on this many images, one at a time: a per-image rate "
            "(default --batch-size).",
        ),
        json_out: Path | None = typer.Option(None, "--json", help="Write the results here."),
    ) -> None:
        """Time the guided step and the whole distill path (steps, decode, PNG) per backend."""
        from ..bench import BenchConfig, BenchTerminated, run_bench

        if json_out is not None and json_out.is_dir():  # found only after the first row was timed
            raise UserError(f"--json '{json_out}' is a folder; give a file name for the results, e.g. bench.json")
        e2e = None
        if e2e_backends is not None:
            e2e = [] if e2e_backends == "none" else parse_list(e2e_backends, "--e2e-backends")
        cfg = BenchConfig(
            model=model,
            random_weights=random_weights,
            resolution=resolution,
            batch_size=batch_size,
            steps=steps,
            backends=parse_list(backends, "--backends"),
            e2e_backends=e2e,
            guidance=guidance,
            clip_guard=clip_guard,
            warmup=warmup,
            repeats=repeats,
            device=device,
            dtype=dtype,
            memory_size=memory_size,
            parity_inputs=parity_inputs,
            peak_tflops=peak_tflops,
            threads=threads,
            attention=attention,
            ref_images=ref_images,
        )
        command = canonical_command(ctx)
        try:
            run_bench(cfg, command=command, json_path=json_out, log=lambda m: typer.echo(m, err=True))
        except BenchTerminated:
            typer.echo(f"bench: terminated (SIGTERM); {json_out or 'the JSON'} holds the finished rows", err=True)
            raise typer.Exit(124) from None
        if json_out is not None:
            typer.echo(f"wrote {json_out}")
