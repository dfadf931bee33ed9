"""What --clip-guard costs: the embedded model's guided step with and without it, side by side.

One eager step on a batch (--batch, 10 = an IPC 10 chunk) at an index inside the default window
(t <= 300) and one outside it, for the default and the default + the clip guard, and the plain step
(the denoiser alone: what the eager engine runs at ``GuidedStep.plain_steps``), interleaved so all see
the same load; median of --repeats. Chain estimates over the default schedule: "graph" = every index
runs the full step (an exported engine); "eager" = the plain step outside the window.

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
        cfg = step_config(opts)
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
        fn = step.plain if name == "plain" else steps[name]
        t0 = time.perf_counter()
        with torch.no_grad():
            fn(x, torch.tensor([index[where]]), y, noise)
        return time.perf_counter() - t0

    keys = [(n, w) for n in steps for w in index] + [("plain", "outside")]
    times: dict[str, list[float]] = {f"{n}/{w}": [] for n, w in keys}
    for n, w in keys:  # warm-up
        run(n, w)
    for _ in range(args.repeats):
        for n, w in keys:
            times[f"{n}/{w}"].append(run(n, w))
    median = {k: statistics.median(v) for k, v in times.items()}
    n_in, n_out = int(on.sum()), int((~on).sum())
    assert step.plain_steps == frozenset(int(k) for k in torch.nonzero(~on).flatten()), "index 0 is outside"
    chain = {f"{n}/graph": n_in * median[f"{n}/inside"] + n_out * median[f"{n}/outside"] for n in steps}
    chain |= {f"{n}/eager": n_in * median[f"{n}/inside"] + n_out * median["plain/outside"] for n in steps}
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
        "ratios_to_default_graph": {k: v / chain["default/graph"] for k, v in chain.items()},
    }
    write_atomic(args.out, (json.dumps(record, indent=1) + "\n").encode())
    print(json.dumps({"median_s": median, "ratios_to_default_graph": record["ratios_to_default_graph"]}))


if __name__ == "__main__":
    main()
