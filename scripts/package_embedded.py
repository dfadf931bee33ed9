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
from pathlib import Path

import torch

from igds_fast.models.critics import load_critic, save_critic
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dit", type=Path, required=True, help="train-dit output folder")
    ap.add_argument("--critic", type=Path, required=True, help="train-critics output folder")
    ap.add_argument("--evidence", type=Path, default=None, help="quality_evidence.py JSON to quote")
    args = ap.parse_args()

    dit = load_denoiser(args.dit / "denoiser.safetensors")
    dit_out = DATA / "embedded_dit.safetensors"
    save_denoiser(dit.half(), dit_out)
    dit = load_denoiser(args.dit / "denoiser.safetensors")
    parity = fp16_parity(dit, dit_out)
    critic = load_critic(args.critic / "critic.safetensors")
    crit_out = DATA / "embedded_critic.safetensors"
    save_critic(critic, crit_out, critic.metrics)

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
