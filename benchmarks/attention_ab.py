"""Fused SDPA vs spelled-out attention in the DiT denoiser on this machine, paired and interleaved.

One process, one random DiT-S/2 (the bench's stand-in, 256 px: 4x32x32 latents, 256 tokens), one
CFG pass on 2B = 4 rows, the two attention forms alternating call by call (order swapped every
pair), so that machine load hits both alike. ``igds-fast bench --attention sdpa|math`` measures the
same switch over whole guided steps, in separate processes.

    python benchmarks/attention_ab.py --json benchmarks/results/attention-cpu-dit-s2/ab.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from igds_fast.bench.models import random_dit
from igds_fast.machine import library_versions, machine_facts
from igds_fast.models.dit import DiTConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="DiT-S/2")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=2, help="images; the CFG pass runs 2x this")
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = DiTConfig.from_arch(a.arch, input_size=a.resolution // 8, in_channels=4, num_classes=1000)
    dit = random_dit(cfg, 0).eval()
    b = a.batch_size
    x, t = torch.randn(2 * b, 4, cfg.input_size, cfg.input_size), torch.full((2 * b,), 500.0)
    y = torch.cat([torch.arange(b), torch.full((b,), 1000)])  # class rows, then the null class (CFG)
    ms: dict[str, list[float]] = {"sdpa": [], "math": []}
    with torch.no_grad():
        for impl in ms:  # warm-up
            dit.set_attention(impl)
            dit(x, t, y)
        for k in range(a.pairs):
            for impl in ("sdpa", "math") if k % 2 == 0 else ("math", "sdpa"):
                dit.set_attention(impl)
                t0 = time.perf_counter()
                dit(x, t, y)
                ms[impl].append(1e3 * (time.perf_counter() - t0))
        dit.set_attention("sdpa")
        fused = dit(x, t, y)
        dit.set_attention("math")
        spelled = dit(x, t, y)
    med = {k: statistics.median(v) for k, v in ms.items()}
    result = {
        "what": "DiT denoiser CFG forward, fused scaled_dot_product_attention vs spelled-out softmax(QK^T)V",
        "command": f"python benchmarks/attention_ab.py --arch {a.arch} --resolution {a.resolution} "
        f"--batch-size {b} --pairs {a.pairs} --threads {a.threads} --json {a.json}",
        "machine": machine_facts(torch.device("cpu")),
        "versions": library_versions(),
        "median_ms": med,
        "math_over_sdpa": med["math"] / med["sdpa"],
        "pairs_where_sdpa_faster": sum(s < m for s, m in zip(ms["sdpa"], ms["math"], strict=True)),
        "max_abs_diff": float((fused - spelled).abs().max()),
        "all_ms": ms,
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("median_ms", "math_over_sdpa", "pairs_where_sdpa_faster")}))


if __name__ == "__main__":
    main()
