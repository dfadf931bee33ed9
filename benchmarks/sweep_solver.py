"""Fewer denoiser passes at the default's quality: the shipped step's guidance under shorter schedules,
other solvers and a cheaper clip guard, each scored by the independent judge (``igds-fast quality``)
with its sampling time beside it. Every row is the shipped ``StepConfig()`` plus its options, so rows
stay comparable as long as the default they name is recorded in their JSON (``step``).

    python benchmarks/sweep_solver.py --out runs/sweep_solver --table runs/sweep_solver/table.md

Resumable (a finished row's JSON is kept); the reading: docs/experiments/sweep_solver.md.
"""

from __future__ import annotations

import json

from sweep_guidance import KEYS, image_stats, paired_saturation, prepare, run_config, sweep_arguments, table

# name -> options on top of the shipped step (each row spells out what it tests, so a name keeps its meaning
# as defaults move; the whole step is recorded with the row)
CONFIGS: dict[str, dict] = {
    "off 50": {"guidance": "off", "steps": "50"},
    "default 50": {"steps": "50", "clip_guard": 0.5},  # the default of earlier releases
    "off ddpm25": {"guidance": "off", "steps": "25"},
    "ddpm25": {"steps": "25", "clip_guard": 0.5},
    "ddpm25 clip0": {"steps": "25", "clip_guard": 0.0},
    "ddim25 clip0": {"sampler": "ddim", "steps": "ddim25", "clip_guard": 0.0},
    "off ddim25": {"guidance": "off", "sampler": "ddim", "steps": "ddim25"},
    "ddim25 eta1 clip0": {"sampler": "ddim", "steps": "ddim25", "eta": 1.0, "clip_guard": 0.0},
    "ddpm25 clip0 s0.6 b0.45": {"steps": "25", "clip_guard": 0.0, "guidance_scale": 0.6, "beta": 0.45},
    "ddpm20 clip0": {"steps": "20", "clip_guard": 0.0},
    "off ddpm20": {"guidance": "off", "steps": "20"},
}
ORDER = ["ddpm25 clip0", "off ddpm25", "ddim25 clip0", "ddpm25", "ddpm25 clip0 s0.6 b0.45", "ddpm20 clip0"]


def main() -> None:
    ap = sweep_arguments(__doc__.splitlines()[0], "runs/sweep_solver")
    ap.add_argument("--off", default="off ddpm25", help="The row whose images the saturation is paired against.")
    args = ap.parse_args()
    wnids, judge = prepare(args)
    rows = []
    for name in args.only.split(",") if args.only else ORDER:
        row = run_config(name, CONFIGS[name], args, judge, wnids, base={})
        off_folder = args.out / args.off.replace(" ", "_")
        if name != args.off and (off_folder / "result.json").exists():
            row["paired"] = paired_saturation(args.out / name.replace(" ", "_"), image_stats(off_folder, wnids), wnids)
        rows.append(row)
        shown = {k: row[k] for k in ("name", "seconds", *KEYS, "judge_log_q")}
        print(json.dumps(shown | row.get("paired", {})), flush=True)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table(rows))


if __name__ == "__main__":
    main()
