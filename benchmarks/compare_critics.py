"""Held-out accuracy and I(X;Y) bound per t bucket of several critic files, side by side.

Reads the metrics train-critics stored in each file (held-out real images, the same buckets), so it
runs in a second; the rows are only comparable when the critics were scored on the same val split.
With ``--train DIR`` it also scores every critic on a class-balanced subsample of its training images
(the embedded VAE's latents; the same noise draws for every critic), so the gap between training and
held-out accuracy per t shows whether a critic is limited by what it can fit or by what generalises.

    python benchmarks/compare_critics.py shipped=igds_fast/data/embedded_critic.safetensors \
        aug=runs/critic_aug/critic.safetensors --out benchmarks/results/critic_aug/compare.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from igds_fast.diffusion.schedule import Schedule
from igds_fast.machine import library_versions, machine_facts
from igds_fast.models.critics import load_critic
from igds_fast.models.embedded import resolve_models
from igds_fast.models.vae import load_vae
from igds_fast.training.data_pack import load_training_images
from igds_fast.training.latents import encoded
from igds_fast.training.train_critic import balanced_subsample, evaluate_critic


def critic_row(path: Path) -> dict:
    critic = load_critic(path)
    m = critic.metrics
    buckets = m["trained"]["buckets"]
    low = [b for b in buckets if b["t"][1] < 300]
    return {
        "path": str(path),
        "held_out": m.get("held_out"),
        "steps": m.get("steps"),
        "train_seconds": m.get("train_seconds"),
        "acc_mean": m["trained"]["acc"],
        "acc_t_below_300": sum(b["acc"] for b in low) / len(low),
        "bound_t_below_300": sum(b["ba_bound_nats"] for b in low) / len(low),
        "ba_bound_nats": m["trained"]["ba_bound_nats"],
        "buckets": [{"t": b["t"], "acc": b["acc"], "ba_bound_nats": b["ba_bound_nats"]} for b in buckets],
    }


def training_rows(paths: dict[str, Path], train: Path, images: int, cache: Path) -> dict[str, dict]:
    """Accuracy and bound per t bucket on ``images`` training images (the first of each class)."""
    critics = {name: load_critic(path) for name, path in paths.items()}
    first = next(iter(critics.values())).config
    vae = load_vae(resolve_models(None, None, None, "off").vae)
    resolution = first.input_size * int(getattr(vae, "downsample", 1))
    pixels, y = balanced_subsample(
        *load_training_images(str(train), first.wnids, resolution, cache), images, first.num_classes
    )
    x = encoded(pixels, vae, cache)
    tab = Schedule.create(1000).tables()
    out = {}
    for name, critic in critics.items():
        m = evaluate_critic(critic, x, y, tab)
        low = [b for b in m["buckets"] if b["t"][1] < 300]
        out[name] = {
            "acc_mean": m["acc"],
            "acc_t_below_300": sum(b["acc"] for b in low) / len(low),
            "buckets": [{"t": b["t"], "acc": b["acc"], "ba_bound_nats": b["ba_bound_nats"]} for b in m["buckets"]],
        }
    return out


def bucket_table(
    rows: dict[str, dict], columns: tuple[str, str], cell: Callable[[str, int], str], totals: list[tuple[str, Callable]]
) -> str:
    """Markdown: one line per t bucket, two columns per critic (``cell(name, bucket)`` -> "a | b"), then ``totals``."""
    names = list(rows)
    lines = ["| t | " + " | ".join(f"{n} {columns[0]} | {n} {columns[1]}" for n in names) + " |"]
    lines.append("|---" * (1 + 2 * len(names)) + "|")
    for k, b in enumerate(rows[names[0]]["buckets"]):
        lines.append(f"| {b['t'][0]}-{b['t'][1]} | " + " | ".join(cell(n, k) for n in names) + " |")
    for label, total in totals:
        lines.append(f"| {label} | " + " | ".join(total(n) for n in names) + " |")
    return "\n".join(lines)


def pair(a: float, b: float) -> str:
    return f"{a:.3f} | {b:.3f}"


LOW_T = "t < 300 (mean of buckets)"


def gap_table(rows: dict[str, dict], train: dict[str, dict]) -> str:
    acc = ("train acc", "held-out acc")
    cell = lambda n, k: pair(train[n]["buckets"][k]["acc"], rows[n]["buckets"][k]["acc"])  # noqa: E731
    return bucket_table(
        rows, acc, cell, [(LOW_T, lambda n: pair(train[n]["acc_t_below_300"], rows[n]["acc_t_below_300"]))]
    )


def markdown(rows: dict[str, dict]) -> str:
    cell = lambda n, k: pair(rows[n]["buckets"][k]["acc"], rows[n]["buckets"][k]["ba_bound_nats"])  # noqa: E731
    totals = [
        (LOW_T, lambda n: pair(rows[n]["acc_t_below_300"], rows[n]["bound_t_below_300"])),
        ("all (mean acc, pooled bound)", lambda n: pair(rows[n]["acc_mean"], rows[n]["ba_bound_nats"])),
    ]
    return bucket_table(rows, ("acc", "bound"), cell, totals)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("critics", nargs="+", help="NAME=PATH of each critic file")
    ap.add_argument("--out", type=Path, help="write the rows here as JSON")
    ap.add_argument("--train", type=Path, help="also score each critic on these training images (an ImageFolder)")
    ap.add_argument("--train-images", type=int, default=1000, help="class-balanced training images scored")
    ap.add_argument("--cache", type=Path, default=Path("runs/compare_critics_cache"), help="decoded images, latents")
    args = ap.parse_args()
    pairs = [c.split("=", 1) for c in args.critics]
    if any(len(p) != 2 or not Path(p[1]).is_file() for p in pairs):
        raise SystemExit("error: give each critic as NAME=PATH to an existing critic file")
    rows = {name: critic_row(Path(path)) for name, path in pairs}
    table = markdown(rows)
    print(table)
    record = {"critics": rows, "table": table}
    if args.train is not None:
        train = training_rows({n: Path(p) for n, p in pairs}, args.train, args.train_images, args.cache)
        record |= {"train": train, "train_images": args.train_images, "gap_table": gap_table(rows, train)}
        print("\n" + record["gap_table"])
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record |= {"machine": machine_facts(), "versions": library_versions()}
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
