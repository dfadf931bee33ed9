"""Time the main job as a user runs it: `igds-fast distill --ipc 10 --out <fresh folder>`.

Each round runs the default job (IGDS, the automatic backend) and then the same job with
`--guidance off` (same steps, same backend choice), each into a fresh, empty output folder, so
every run samples all 100 images. Rounds interleave the two so both see the same load. Records,
per run: the load average just before it, wall-clock seconds of the whole command (Python start,
model load, sampling, decode, PNG writing, manifest), img/s over that time, and the backend,
precision and img/s that the job's own run.json reports. The engine cache is the user's
default (`$IGDS_ENGINE_CACHE` or ~/.cache/igds-fast/engines); on a CPU with bf16 units the
automatic backend is the eager step, which uses no cache.

    python benchmarks/main_job.py --repeats 3 --out benchmarks/results/main_job/cpu.json
    python benchmarks/main_job.py --repeats 1 --not-quiet ...   # the machine is shared: say so

The JSON says whether the machine was quiet ("quiet", given by the caller; the load averages are
recorded either way) and the guided / unguided ratio of the median seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import igds_fast
from igds_fast.machine import BF16_FLAGS, cpu_flags, cpu_model, library_versions

REPO = Path(__file__).resolve().parents[1]
CODE = Path(igds_fast.__file__).resolve().parents[1]  # the tree whose igds_fast runs (PYTHONPATH may pick another)
# name -> (distill options after `--out <folder>`, images made). igds/off: the main job and its unguided
# twin; ipc1 / one-class: the same 10 images as IPC 1 over the 10 classes (one batch across classes) and
# as IPC 10 of one class (one batch of one class), whose sampling img/s the JSON compares.
CASES: dict[str, tuple[list[str], int]] = {
    "igds": (["--ipc", "10"], 100),
    "off": (["--ipc", "10", "--guidance", "off"], 100),
    "ipc1": (["--ipc", "1"], 10),
    "one-class": (["--ipc", "10", "--classes", "n01440764"], 10),
}


def git_state() -> dict:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=CODE, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "HEAD") or None,
        "dirty_files": git("status", "--porcelain", "igds_fast").splitlines(),
    }


def run_once(case: str, workdir: Path, name: str) -> dict:
    out = workdir / name
    extra, images = CASES[case]
    cmd = ["igds-fast", "distill", "--out", str(out), *extra]
    load = os.getloadavg()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"error: {shlex.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    run = json.loads((out / "run.json").read_text())
    last = (run.get("runs") or [{}])[-1]  # this run's entry: backend, precision, sampling seconds, img/s
    record = {
        "command": shlex.join(["igds-fast", "distill", "--out", "<fresh folder>", *extra]),
        "loadavg_before": [round(v, 2) for v in load],
        "seconds": round(seconds, 2),
        "images": images,
        "img_per_s": round(images / seconds, 3),
        "run_json_backend": last.get("backend"),
        "run_json_precision": last.get("precision"),
        "run_json_seconds": last.get("seconds"),
        "run_json_img_per_s": None if last.get("img_per_s") is None else round(last["img_per_s"], 3),
    }
    print(json.dumps(record), flush=True)
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/main_job/cpu.json")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the cases [3]")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    ap.add_argument("--not-quiet", action="store_true", help="record quiet: false (other work shares the machine)")
    args = ap.parse_args()
    flags = cpu_flags()
    result: dict = {
        "what": "wall-clock seconds of `igds-fast distill` (the main job: --ipc 10, 100 images) from a fresh output "
        "folder, the default step",
        "command": shlex.join(["python", "benchmarks/main_job.py", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quiet": not args.not_quiet,
        "machine": {
            "cpu_model_name": cpu_model(),
            "bf16_flags": [f for f in BF16_FLAGS if f in flags],
            "amx_flags": sorted(f for f in flags if f.startswith("amx")),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        },
        "versions": library_versions(),
        "git": git_state(),
        "runs": [],
    }
    cases = args.cases.split(",")
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        sys.exit(f"error: unknown case {unknown[0]}; use {', '.join(CASES)}")
    result["step"] = "the default (`igds-fast distill --help`; run.json of each run records it)"
    with tempfile.TemporaryDirectory(prefix="main-job-") as tmp:
        for r in range(args.repeats):
            for case in cases:
                rec = run_once(case, Path(tmp), f"{case}-{r}")
                result["runs"].append({"round": r, "case": case, **rec})
    runs = result["runs"]
    med = {c: statistics.median(x["seconds"] for x in runs if x["case"] == c) for c in cases}
    sampling = {c: statistics.median(x["run_json_img_per_s"] for x in runs if x["case"] == c) for c in cases}
    result["median_seconds"] = {c: round(s, 2) for c, s in med.items()}
    result["median_img_per_s"] = {c: round(CASES[c][1] / s, 3) for c, s in med.items()}
    result["median_sampling_img_per_s"] = sampling
    if {"igds", "off"} <= set(cases):
        result["guided_over_unguided"] = round(med["igds"] / med["off"], 3)
    if {"ipc1", "one-class"} <= set(cases):
        # time per image of IPC 1 over ten classes relative to IPC 10 of one class (sampling, then wall clock)
        result["ipc1_over_one_class_per_image"] = {
            "sampling": round(sampling["one-class"] / sampling["ipc1"], 3),
            "wall": round(med["ipc1"] / med["one-class"], 3),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        json.dumps(
            {k: result.get(k) for k in ("median_seconds", "guided_over_unguided", "ipc1_over_one_class_per_image")}
        )
    )


if __name__ == "__main__":
    main()
