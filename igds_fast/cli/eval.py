"""``igds-fast evaluate``, ``igds-fast baseline random-real`` and ``igds-fast report``.

Heavy imports (torch, matplotlib) stay inside the commands so that ``igds-fast --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .options import warn_if_slow_bf16

baseline_app = typer.Typer(help="Baseline sets laid out like a distilled set.", no_args_is_help=True)


def evaluate(
    train: Path = typer.Option(..., help="Distilled set (ImageFolder: <wnid>/<index>.png, run.json)."),
    val: Path = typer.Option(..., help="Real val ImageFolder (<wnid>/<image>)."),
    subset: str | None = typer.Option(
        None, help="Class order for labels (imagenette, imagewoof, ...); default: run.json's classes."
    ),
    net: str = typer.Option("convnet6", help="convnet3, convnet6, resnetap10 or resnet18."),
    resolution: int = typer.Option(224, help="Train and test image side in px (the protocol: 224)."),
    seeds: int = typer.Option(3, help="Train this many networks (seeds 0..N-1); report mean ± std."),
    epochs: int | None = typer.Option(
        None, help="Override the protocol's epochs-by-IPC (a CPU scale-down; recorded in the results)."
    ),
    method: str | None = typer.Option(None, help="Method name in the results (default: from run.json)."),
    device: str = typer.Option("cpu", help="cpu or cuda[:N]."),
    precision: str = typer.Option(
        "fp32", help="fp32 (the protocol) or bf16 (autocast: ~3x faster on CPUs with AMX; recorded in the results)."
    ),
    out: Path = typer.Option(
        Path("results.json"),
        help="Results file; finished seeds wait in <out>.partial, and a rerun (or more --seeds) reuses the seeds done.",
    ),
    only_seed: list[int] | None = typer.Option(
        None,
        "--only-seed",
        metavar="<int>",
        help="Train only this seed of 0..N-1 now (repeatable): one process per seed, same --out, runs seeds in "
        "parallel; the results file is written once every seed is in.",
    ),
) -> None:
    """Train a network on a distilled set and test it on the real val set (MinimaxDiffusion's protocol).

    Reports the final epoch's top-1 and, beside it, the best of 10 val readings over the run.
    """
    from ..api import evaluate as run_evaluate

    warn_if_slow_bf16(precision, device)
    res = run_evaluate(
        train,
        val,
        subset=subset,
        net=net,
        resolution=resolution,
        seeds=seeds,
        epochs=epochs,
        method=method,
        device=device,
        precision=precision,
        out=out,
        only_seed=only_seed or None,
    )
    results = res.results
    if results is None:
        typer.echo(
            f"seed(s) {', '.join(map(str, only_seed or []))} saved in {res.partial}; {out} is written once all "
            f"{seeds} seeds are in (run the others with --only-seed, or rerun without it)"
        )
        return
    typer.echo(
        f"{results['method']} IPC {results['ipc']} {net}@{resolution}px: "
        f"{100 * results['mean']:.2f} ± {100 * results['std']:.2f}% top-1 over {seeds} seeds "
        f"(best epoch {100 * results['best_mean']:.2f} ± {100 * results['best_std']:.2f}%; "
        f"{results['epochs']} epochs, protocol {results['epochs_protocol']}, {precision}) -> {out}"
    )


@baseline_app.command("random-real")
def random_real(
    data: Path = typer.Option(..., help="Real ImageFolder to pick from (<wnid>/<image>)."),
    ipc: int = typer.Option(..., help="Images per class."),
    seed: int = typer.Option(0, help="Seed of the picks."),
    out: Path = typer.Option(..., help="Output folder (laid out like a distilled set)."),
    subset: str | None = typer.Option(None, help="Classes to pick: imagenette (default), imagewoof, ..."),
    classes: str | None = typer.Option(None, help="Comma-separated WNIDs instead of --subset."),
) -> None:
    """Pick IPC random real images per class (the random baseline of the papers)."""
    from ..jobs.baseline import random_real as write_random_real
    from ..subsets import resolve_classes

    if write_random_real(data, resolve_classes(subset, classes), ipc, seed, out):
        typer.echo(f"wrote {out}: {ipc} real images per class, seed {seed}")
    else:
        typer.echo(f"{out} already holds this run: nothing to do")


def report(
    results: list[Path] = typer.Argument(..., help="results.json files from evaluate."),
    out: Path = typer.Option(Path("docs/results.md"), help="Markdown table."),
    plot: Path | None = typer.Option(Path("docs/accuracy_vs_ipc.png"), help="Accuracy-vs-IPC plot."),
    readme: Path | None = typer.Option(None, help="Also put the tables between this README's results markers."),
) -> None:
    """Tabulate and plot evaluate results (method x IPC x net, mean ± std)."""
    from ..evaluation.report import write_report

    write_report(results, out, plot, readme)
    typer.echo(
        f"wrote {out}" + (f" and {plot}" if plot is not None else "") + (f"; updated {readme}" if readme else "")
    )


def quality(
    samples: Path = typer.Option(..., help="Sample set to judge (ImageFolder: <class>/<image>; WNIDs or names)."),
    real_train: Path = typer.Option(..., help="Real train ImageFolder: the judge is trained on it (once, cached)."),
    real_val: Path = typer.Option(..., help="Real val ImageFolder: the k-NN manifold and a reference row."),
    resolution: int | None = typer.Option(None, help="Judge resolution in px (default: the samples' image size)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the full results (JSON) here."),
    net: str = typer.Option("convnet3", help="Judge network: convnet3, convnet6, resnetap10 or resnet18."),
    epochs: int | None = typer.Option(None, help="Judge training epochs on real train (default 6)."),
    cache_dir: Path | None = typer.Option(None, help="Judge cache (default ~/.cache/igds-fast/judges)."),
    device: str = typer.Option("cpu", help="cpu or cuda[:N]."),
    seed: int = typer.Option(0, help="Seed of the judge's training and of the reference picks."),
) -> None:
    """Judge a sample set with an independent classifier trained on real data: accuracy, precision, recall,
    density, coverage, saturation, within-class feature distance, next to real val and random real images."""
    from ..api import quality as run_quality

    res = run_quality(
        samples,
        real_train,
        real_val,
        resolution=resolution,
        json_out=json_out,
        net=net,
        epochs=epochs,
        cache_dir=cache_dir,
        device=device,
        seed=seed,
    )
    typer.echo(res.table + (f"\n-> {json_out}" if json_out is not None else ""))


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
    app.add_typer(baseline_app, name="baseline")
    app.command()(report)
    app.command()(quality)
