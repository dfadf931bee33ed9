"""What --clip-guard costs: the embedded model's guided step with and without it, side by side.

One eager step on a batch (--batch, 10 = an IPC 10 chunk) at an index inside the default window
(t <= 300, where the guard decodes x0_hat and differentiates the decoder) and one outside it (no
guard work), the variants interleaved so both see the same load; median of --repeats. The chain
estimate weights the two by the default schedule's steps inside / outside the window.

    OMP_NUM_THREADS=1 python benchmarks/clip_guard_cost.py --out benchmarks/results/clip_guard/cost-cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from igds_fast.config import step_config
from igds_fast.imageio import write_atomic
from igds_fast.machine import library_versions, machine_facts
from igds_fast.models.embedded import resolve_models
from igds_fast.models.labels import class_labels
from igds_fast.sampling.pipeline import build_pipeline
from igds_fast.subsets import subset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clip-guard", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = {}
    for name, opts in (("default", {}), ("clip_guard", {"clip_guard": args.clip_guard})):
        cfg = step_config(args.batch, opts)
        m = resolve_models(None, None, None, cfg.guidance)
        steps[name] = build_pipeline(m.denoiser, m.vae, m.critics, cfg).step
    step = steps["default"]
    on = step.guide_on.bool()
    index = {"inside": int(torch.nonzero(on)[0]), "outside": int(torch.nonzero(~on)[0])}
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, *step.shape)
    x, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    labels = class_labels(step.denoiser, [c.wnid for c in subset("imagenette")])
    y = torch.tensor([labels[k % len(labels)] for k in range(args.batch)])

    def run(name: str, where: str) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            steps[name](x, torch.tensor([index[where]]), y, noise)
        return time.perf_counter() - t0

    keys = [(n, w) for n in steps for w in index]
    times: dict[str, list[float]] = {f"{n}/{w}": [] for n, w in keys}
    for n, w in keys:  # warm-up
        run(n, w)
    for _ in range(args.repeats):
        for n, w in keys:
            times[f"{n}/{w}"].append(run(n, w))
    median = {k: statistics.median(v) for k, v in times.items()}
    n_in, n_out = int(on.sum()), int((~on).sum())
    chain = {n: n_in * median[f"{n}/inside"] + n_out * median[f"{n}/outside"] for n in steps}
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "what": f"embedded v2, eager fp32, batch {args.batch}: one guided step, median seconds",
        "machine": machine_facts("cpu"),
        "versions": library_versions(),
        "clip_guard": args.clip_guard,
        "steps_inside_window": n_in,
        "steps_outside_window": n_out,
        "seconds": times,
        "median_s": median,
        "inside_step_ratio": median["clip_guard/inside"] / median["default/inside"],
        "chain_estimate_s": chain,
        "chain_ratio": chain["clip_guard"] / chain["default"],
    }
    write_atomic(args.out, (json.dumps(record, indent=1) + "\n").encode())
    print(json.dumps({"median_s": median, "inside": record["inside_step_ratio"], "chain": record["chain_ratio"]}))


if __name__ == "__main__":
    main()
