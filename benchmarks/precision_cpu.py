"""fp32 vs bf16 autocast for one evaluation training step on this CPU, side by side in one process.

One ConvNet-3 SGD step (forward, backward, update) on a batch of 100 images at 32 px, the two
precisions interleaved so that both see the same load; median of --repeats. Behind the warning the
CLI prints for bf16 on a CPU without bf16 units (``machine.slow_bf16_warning``).

    OMP_NUM_THREADS=1 python benchmarks/precision_cpu.py --out benchmarks/results/precision-cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from igds_fast.evaluation.networks import build_net
from igds_fast.evaluation.train import autocast
from igds_fast.imageio import write_atomic
from igds_fast.machine import bf16_units, library_versions, machine_facts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build_net("convnet3", 10, 32)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(100, 3, 32, 32), torch.randint(0, 10, (100,))

    def step(precision: str) -> float:
        t0 = time.perf_counter()
        with autocast(precision, "cpu"):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for p in times:  # warm-up
        step(p)
    for _ in range(args.repeats):
        for p in times:
            times[p].append(step(p))
    median = {p: statistics.median(v) for p, v in times.items()}
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "what": "ConvNet-3 at 32 px, one SGD step on 100 images, median seconds",
        "machine": machine_facts("cpu") | {"bf16_units": bf16_units()},
        "versions": library_versions(),
        "seconds": times,
        "median_s": median,
        "bf16_over_fp32": median["bf16"] / median["fp32"],
    }
    write_atomic(args.out, (json.dumps(record, indent=1) + "\n").encode())
    print(json.dumps({"median_s": median, "bf16_over_fp32": record["bf16_over_fp32"]}))


if __name__ == "__main__":
    main()
