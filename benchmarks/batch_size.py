"""Time per image of the embedded default's step at several batch sizes: what --batch-size defaults to.

For each batch size B, the eager step (the automatic backend's precision on this CPU unless --dtype)
is timed on a batch of B rows: the plain step (the denoiser alone, where guidance adds nothing) and
the guided step (inside the guidance window), then the decoder. Rounds interleave the batch sizes
so all see the same load; the median per image is reported, and each B's time relative to the
fastest. One class's IPC 10 chunk ran at batch 10 before batches spanned classes.

    python benchmarks/batch_size.py --sizes 10,25,50,100 --out benchmarks/results/batch_size/cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from igds_fast.backends.eager import EagerEngine
from igds_fast.config import StepConfig
from igds_fast.machine import bf16_units, cpu_flags, cpu_model, library_versions
from igds_fast.models.embedded import resolve_models
from igds_fast.sampling.pipeline import build_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,25,50,100")
    ap.add_argument("--dtype", default=None, help="fp32 or bf16 (default: bf16 where the CPU has bf16 units)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype or ("bf16" if bf16_units() else "fp32")
    cfg = StepConfig()
    models = resolve_models(None, None, None, cfg.guidance)
    pipe = build_pipeline(models.denoiser, models.vae, models.critics, cfg, dtype=dtype)
    engine = EagerEngine(pipe.step, pipe.vae)
    plain_i = max(engine.plain_steps)  # the first step: outside the window
    guided_i = 1  # inside the window (t <= window_hi)
    sizes = [int(s) for s in args.sizes.split(",")]
    times: dict[str, dict[int, list[float]]] = {k: {b: [] for b in sizes} for k in ("plain", "guided", "decode")}

    def timed(fn) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()
        return time.perf_counter() - t0

    for r in range(args.rounds + 1):  # round 0 warms up
        for b in sizes:
            g = torch.Generator().manual_seed(r * 1000 + b)
            x = torch.randn(b, *engine.shape, generator=g)
            y = torch.randint(0, 10, (b,), generator=g, dtype=torch.int32)
            noise = torch.randn(b, *engine.shape, generator=g)
            got = {
                "plain": timed(lambda x=x, y=y, n=noise: engine.plain(x, torch.tensor([plain_i]), y, n)),
                "guided": timed(lambda x=x, y=y, n=noise: engine.step(x, torch.tensor([guided_i]), y, n)),
                "decode": timed(lambda x=x: engine.decode(x)),
            }
            if r > 0:
                for k, v in got.items():
                    times[k][b].append(v / b)
    per_image = {k: {b: statistics.median(v) for b, v in d.items()} for k, d in times.items()}
    # a default chain's cost per image: its plain and guided steps, and one decode
    steps = engine.num_steps
    guided_steps = steps - len(engine.plain_steps)
    chain = {
        b: (steps - guided_steps) * per_image["plain"][b]
        + guided_steps * per_image["guided"][b]
        + per_image["decode"][b]
        for b in sizes
    }
    best = min(chain, key=chain.get)
    result = {
        "command": "python benchmarks/batch_size.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu_model": cpu_model(),
            "bf16_flags": sorted(f for f in cpu_flags() if "bf16" in f or "amx" in f),
            "cores": __import__("os").cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
        "versions": library_versions(),
        "dtype": dtype,
        "step": cfg.to_dict(),
        "rounds": args.rounds,
        "steps": steps,
        "guided_steps": guided_steps,
        "seconds_per_image": {k: {str(b): v for b, v in d.items()} for k, d in per_image.items()},
        "chain_seconds_per_image": {str(b): v for b, v in chain.items()},
        "relative_to_fastest": {str(b): v / chain[best] for b, v in chain.items()},
        "fastest_batch": best,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"chain_seconds_per_image": result["chain_seconds_per_image"], "fastest": best}))


if __name__ == "__main__":
    main()
