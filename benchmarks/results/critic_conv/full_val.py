"""Held-out accuracy at t < 300 of critics on the whole val split (3,925 images), two noise draws each.

    python benchmarks/results/critic_conv/full_val.py shipped=igds_fast/data/embedded_critic.safetensors \
        conv-w64d1=runs/critic_conv_a/critic.safetensors > benchmarks/results/critic_conv/full_val.json

The stored held-out metrics of a critic file use 1,000 class-balanced val images and one noise draw; this
scores every val image at two draws (noise seeds 1 and 2) with the trainer's own ``evaluate_critic``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from igds_fast.diffusion.schedule import Schedule
from igds_fast.models.critics import load_critic
from igds_fast.models.embedded import resolve_models
from igds_fast.models.vae import load_vae
from igds_fast.subsets import resolve_classes
from igds_fast.training.train_critic import evaluate_critic, load_encoded


def main(specs: list[str], val: str = "../shared/data/imagenette-64/val", cache: str = "runs/full_val_cache") -> None:
    torch.set_num_threads(1)
    wnids = [c.wnid for c in resolve_classes("imagenette", None)]
    vae = load_vae(resolve_models(None, None, None, "off").vae)
    xv, yv = load_encoded(val, wnids, 64, vae, Path(cache))
    tab = Schedule.create(1000).tables()
    res = {}
    for name, path in (s.split("=", 1) for s in specs):
        critic = load_critic(path)
        for seed in (1, 2):
            acc = [b["acc"] for b in evaluate_critic(critic, xv, yv, tab, seed=seed)["buckets"][:3]]
            res[f"{name} seed{seed}"] = {"t<300": sum(acc) / 3, "buckets": acc}
            print(name, seed, round(sum(acc) / 3, 4), [round(a, 3) for a in acc], file=sys.stderr, flush=True)
    print(json.dumps({"val_images": len(xv), "results": res}))


if __name__ == "__main__":
    main(sys.argv[1:])
