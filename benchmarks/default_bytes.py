"""Record (or check) the bytes of small default distill runs: the images' sha256 and the job digest.

    python benchmarks/default_bytes.py            # check against the committed record
    python benchmarks/default_bytes.py --write    # record this machine's bytes (after a deliberate change)

The record (benchmarks/results/default_bytes/default-small.json) is what `tests/test_default_bytes.py`
compares against: a refactor of the step, the options or the job must leave these bytes unchanged.
Float kernels differ between CPU kinds, so the record is keyed by the CPU model, its bf16 flags and torch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RECORD = Path(__file__).resolve().parent / "results" / "default_bytes" / "default-small.json"
CLASSES = "n01440764,n03888257"
# name -> extra options; every step option is left at its default.
CASES: dict[str, list[str]] = {
    "eager-fp32": ["--ipc", "2", "--backend", "eager", "--threads", "1"],
    "eager-bf16": ["--ipc", "2", "--backend", "eager", "--dtype", "bf16", "--threads", "1"],
    "eager-fp32-two-chunks": ["--ipc", "3", "--batch-size", "2", "--backend", "eager", "--threads", "1"],
}


def machine_key() -> dict[str, str]:
    import torch

    from igds_fast.machine import cpu_flags, cpu_model

    bf16 = sorted(f for f in cpu_flags() if "bf16" in f)
    return {"cpu": cpu_model(), "bf16_flags": ",".join(bf16), "torch": torch.__version__}


def run_case(name: str, out: Path) -> dict[str, object]:
    cmd = ["igds-fast", "distill", "--classes", CLASSES, "--out", str(out), *CASES[name]]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    images = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("n*/*.png"))}
    run = json.loads((out / "run.json").read_text())
    return {
        "command": " ".join(cmd).replace(str(out), "OUT"),
        "job": run["job"],
        "step": run["config"]["step"],
        "images": images,
    }


def measure() -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        return {name: run_case(name, Path(tmp) / name) for name in CASES}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="record this machine's bytes")
    args = ap.parse_args()
    key, cases = machine_key(), measure()
    record = json.loads(RECORD.read_text()) if RECORD.exists() else {"machines": []}
    if args.write:
        record["machines"] = [m for m in record["machines"] if m["key"] != key]
        record["machines"].append({"key": key, "date": dt.date.today().isoformat(), "cases": cases})
        RECORD.parent.mkdir(parents=True, exist_ok=True)
        RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(cases)} cases for {key}")
        return 0
    mine = next((m for m in record["machines"] if m["key"] == key), None)
    if mine is None:
        print(f"no record for this machine {key}; run with --write to add one")
        return 1
    bad = [n for n in CASES if mine["cases"][n]["images"] != cases[n]["images"]]
    print("same bytes" if not bad else f"bytes differ: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
