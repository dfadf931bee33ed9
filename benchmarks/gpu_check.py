"""One stage of benchmarks/gpu_check.sh: ``igds_fast.bench`` called directly, without the CLI.

The GPU machines have torch but maybe not typer, safetensors, tqdm, pyarrow, Pillow or diffusers
(nothing is installed there). This runner needs only torch and numpy: a missing safetensors is
replaced by a stub (the bench uses random weights, nothing is loaded from files), a missing
Pillow skips PNG encoding, a missing diffusers simulates the decode; each is said in the JSON.

    python benchmarks/gpu_check.py --model dit-xl2 --batch-size 64 --dtype bf16 --device cuda \\
        --backends eager-ref,eager,compiled,compiled-cg --json $OUT/main.json

IGDS_GPU_CHECK_DRY=1 shrinks everything (tiny model, CPU, fp32, 2 steps) to prove the path runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
import types
from pathlib import Path

DRY = os.environ.get("IGDS_GPU_CHECK_DRY", "0") not in ("", "0")


def stub_safetensors() -> str | None:
    """Let igds_fast import without safetensors (its loaders are never called here)."""
    if importlib.util.find_spec("safetensors") is not None:
        return None

    def missing(*_a: object, **_k: object) -> None:
        raise ImportError("safetensors is not installed on this machine")

    top = types.ModuleType("safetensors")
    top.SafetensorError = type("SafetensorError", (Exception,), {})
    top.safe_open = missing
    sub = types.ModuleType("safetensors.torch")
    sub.load_file = sub.save_file = missing
    top.torch = sub
    sys.modules.update({"safetensors": top, "safetensors.torch": sub})
    return "safetensors missing: stubbed (random weights only)"


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dit-xl2")
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--backends", default="eager-ref,eager,compiled,compiled-cg")
    ap.add_argument("--e2e-backends", default=None, help="comma list, 'none', default all")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--parity-inputs", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--json", type=Path, required=True)
    a = ap.parse_args(argv)
    if DRY:  # tiny and on the CPU: proves the stage runs, measures nothing
        a.model, a.resolution, a.device, a.dtype = "tiny", None, "cpu", "fp32"
        a.batch_size, a.steps, a.warmup, a.repeats, a.parity_inputs = 2, 2, 0, 1, 1
    return a


def main(argv: list[str]) -> int:
    note = stub_safetensors()
    from igds_fast.bench import BenchConfig, run_bench
    from igds_fast.errors import UserError

    a = parse(argv)
    e2e = None if a.e2e_backends is None else [b for b in a.e2e_backends.split(",") if b and b != "none"]
    cfg = BenchConfig(
        model=a.model,
        random_weights=True,
        resolution=a.resolution,
        batch_size=a.batch_size,
        steps=a.steps,
        backends=[b for b in a.backends.split(",") if b],
        e2e_backends=e2e,
        warmup=a.warmup,
        repeats=a.repeats,
        device=a.device,
        dtype=a.dtype,
        parity_inputs=a.parity_inputs,
        peak_tflops=a.peak_tflops,
    )
    command = "python benchmarks/gpu_check.py " + shlex.join(argv) + (" (IGDS_GPU_CHECK_DRY=1)" if DRY else "")
    try:
        result = run_bench(cfg, command=command, json_path=a.json, log=lambda m: print(m, flush=True))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if note:
        result["notes"] = [note]
        from igds_fast.bench import write_json

        write_json(result, a.json)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
