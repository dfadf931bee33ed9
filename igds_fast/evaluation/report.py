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


def cell(r: dict[str, Any]) -> str:
    scaled = "*" if r["epochs"] != r["epochs_protocol"] else ""
    return f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}{scaled}"


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One table per net@resolution: a row per method, a column per IPC, top-1 % as mean ± std over seeds."""
    by_net: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_net[(r["net"], r["resolution"])].append(r)
    lines = ["# Evaluation results", ""]
    for (net, res), rs in sorted(by_net.items()):
        ipcs = sorted({r["ipc"] for r in rs})
        grid = {(r["method"], r["ipc"]): r for r in rs}
        lines += [f"## {net} @ {res} px", "", "| method | " + " | ".join(f"IPC {i}" for i in ipcs) + " |"]
        lines.append("|---|" + "---|" * len(ipcs))
        for method in sorted({r["method"] for r in rs}):
            cells = [cell(grid[(method, i)]) if (method, i) in grid else "—" for i in ipcs]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    seeds = sorted({len(r["accuracies"]) for r in results})
    n_seeds = "/".join(map(str, seeds))
    lines.append(f"Top-1 accuracy (%) on the real val set, mean ± std over {n_seeds} seeds.")
    if any(r["epochs"] != r["epochs_protocol"] for r in results):
        lines.append("\\* trained for fewer epochs than the protocol prescribes (scaled down).")
    return "\n".join(lines) + "\n"


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


def write_report(paths: list[Path], out: Path, plot_path: Path | None) -> None:
    results = load_results(paths)
    for p in (out, plot_path):
        if p is not None and not p.parent.is_dir():
            raise UserError(f"output folder '{p.parent}' does not exist")
    write_atomic(out, markdown_table(results).encode())
    if plot_path is not None:
        plot(results, plot_path)
