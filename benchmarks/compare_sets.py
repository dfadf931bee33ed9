"""Paired per-image comparison of distilled sets made from the same noise (same --seed and IPC).

Each image's noise derives from (seed, class, index), so image k of a class is the same draw in every
set; the per-image difference of a statistic recorded in the sets' Parquet manifests (saturation,
pixel std) then has a much smaller standard error than the difference of two set means. Prints one
row per set against the first (the reference), and writes JSON with --out.

    python benchmarks/compare_sets.py runs/results_v2/sets/dit-ipc50 runs/results_v2/sets/igds-ipc50 ...
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pyarrow.parquet as pq

from igds_fast.jobs.image_manifest import set_manifest_path

STATS = ("saturation", "pixel_std")


def read_manifest(folder: Path) -> dict[int, dict[str, float]]:
    """seed -> the image's statistics, from the set's metadata (either layout)."""
    path = set_manifest_path(folder)
    if not path.is_file():
        raise SystemExit(f"{folder}: no {path.name}; give folders written by igds-fast distill")
    rows = pq.read_table(path).to_pylist()
    return {int(r["seed"]): {k: float(r[k]) for k in STATS} for r in rows}


def paired(ref: dict[int, dict[str, float]], other: dict[int, dict[str, float]], stat: str) -> dict[str, float]:
    """Mean of the reference and of the other set over their common images, the mean per-image
    difference (other - reference) and its standard error."""
    seeds = sorted(set(ref) & set(other))
    if len(seeds) < 2:
        raise SystemExit("the sets share fewer than 2 images: were they made with the same --seed and classes?")
    d = [other[s][stat] - ref[s][stat] for s in seeds]
    mean = sum(d) / len(d)
    var = sum((v - mean) ** 2 for v in d) / (len(d) - 1)
    return {
        "images": len(seeds),
        "reference": sum(ref[s][stat] for s in seeds) / len(seeds),
        "other": sum(other[s][stat] for s in seeds) / len(seeds),
        "difference": mean,
        "standard_error": math.sqrt(var / len(d)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", type=Path, nargs="+", help="The reference set first, then the sets to compare with it.")
    ap.add_argument("--out", type=Path, default=None, help="Write the comparison as JSON here.")
    args = ap.parse_args()
    if len(args.sets) < 2:
        raise SystemExit("give a reference set and at least one set to compare with it")
    ref = read_manifest(args.sets[0])
    rows = []
    for folder in args.sets[1:]:
        other = read_manifest(folder)
        row = {"reference": str(args.sets[0]), "set": str(folder), **{k: paired(ref, other, k) for k in STATS}}
        rows.append(row)
        s = row["saturation"]
        print(
            f"{folder.name} vs {args.sets[0].name} ({s['images']} images): saturation {s['other']:.4f} vs "
            f"{s['reference']:.4f}, difference {s['difference']:+.4f} +- {s['standard_error']:.4f} (paired s.e.); "
            f"pixel std difference {row['pixel_std']['difference']:+.4f} +- {row['pixel_std']['standard_error']:.4f}"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
