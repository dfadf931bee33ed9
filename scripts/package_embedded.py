"""Ship trained weights as the embedded default: fp16 denoiser + critic into igds_fast/data/,
and write the model card with their hashes, training facts and metrics.

    python scripts/package_embedded.py --dit runs/embedded_dit --critic runs/embedded_critic \
        --evidence docs/quality.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
from pathlib import Path

import torch

from igds_fast.models.critics import load_critic
from igds_fast.models.loading import load_denoiser, save_denoiser

DATA = Path(__file__).resolve().parents[1] / "igds_fast" / "data"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fp16_parity(full: torch.nn.Module, half_path: Path) -> float:
    """Relative error of the fp16-stored weights' output vs the fp32 weights', on random inputs."""
    small = load_denoiser(half_path)
    g = torch.Generator().manual_seed(0)
    c, s = full.in_channels, full.input_size
    x = torch.randn(8, c, s, s, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g).float()
    y = torch.randint(0, full.num_classes, (8,), generator=g)
    with torch.no_grad():
        ref, out = full(x, t, y), small(x, t, y)
    return float((out - ref).norm() / ref.norm())


def model_card(card: dict, args: argparse.Namespace) -> str:
    d, c = card["denoiser"], card["critic"]
    cfg, m = d["config"], c["metrics"]
    tr = m["trained"]
    buckets = "\n".join(
        f"| {b['t'][0]}-{b['t'][1]} | {b['acc']:.3f} | {b['ba_bound_nats']:.3f} |" for b in tr["buckets"]
    )
    return f"""# Embedded default model (igds-fast)

A small class-conditional **pixel-space DiT** and its **noise-conditional critics**, trained on
Imagenette (10 ImageNet classes) at 32x32 px on a 2-core CPU, shipped inside the package so that
`igds-fast distill` runs with no downloads. It is a demo-grade model: samples are blurry and far
from ImageNet quality; use a DiT-XL/2 checkpoint for real work.

## Denoiser: `{d["file"]}`

| | |
|---|---|
| sha256 | `{d["sha256"]}` |
| size | {d["bytes"]:,} bytes (weights stored in fp16; output rel. error vs fp32 weights {d["fp16_output_rel_err"]:.1e}) |
| architecture | DiT, patch {cfg["patch_size"]}, hidden {cfg["hidden_size"]}, depth {cfg["depth"]}, heads {cfg["num_heads"]}, learned sigma, {d["params"]:,} parameters |
| input | 3 x {cfg["input_size"]} x {cfg["input_size"]} pixels in [-1, 1]; labels 0..9 = the WNIDs in the config, null class 10 |
| data | `imagenette-64/train` (9,469 images, center-cropped, resized to 32 px bicubic), horizontal flips |
| training | `igds-fast train-dit --config small --resolution 32 --batch-size 64 --lr 5e-4` for {d["train_steps"]} steps (AdamW, warm-up 500, label dropout 0.1, EMA with warm-up, max decay 0.999), DiT linear schedule, eps MSE + VLB (learned range) |
| how it went | {args.note or "-"} |
| final loss | {d["final_loss"]:.4f} (mse {d["final_mse"]:.4f}, vb {d["final_vb"]:.4f}) |
| machine | {card["machine"]["processor"]}, 2 cores, {card["machine"]["platform"]} |

## Critics: `{c["file"]}`

| | |
|---|---|
| sha256 | `{c["sha256"]}` |
| size | {c["bytes"]:,} bytes, {c["params"]:,} parameters, {m["flops_per_image_forward"] / 1e6:.0f} MFLOP forward per image |
| training | `igds-fast train-critics --steps {m["steps"]} --batch-size 64 --lr 2e-3 --width 128 --depth 3 --heads 4`, {m["train_seconds"] / 60:.0f} min |
| held-out ({m["held_out"]}, 50 images per class) | accuracy {tr["acc"]:.3f} (mean over t buckets), I(X;Y) bound {tr["ba_bound_nats"]:.3f} nats (untrained {m["untrained"]["ba_bound_nats"]:.3f}; ln K = {tr["ln_k"]:.3f}) |

| t | held-out accuracy | I(X;Y) bound (nats) |
|---|---|---|
{buckets}

## Reproduce

```bash
igds-fast train-dit --data imagenette-64/train --subset imagenette --out runs/embedded_dit --resolution 32 \\
    --config small --steps {d["train_steps"]} --batch-size 64 --lr 5e-4
igds-fast train-critics --data imagenette-64/train --val imagenette-64/val --subset imagenette \\
    --denoiser runs/embedded_dit/denoiser.safetensors --out runs/embedded_critic --steps {m["steps"]} \\
    --batch-size 64 --lr 2e-3 --width 128 --depth 3 --heads 4 --eval-images 500
python scripts/package_embedded.py --dit runs/embedded_dit --critic runs/embedded_critic
```

Quality evidence (contact sheets, a real-data classifier's accuracy on samples with and without
IGDS): `docs/quality.md`. Licence of the training images: ImageNet's non-commercial research terms.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dit", type=Path, required=True, help="train-dit output folder")
    ap.add_argument("--critic", type=Path, required=True, help="train-critics output folder")
    ap.add_argument("--evidence", type=Path, default=None, help="quality_evidence.py JSON to quote")
    ap.add_argument("--note", default="", help="free text for the card's training row (history, wall time)")
    args = ap.parse_args()

    dit = load_denoiser(args.dit / "denoiser.safetensors")
    dit_out = DATA / "embedded_dit.safetensors"
    save_denoiser(dit.half(), dit_out)
    dit = load_denoiser(args.dit / "denoiser.safetensors")
    parity = fp16_parity(dit, dit_out)
    critic = load_critic(args.critic / "critic.safetensors")
    crit_out = DATA / "embedded_critic.safetensors"
    shutil.copyfile(args.critic / "critic.safetensors", crit_out)  # as trained: re-saving reorders metadata

    log = [json.loads(ln) for ln in (args.dit / "log.jsonl").read_text().splitlines() if ln.strip()]
    last = log[-1]
    cfg = dit.config
    card = {
        "denoiser": {
            "file": dit_out.name,
            "sha256": sha256(dit_out),
            "bytes": dit_out.stat().st_size,
            "params": sum(p.numel() for p in dit.parameters() if p.requires_grad),
            "config": cfg.to_dict(),
            "train_steps": last["step"],
            "final_loss": last["loss"],
            "final_mse": last["mse"],
            "final_vb": last["vb"],
            "fp16_output_rel_err": parity,
        },
        "critic": {
            "file": crit_out.name,
            "sha256": sha256(crit_out),
            "bytes": crit_out.stat().st_size,
            "params": critic.metrics.get("params"),
            "metrics": critic.metrics,
        },
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "evidence": json.loads(args.evidence.read_text()) if args.evidence and args.evidence.exists() else None,
    }
    (DATA / "embedded.json").write_text(json.dumps(card, indent=1) + "\n")
    (DATA / "MODEL_CARD.md").write_text(model_card(card, args))
    print(
        json.dumps(
            {
                k: {"sha256": v["sha256"], "bytes": v["bytes"]}
                for k, v in card.items()
                if isinstance(v, dict) and "sha256" in v
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
