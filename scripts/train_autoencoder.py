#!/usr/bin/env python
"""Train the SD-layout AutoencoderKL for the embedded default model (see igds_fast/training/train_autoencoder.py).

Example (the embedded default v2's VAE; one core, ~45 min; DATA = the shared imagenette-64):
    OMP_NUM_THREADS=1 python scripts/train_autoencoder.py --data DATA/train --val DATA/val --out /work/ae_v2 \
        --bf16 --threads 1 --no-progress
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from igds_fast.errors import UserError
from igds_fast.training.train_autoencoder import TrainAutoencoderConfig, train_autoencoder


def main(argv: list[str] | None = None) -> int:
    d = TrainAutoencoderConfig(data="", out="")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="train ImageFolder (<data>/<wnid>/*.jpg)")
    p.add_argument("--out", required=True, help="output folder: train_state.pt, log.jsonl, vae/, report.json")
    p.add_argument("--val", default=None, help="held-out ImageFolder for PSNR")
    p.add_argument("--resolution", type=int, default=d.resolution)
    p.add_argument(
        "--channels", default=",".join(map(str, d.block_out_channels)), help="block_out_channels, e.g. 32,64,128"
    )
    p.add_argument("--layers-per-block", type=int, default=d.layers_per_block)
    p.add_argument("--norm-groups", type=int, default=d.norm_num_groups)
    p.add_argument("--latent-channels", type=int, default=d.latent_channels)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--kl-weight", type=float, default=d.kl_weight)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the training forward")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device)
    p.add_argument("--ckpt-minutes", type=float, default=d.ckpt_minutes)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--eval-images", type=int, default=d.eval_images)
    p.add_argument("--final-eval-images", type=int, default=None, help="default: the whole --val set")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = TrainAutoencoderConfig(
        data=a.data,
        out=a.out,
        val=a.val,
        resolution=a.resolution,
        block_out_channels=tuple(int(c) for c in a.channels.split(",")),
        layers_per_block=a.layers_per_block,
        norm_num_groups=a.norm_groups,
        latent_channels=a.latent_channels,
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        warmup=a.warmup,
        kl_weight=a.kl_weight,
        bf16=a.bf16,
        seed=a.seed,
        device=a.device,
        ckpt_minutes=a.ckpt_minutes,
        log_every=a.log_every,
        eval_images=a.eval_images,
        final_eval_images=a.final_eval_images,
    )
    try:
        folder = train_autoencoder(cfg, progress=not a.no_progress)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = json.loads((Path(a.out) / "report.json").read_text())
    print(json.dumps(report, indent=2))
    seconds = report["decode_100_seconds_1_thread"]
    print(f"wrote {folder}; decoding 100 images at {a.resolution} px takes {seconds:.2f} s on one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
