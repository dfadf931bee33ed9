"""results.json files -> a markdown table (method x IPC per net) and an accuracy-vs-IPC plot."""

from __future__ import annotations

import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..imageio import write_atomic

REQUIRED = ("method", "ipc", "net", "resolution", "mean", "std", "accuracies", "epochs", "epochs_protocol")


def load_results(paths: list[Path]) -> list[dict[str, Any]]:
    """Read and check the files; two results for the same (method, net, resolution, IPC) are an error."""
    results, seen = [], {}
    for path in paths:
        try:
            r = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"results file '{path}' does not exist") from None
        except IsADirectoryError:
            raise UserError(f"results file '{path}' is a folder; give the results.json files evaluate wrote") from None
        except (ValueError, OSError) as e:  # bad JSON, or bytes that are not UTF-8 text
            raise UserError(f"'{path}' is not a JSON results file: {e}") from None
        if not isinstance(r, dict):
            raise UserError(f"'{path}' is not an evaluate result: it holds a {type(r).__name__}, not an object")
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise UserError(f"'{path}' is not an evaluate result: it lacks {', '.join(missing)}")
        key = (r["method"], r["net"], r["resolution"], r["ipc"])
        if key in seen:
            raise UserError(f"'{seen[key]}' and '{path}' both hold {key[0]} {key[1]}@{key[2]}px IPC {key[3]}")
        seen[key] = path
        results.append(r)
    if not results:
        raise UserError("no results files given")
    return results


# Row labels and order of the methods run_results.sh makes; other methods follow by name.
METHOD_LABELS = {"random-real": "random real images", "dit": "DiT, guidance off", "igds": "IGDS (default)"}

README_BEGIN = "<!-- results table: written by igds-fast report --readme; edit benchmarks/run_results.sh, not this -->"
README_END = "<!-- end of results table -->"


def precision_of(r: dict[str, Any]) -> str:
    """The evaluation training precision of a result (files written before it was recorded: fp32)."""
    return r.get("precision", "fp32")


def cell(r: dict[str, Any], show_precision: bool = False) -> str:
    """Final-epoch top-1 mean ± std over seeds, then the best of the val readings (if recorded); in square
    brackets the seed count when it is not 3 and, with ``show_precision``, the evaluation precision."""
    scaled = "*" if r["epochs"] != r["epochs_protocol"] else ""
    n = len(r["accuracies"])
    text = f"{100 * r['mean']:.1f}" + (f" ± {100 * r['std']:.1f}" if n > 1 else "") + scaled
    if "best_mean" in r:
        text += f" ({100 * r['best_mean']:.1f})"
    tags = [f"{n} seed{'s' if n != 1 else ''}"] if n != 3 else []
    if show_precision:
        tags.append(precision_of(r))
    if tags:
        text += f" [{', '.join(tags)}]"
    return text


def markdown_table(results: list[dict[str, Any]]) -> str:
    """The report file: a title, then ``markdown_tables``."""
    return "# Evaluation results\n\n" + markdown_tables(results)


def markdown_tables(results: list[dict[str, Any]], heading: str = "##") -> str:
    """One table per net@resolution: a row per method, a column per IPC, top-1 % as mean ± std over seeds."""
    by_net: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_net[(r["net"], r["resolution"])].append(r)
    precisions = sorted({precision_of(r) for r in results})
    per_cell = len(precisions) > 1  # mixed: each cell names its own
    lines = []
    for (net, res), rs in sorted(by_net.items()):
        ipcs = sorted({r["ipc"] for r in rs})
        grid = {(r["method"], r["ipc"]): r for r in rs}
        lines += [f"{heading} {net} @ {res} px", "", "| method | " + " | ".join(f"IPC {i}" for i in ipcs) + " |"]
        lines.append("|---|" + "---|" * len(ipcs))
        order = list(METHOD_LABELS)
        for method in sorted(
            {r["method"] for r in rs}, key=lambda m: (order.index(m) if m in order else len(order), m)
        ):
            cells = [cell(grid[(method, i)], per_cell) if (method, i) in grid else "—" for i in ipcs]
            lines.append(f"| {METHOD_LABELS.get(method, method)} | " + " | ".join(cells) + " |")
        lines.append("")
    # The std is the one evaluate stored: numpy's np.std over the seeds' final accuracies (ddof=0).
    lines.append(
        "Top-1 accuracy (%) on the real val set at the final epoch: mean ± population std (ddof=0) over 3 seeds "
        "unless a cell's square brackets give another count; in round brackets, the mean of each seed's best of "
        "its 10 val readings (chosen on the test set, so optimistic; the papers often report it)."
    )
    if any(r["epochs"] != r["epochs_protocol"] for r in results):
        lines.append("\\* trained for fewer epochs than the protocol prescribes (scaled down).")
    if per_cell:
        lines.append(
            "Evaluation training precision: per cell, in square brackets (bf16: autocast, fp32 weights; "
            "fp32: no autocast)."
        )
    else:
        what = " (autocast, fp32 weights)" if precisions == ["bf16"] else ""
        lines.append(f"Evaluation training precision: {precisions[0]}{what}, every cell.")
    return "\n".join(lines) + "\n"


def with_readme_block(readme: Path, table: str) -> str:
    """The README's text with ``table`` between its two results markers (placed once by hand)."""
    text = readme.read_text()
    if text.count(README_BEGIN) != 1 or text.count(README_END) != 1:
        raise UserError(f"'{readme}' needs the two results markers once each: {README_BEGIN} ... {README_END}")
    head, rest = text.split(README_BEGIN)
    _, tail = rest.split(README_END)
    return f"{head}{README_BEGIN}\n{table.strip()}\n{README_END}{tail}"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        curves[f"{r['method']} / {r['net']}@{r['resolution']}"].append(r)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rs in sorted(curves.items()):
        rs = sorted(rs, key=lambda r: r["ipc"])
        ax.errorbar(
            [r["ipc"] for r in rs],
            [100 * r["mean"] for r in rs],
            yerr=[100 * r["std"] for r in rs],
            marker="o",
            capsize=3,
            label=label,
        )
    ax.set_xscale("log")
    ax.set_xlabel("images per class (IPC)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def write_report(paths: list[Path], out: Path, plot_path: Path | None, readme: Path | None = None) -> None:
    results = load_results(paths)
    for p in (out, plot_path):
        if p is not None and not p.parent.is_dir():
            raise UserError(f"output folder '{p.parent}' does not exist")
    if readme is not None and not readme.is_file():
        raise UserError(f"--readme '{readme}' is not a file")
    table = markdown_table(results)
    # The README's tables sit under its own headings: no title, nets two levels further down.
    readme_text = with_readme_block(readme, markdown_tables(results, "####")) if readme else None
    write_atomic(out, table.encode())
    if readme is not None:
        write_atomic(readme, readme_text.encode())
    if plot_path is not None:
        plot(results, plot_path)
