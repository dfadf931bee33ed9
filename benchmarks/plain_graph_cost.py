"""What the plain graph saves an exported engine: whole chains with and without it, side by side.

Exports ONNX Runtime engines of the embedded model (the default step with --clip-guard 0, and with
--clip-guard G, 0.5 the default)
with ``export_engine``, then runs the default 50-step chain (``run_chain``, per-sample noise as
distill draws it) on each engine twice per round: through ``sampling.engine.plain_path`` (the plain
graph at ``plain_steps``, as distill runs it) and with the full step graph at every index (what an
engine exported before the plain graph existed does). Rounds interleave the variants so all see the
same load; median seconds of --repeats rounds. Also checks that both ways give the same samples
(relative error of x0: the graphs differ only in float rounding).

    OMP_NUM_THREADS=1 python benchmarks/plain_graph_cost.py --out benchmarks/results/clip_guard/plain-graph-cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from igds_fast.backends.backend import LoadOptions
from igds_fast.backends.build import export_engine, export_spec
from igds_fast.backends.io import rel_error
from igds_fast.backends.registry import load_engine
from igds_fast.imageio import write_atomic
from igds_fast.machine import library_versions, machine_facts
from igds_fast.sampling.chain import run_chain
from igds_fast.sampling.engine import plain_path
from igds_fast.seeds import SampleNoise, sample_seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clip-guard", type=float, default=0.5)
    ap.add_argument("--engines", type=Path, default=None, help="where to build the engines [a temporary folder]")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = args.engines or Path(tempfile.mkdtemp(prefix="plain-graph-"))
    engines, export_s = {}, {}
    for name, clip in (("no_clip", 0.0), ("clip_guard", args.clip_guard)):
        flags = {"batch_size": args.batch, "memory_size": args.batch, "device": "cpu", "clip_guard": clip}
        spec = export_spec(None, flags, root / name, overwrite=True)
        t0 = time.perf_counter()
        engines[name] = load_engine(export_engine(spec), options=LoadOptions(threads=args.threads))
        export_s[name] = time.perf_counter() - t0
    some = next(iter(engines.values()))
    labels = torch.tensor([some.manifest["labels"][k % len(some.manifest["labels"])] for k in range(args.batch)])

    def chain(name: str, use_plain: bool) -> tuple[float, torch.Tensor]:
        engine = engines[name]
        plain, steps = plain_path(engine) if use_plain else (None, frozenset())
        noise = SampleNoise([sample_seed(0, int(y), k) for k, y in enumerate(labels)], engine.shape, engine.device)
        t0 = time.perf_counter()
        res = run_chain(engine.step, engine.num_steps, labels, noise, plain=plain, plain_steps=steps)
        return time.perf_counter() - t0, res.x0

    keys = [(n, p) for n in engines for p in (False, True)]
    times: dict[str, list[float]] = {f"{n}/{'plain' if p else 'full'}": [] for n, p in keys}
    x0: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for n, p in keys:
            s, x0[f"{n}/{'plain' if p else 'full'}"] = chain(n, p)
            times[f"{n}/{'plain' if p else 'full'}"].append(s)
    median = {k: statistics.median(v) for k, v in times.items()}
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "what": f"embedded v2, onnxruntime fp32 CPU, batch {args.batch}, {some.num_steps}-step chain: seconds",
        "machine": machine_facts("cpu"),
        "versions": library_versions(),
        "threads": args.threads,
        "clip_guard": args.clip_guard,
        "plain_steps": {n: len(e.plain_steps) for n, e in engines.items()},
        "export_s": export_s,
        "seconds": times,
        "median_s": median,
        "ratios_to_no_clip_full": {k: v / median["no_clip/full"] for k, v in median.items()},
        "x0_rel_error_plain_vs_full": {n: rel_error(x0[f"{n}/plain"], x0[f"{n}/full"]) for n in engines},
    }
    write_atomic(args.out, (json.dumps(record, indent=1) + "\n").encode())
    print(json.dumps({k: record[k] for k in ("median_s", "ratios_to_no_clip_full", "x0_rel_error_plain_vs_full")}))


if __name__ == "__main__":
    main()
