"""Parity of every exported backend against the eager GuidedStep, as the README's parity table
quotes it: ||out - ref|| / ||ref|| per output on fresh random inputs (batch 1 and 8, guidance on
and off, 4 step indices), plus a 50-step guided trajectory. Tiny random models (timing-free).

Also (`--diffusers-stacks N`, default 3; 0 skips it): our DiT loader + DDIM sampler + VAE wrapper
against diffusers' `DiTPipeline`, 50 steps, on N fresh random tiny DiT + VAE stacks, with the
helpers of `tests/test_diffusers_parity.py` (the test asserts < 1e-4; this records the errors).

The JSON records the command, the UTC date, the machine (CPU model name, its bf16/AMX flags,
cores, threads) and the library versions next to the errors.

    python benchmarks/parity.py --json benchmarks/results/parity-cpu.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from igds_fast.backends.backend import LoadOptions
from igds_fast.backends.build import ExportSpec, export_engine, verify_engine
from igds_fast.backends.io import rel_error
from igds_fast.backends.registry import BACKENDS, load_engine
from igds_fast.config import StepConfig
from igds_fast.machine import BF16_FLAGS, cpu_flags, library_versions, machine_facts
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


def diffusers_parity(stacks: int, steps: int = 50) -> dict:
    """Our DDIM chain vs DiTPipeline on fresh random stacks, as tests/test_diffusers_parity.py builds them."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/ is a package
    from diffusers import DiTPipeline

    from tests.conftest import rel_err
    from tests.test_diffusers_parity import dit_scheduler, make_transformer, make_vae, run_ours, run_reference

    rows = []
    for k in range(stacks):
        seed = 1000 + 2 * k
        tr, vae = make_transformer(seed), make_vae(seed + 1)
        with tempfile.TemporaryDirectory() as tmp:
            tr.save_pretrained(tmp)
            pipe = DiTPipeline(transformer=tr, vae=vae, scheduler=dit_scheduler())
            pipe.set_progress_bar_config(disable=True)
            labels = [int(v) for v in torch.randint(0, 1000, (3,), generator=torch.Generator().manual_seed(seed))]
            labels.append(999)
            ref_latents, ref_images = run_reference(pipe, labels, seed, steps)
            latents, images = run_ours(tmp, vae, labels, seed, steps)
        rows.append({"stack_seed": seed, "labels": labels, "latents": rel_err(latents, ref_latents),
                     "images": rel_err(images, ref_images)})  # fmt: skip
        print("diffusers DiTPipeline", rows[-1], flush=True)
    return {
        "steps": steps,
        "sampler": "ddim, eta 0, CFG 4 on all channels (DiTPipeline's)",
        "latents_min": min(r["latents"] for r in rows),
        "latents_max": max(r["latents"] for r in rows),
        "images_min": min(r["images"] for r in rows),
        "images_max": max(r["images"] for r in rows),
        "rows": rows,
    }


def git_commit() -> str | None:
    """The commit of the tree whose igds_fast ran (None outside a git checkout)."""
    import igds_fast

    root = Path(igds_fast.__file__).resolve().parents[1]
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return done.stdout.strip() or None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--backends", default="onnxruntime,compiled")
    ap.add_argument("--diffusers-stacks", type=int, default=3, help="random DiT + VAE stacks vs DiTPipeline [3]")
    args = ap.parse_args()
    torch.set_num_threads(1)
    flags = cpu_flags()
    machine = machine_facts("cpu") | {
        "bf16_flags": [f for f in BF16_FLAGS if f in flags],
        "amx_flags": sorted(f for f in flags if f.startswith("amx")),
    }
    out: dict = {
        "command": shlex.join(["python", "benchmarks/parity.py", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine,
        "versions": library_versions(),
        "git_commit": git_commit(),
        "results": {},
    }
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
    if args.diffusers_stacks > 0:
        out["results"]["diffusers_dit_pipeline"] = diffusers_parity(args.diffusers_stacks)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
