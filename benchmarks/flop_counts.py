"""What the default step counts on DiT-XL/2 at 256 px with the SD VAE: FLOPs and the clip guard's memory.

Counted, not timed: no GPU has run this model. The DiT forward by ``dit_forward_flops`` (the formula
`igds-fast bench` uses, checked against torch's counter in tests/test_bench.py), the decoder by
``decoder_flops`` (torch's FLOP counter on the meta device), the latent critic of `igds-fast bench
--model dit-xl2` by its ``flops_per_image``, the clip guard's per-image activation bytes by
``decoder_grad_bytes`` in fp32 and bf16. Per step, as the bench counts it: CFG denoiser pass
(2 forwards) + critic forward and input-gradient (3 forwards) + under the clip guard the decoder's
forward and input-gradient (2 decodes). The chain: --steps respaced steps, of which the guided ones are
those at t <= --window-hi; the others run the denoiser alone (defaults: the shipped step's). The default
step's chain is compared with the unguided sampler's at the same steps (CFG passes and one decode).

    python benchmarks/flop_counts.py --out benchmarks/results/flops/dit-xl2-256.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from igds_fast.bench.models import CRITIC_CLASSES, random_sd_vae
from igds_fast.config import StepConfig
from igds_fast.diffusion.schedule import respaced_timesteps
from igds_fast.machine import library_versions
from igds_fast.models.critics import CriticConfig, NoiseCritic
from igds_fast.models.dit import DiTConfig
from igds_fast.models.flops import decoder_flops, decoder_grad_bytes, dit_forward_flops
from igds_fast.models.vae import LatentVAE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    default = StepConfig()
    ap.add_argument("--steps", default=default.steps, help=f"respaced steps [{default.steps}, the default step's]")
    ap.add_argument("--window-hi", type=int, default=default.window_hi, help="guided at t <= this [the default's]")
    ap.add_argument(
        "--clip-guard", type=float, default=default.clip_guard, help="the default step's clip guard (0 = off)"
    )
    args = ap.parse_args()
    latent = 32  # 256 px / 8
    dit = dit_forward_flops(DiTConfig.from_arch("DiT-XL/2", input_size=latent, in_channels=4, num_classes=1000))
    critic = NoiseCritic(
        CriticConfig(
            in_channels=4, input_size=latent, patch_size=2, width=256, depth=4, heads=4, class_ids=CRITIC_CLASSES
        )
    ).flops_per_image()
    vae = LatentVAE(random_sd_vae(0)).eval()
    shape = (4, latent, latent)
    decode = decoder_flops(vae, shape)
    grad_fp32 = decoder_grad_bytes(vae, shape)
    grad_bf16 = decoder_grad_bytes(LatentVAE(random_sd_vae(0).to(torch.bfloat16)).eval(), shape)
    timesteps = respaced_timesteps(1000, args.steps)
    steps = len(timesteps)
    guided = sum(t <= args.window_hi for t in timesteps)
    plain = 2 * dit
    step_no_clip = 2 * dit + 3 * critic
    step_clip = step_no_clip + 2 * decode
    out = {
        "what": "FLOPs (2 per multiply-add) per image, counted; DiT-XL/2 256 px, SD VAE (sd-vae-ft-mse layout)",
        "command": shlex.join(["python", "benchmarks/flop_counts.py", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": library_versions(),
        "chain": {"steps": steps, "window": [0, args.window_hi], "guided_steps": guided},
        "dit_forward_gflops": dit / 1e9,
        "cfg_pass_gflops": 2 * dit / 1e9,
        "critic_forward_gflops": critic / 1e9,
        "decode_gflops": decode / 1e9,
        "clip_guard_decoder_gflops": 2 * decode / 1e9,
        "guided_step_over_plain_step": step_clip / plain,
        "guided_step_without_clip_guard_over_plain_step": step_no_clip / plain,
        "chain_with_clip_guard_over_chain_without": (
            (steps - guided) * plain + guided * step_clip) / ((steps - guided) * plain + guided * step_no_clip),
        "default_step": {"steps": args.steps, "window_hi": args.window_hi, "clip_guard": args.clip_guard},
        # per image: the default step's chain + one decode over the unguided sampler's at the same steps
        "default_chain_over_unguided": (
            (steps - guided) * plain + guided * (step_clip if args.clip_guard > 0 else step_no_clip) + decode
        ) / (steps * plain + decode),
        "clip_guard_activation_gib_per_image": {"fp32": grad_fp32 / 2**30, "bf16": grad_bf16 / 2**30},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
