"""Parity of every exported backend against the eager GuidedStep, as the README's parity table
quotes it: ||out - ref|| / ||ref|| per output on fresh random inputs (batch 1 and 8, guidance on
and off, 4 step indices), plus a 50-step guided trajectory. Tiny random models (timing-free).

    python benchmarks/parity.py --json benchmarks/results/parity-cpu.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from igds_fast.backends.backend import LoadOptions
from igds_fast.backends.build import ExportSpec, export_engine, verify_engine
from igds_fast.backends.io import rel_error
from igds_fast.backends.registry import BACKENDS, load_engine
from igds_fast.config import StepConfig
from igds_fast.machine import library_versions, machine_facts
from igds_fast.models.critics import CriticConfig, NoiseCritic, save_critic
from igds_fast.models.dit import DiT, DiTConfig
from igds_fast.models.loading import save_denoiser
from igds_fast.sampling.chain import run_chain
from igds_fast.sampling.pipeline import build_pipeline
from igds_fast.seeds import SampleNoise, sample_seed

CLASSES = [1, 3, 5, 7]


def tiny_models(folder: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    dit = DiT(
        DiTConfig(input_size=16, patch_size=4, in_channels=3, hidden_size=64, depth=2, num_heads=2, num_classes=10)
    )
    torch.nn.init.normal_(dit.final_layer.linear.weight, std=0.05)
    critic = NoiseCritic(
        CriticConfig(
            in_channels=3, input_size=16, patch_size=4, width=32, depth=1, heads=2, feat_dim=8, class_ids=CLASSES
        )
    )
    for blk in critic.blocks:
        torch.nn.init.normal_(blk.ada.weight, std=0.05)
    return save_denoiser(dit, folder / "dit.safetensors"), save_critic(critic, folder / "critic.safetensors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--backends", default="onnxruntime,compiled")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out: dict = {"machine": machine_facts("cpu"), "versions": library_versions(), "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        den, crit = tiny_models(Path(tmp))
        for name in args.backends.split(","):
            if BACKENDS[name].unavailable():
                out["results"][name] = {"skipped": BACKENDS[name].unavailable()}
                continue
            rows = []
            for guidance in ("igds", "off"):
                cfg = StepConfig(guidance=guidance, guidance_scale=0.5, beta=0.5)
                for batch in (1, 8):
                    spec = ExportSpec(den, "none", crit if guidance == "igds" else None, cfg, batch, 6, "fp32", name,
                                      Path(tmp) / f"{name}-{guidance}-{batch}")  # fmt: skip
                    engine = load_engine(export_engine(spec), options=LoadOptions())
                    step = build_pipeline(den, "none", spec.critics, cfg).step
                    for r in verify_engine(engine, step, steps=[49, 30, 10, 0]):
                        rows.append({"guidance": guidance, "batch": batch, **r})
            errs = [v for r in rows for k, v in r.items() if k not in ("guidance", "batch", "i")]
            # a 50-step guided trajectory from the same noise
            cfg = StepConfig(guidance_scale=0.5, beta=0.5)
            step = build_pipeline(den, "none", crit, cfg).step
            spec = ExportSpec(den, "none", crit, cfg, 4, 6, "fp32", name, Path(tmp) / f"{name}-traj")
            engine = load_engine(export_engine(spec), options=LoadOptions())
            y = torch.tensor([1, 3, 5, 7], dtype=torch.int32)
            seeds = [sample_seed(0, int(c), k) for k, c in enumerate(y)]
            ref = run_chain(step, 50, y, SampleNoise(seeds, step.shape)).x0
            got = run_chain(engine.step, 50, y, SampleNoise(seeds, step.shape)).x0
            out["results"][name] = {
                "per_step_min": min(errs),
                "per_step_max": max(errs),
                "trajectory_50_steps": rel_error(got, ref),
                "rows": rows,
            }
            print(name, {k: v for k, v in out["results"][name].items() if k != "rows"}, flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
