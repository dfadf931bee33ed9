"""Guided-step time: eager vs compiled (torch.compile) vs ONNX Runtime CPU, same run, same inputs.

    python benchmarks/bench_step.py [--repeats 10] [--skip-compiled] [--configs pixel32,dit-s2-256]

Models are random (timing does not depend on weights): the embedded-size pixel DiT (32 px) and a
DiT-S/2 on 256 px latents (4x32x32), each with a critic and IGDS guidance on. Writes JSON with the
machine description to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from igds_fast.backends.build import step_shapes
from igds_fast.backends.doctor import facts
from igds_fast.backends.io import random_inputs, rel_error
from igds_fast.guidance.step import GuidedStep, StepConfig
from igds_fast.models.critics import CriticConfig, NoiseCritic
from igds_fast.models.dit import DiT, DiTConfig

CONFIGS = {
    # name: (DiT config, critic config, batch)
    "pixel32": (
        DiTConfig(input_size=32, patch_size=4, in_channels=3, hidden_size=384, depth=6, num_heads=6, num_classes=10),
        CriticConfig(in_channels=3, input_size=32, class_ids=list(range(10))),
        8,
    ),
    "dit-s2-256": (
        DiTConfig.from_arch("DiT-S/2", input_size=32, in_channels=4, num_classes=1000),
        CriticConfig(in_channels=4, input_size=32, class_ids=list(range(10))),
        4,
    ),
}


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def build_step(name: str) -> tuple[GuidedStep, int]:
    dit_cfg, critic_cfg, batch = CONFIGS[name]
    torch.manual_seed(0)
    dit = DiT(dit_cfg).initialize(0)
    torch.nn.init.normal_(dit.final_layer.linear.weight, std=0.02)
    step = GuidedStep(dit.eval().requires_grad_(False), StepConfig(beta=0.5), NoiseCritic(critic_cfg).eval())
    step.critic.requires_grad_(False)
    return step, batch


def bench(name: str, repeats: int, compiled: bool, memory: int = 32) -> dict:
    from igds_fast.backends import onnx_export as ox
    from igds_fast.backends.onnxruntime import open_session

    step, batch = build_step(name)
    shapes = step_shapes(step, batch, memory)
    args = random_inputs(shapes, len(step.schedule), step.critic.config.class_ids, seed=0, i=25)
    with torch.no_grad():
        ref = step(*args)
    row: dict = {
        "config": name,
        "batch": batch,
        "memory": memory,
        "denoiser_params": sum(p.numel() for p in step.denoiser.parameters()),
        "critic_params": sum(p.numel() for p in step.critic.parameters()),
    }
    with torch.no_grad():
        row["eager_s"] = median_time(lambda: step(*args), repeats)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "step.onnx"
        t = time.perf_counter()
        ox.export_step(step, args, path)
        row["onnx_export_s"] = time.perf_counter() - t
        feed_names = ("x", "i", "y", "noise", "memory", "memory_mask")
        for threads in (0, 1):  # 0: ORT's default pool (all cores)
            sess = open_session(path, ["CPUExecutionProvider"], threads=threads)
            feed = {
                k: a.numpy() for k, a in zip(feed_names, args, strict=True) if k in {i.name for i in sess.get_inputs()}
            }
            out = [torch.from_numpy(o) for o in sess.run(None, feed)]
            row[f"ort_threads{threads}_err"] = max(rel_error(o, r) for o, r in zip(out, ref, strict=True))
            row[f"ort_threads{threads}_s"] = median_time(lambda s=sess, f=feed: s.run(None, f), repeats)
    if compiled:
        from igds_fast.backends.compiled import jit_step

        fn = jit_step(step, args)
        t = time.perf_counter()
        out = fn(*args)
        row["compile_s"] = time.perf_counter() - t
        row["compiled_err"] = max(rel_error(o, r) for o, r in zip(out, ref, strict=True))
        with torch.no_grad():
            row["compiled_s"] = median_time(lambda: fn(*args), repeats)
    ort_best = min(row[k] for k in row if k.startswith("ort_") and k.endswith("_s"))
    row["speedup_ort"] = row["eager_s"] / ort_best
    if compiled:
        row["speedup_compiled"] = row["eager_s"] / row["compiled_s"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="pixel32,dit-s2-256")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--skip-compiled", action="store_true", help="torch.compile takes minutes on a small CPU")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    a = ap.parse_args()
    rows = []
    for name in a.configs.split(","):
        row = bench(name, a.repeats, not a.skip_compiled)
        print(json.dumps(row), flush=True)
        rows.append(row)
    a.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = {
        "machine": facts(),
        "torch_threads": torch.get_num_threads(),
        "repeats": a.repeats,
        "results": rows,
    }
    path = a.out / f"bench_step-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
