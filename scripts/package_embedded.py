"""Ship trained weights as the embedded default: fp16 denoiser (+ VAE for a latent model) and the
critics into igds_fast/data/, and write embedded.json and MODEL_CARD.md from the training outputs.

    python scripts/package_embedded.py --dit runs/v2/dit --critic runs/v2/critic --vae runs/ae_v2/vae \
        --evidence docs/quality/results.json --compare "latent v2=runs/sweep_v2/off/result.json" \
        --compare "pixel v1=runs/sweep/off/result.json" --note "..."
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import shutil
import tempfile
from pathlib import Path

import torch

from igds_fast.models.autoencoder_kl import load_autoencoder_kl
from igds_fast.models.critics import load_critic
from igds_fast.models.embedded import CRITIC_FILE, DENOISER_FILE, VAE_FILE
from igds_fast.models.loading import load_denoiser, save_denoiser

DATA = Path(__file__).resolve().parents[1] / "igds_fast" / "data"
JUDGE_KEYS = ("accuracy", "precision", "recall", "coverage", "saturation", "within_class_distance")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


def denoiser_parity(full: torch.nn.Module, half_path: Path) -> float:
    """Relative error of the fp16-stored weights' output vs the fp32 weights', on random inputs."""
    small = load_denoiser(half_path)
    g = torch.Generator().manual_seed(0)
    c, s = full.in_channels, full.input_size
    x = torch.randn(8, c, s, s, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g).float()
    y = torch.randint(0, full.num_classes, (8,), generator=g)
    with torch.no_grad():
        return rel_err(small(x, t, y), full(x, t, y))


def vae_parity(full: torch.nn.Module, half_path: Path) -> float:
    """Decoder output of the fp16-stored VAE vs the fp32 one, on random latents."""
    small = load_autoencoder_kl(half_path).eval()
    z = torch.randn(4, full.config.latent_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return rel_err(small.decode(z), full.decode(z))


def table(rows: list[tuple[str, dict]], keys: tuple[str, ...]) -> str:
    head = "| | " + " | ".join(k.replace("_", " ") for k in keys) + " |\n|---" * 1 + "|---" * len(keys) + "|\n"
    body = "\n".join(
        f"| {name} | " + " | ".join("-" if r.get(k) is None else f"{r[k]:.3f}" for k in keys) + " |" for name, r in rows
    )
    return head + body


def model_card(card: dict, args: argparse.Namespace) -> str:
    d, c, v = card["denoiser"], card["critic"], card.get("vae")
    cfg = d["config"]
    latent = v is not None
    space = (
        f"{cfg['in_channels']} x {cfg['input_size']} x {cfg['input_size']} latents of the autoencoder above"
        if latent
        else f"3 x {cfg['input_size']} x {cfg['input_size']} pixels in [-1, 1]"
    )
    out = [
        "# Embedded default model (igds-fast)",
        "",
        f"A small class-conditional **{'latent' if latent else 'pixel-space'} DiT**"
        + (" with its own small **autoencoder** (SD `AutoencoderKL` layout)" if latent else "")
        + " and its **noise-conditional critics**, trained on Imagenette (10 ImageNet classes) on a 2-core CPU, "
        "shipped inside the package so that `igds-fast distill` runs with no downloads. It is a demo-grade "
        "model, far from ImageNet quality; use a DiT-XL/2 checkpoint for real work. Total size of the shipped "
        f"files: {card['total_bytes'] / 2**20:.1f} MiB.",
        "",
    ]
    if latent:
        rep = v.get("report") or {}
        out += [
            f"## Autoencoder: `{v['file']}`",
            "",
            "| | |",
            "|---|---|",
            f"| sha256 | `{v['sha256']}` |",
            f"| size | {v['bytes']:,} bytes (fp16; "
            + (
                "trained weights already stored in fp16, shipped as saved) |"
                if v["fp16_decode_rel_err"] == 0
                else f"decoder output rel. error vs fp32 {v['fp16_decode_rel_err']:.1e}) |"
            ),
            f"| architecture | AutoencoderKL, widths {v['config']['block_out_channels']}, "
            f"{v['config']['layers_per_block']} layer/block, {v['config']['latent_channels']} latent channels, "
            f"downsampling {2 ** (len(v['config']['block_out_channels']) - 1)}, scaling factor "
            f"{v['config']['scaling_factor']}, {rep.get('parameters', 0):,} parameters |",
            f"| data | `imagenette-64/train` at 64 px, horizontal flips; {rep.get('steps', '?')} steps, "
            f"{rep.get('train_minutes', 0):.0f} min (`scripts/train_autoencoder.py`) |",
            f"| held-out | val PSNR {rep.get('val_psnr', float('nan')):.2f} dB on {rep.get('val_images', '?')} images |",
            "",
        ]
    out += [
        f"## Denoiser: `{d['file']}`",
        "",
        "| | |",
        "|---|---|",
        f"| sha256 | `{d['sha256']}` |",
        f"| size | {d['bytes']:,} bytes (fp16; output rel. error vs fp32 weights {d['fp16_output_rel_err']:.1e}) |",
        f"| architecture | DiT, patch {cfg['patch_size']}, hidden {cfg['hidden_size']}, depth {cfg['depth']}, "
        f"heads {cfg['num_heads']}, learned sigma, {d['params']:,} parameters |",
        f"| input | {space}; labels 0..9 = the WNIDs in the config, null class 10 |",
        f"| training | {d['train_steps']} steps of batch 64 (AdamW lr 5e-4, warm-up 500, label dropout 0.1, EMA), "
        "DiT linear schedule, eps MSE + VLB; images and their mirror images |",
        f"| how it went | {args.note or '-'} |",
        f"| final loss | {d['final_loss']:.4f} (mse {d['final_mse']:.4f}, vb {d['final_vb']:.4f}) |",
        f"| machine | {card['machine']['processor']}, 2 cores, {card['machine']['platform']} |",
        "",
    ]
    out += critic_section(c)
    if card.get("comparison"):
        out += [
            "## Design comparison (unguided samples, 10 per class, the independent judge)",
            "",
            table([(name, r) for name, r in card["comparison"].items()], JUDGE_KEYS),
            "",
        ]
        if args.compare_note:
            out += [args.compare_note, ""]
    ev = card.get("evidence")
    if ev:
        ref = ev["off"].get("reference", {})
        rows = [("guidance off", ev["off"]), ("IGDS (default)", ev["guided"])]
        rows += [(k.replace("_", " "), ref[k]) for k in ("real_val", "random_real_train") if k in ref]
        out += ["## Judge metrics (the shipped model)", "", table(rows, JUDGE_KEYS), "", "See `docs/quality.md`.", ""]
    out += [
        "## Reproduce",
        "",
        "```bash",
        args.recipe or "see scripts/train_embedded_v2.sh",
        "```",
        "",
        "Licence of the training images: ImageNet's terms (non-commercial research); Imagenette is a subset "
        "of ImageNet.",
        "",
    ]
    return "\n".join(out)


def critic_section(c: dict) -> list[str]:
    """The card's critic section (from '## Critics' up to the next section)."""
    m, train = c["metrics"], c.get("train") or {}
    tr = m["trained"]
    recipe = f"{m['steps']} steps of batch {train.get('batch_size', 64)}, mirror augmentation"
    if train.get("shift"):
        recipe += f", translation by up to {train['shift']} latent cell(s)"
    if train.get("t_power", 1.0) != 1.0:
        recipe += f", t drawn as 1000 u^{train['t_power']:g}"
    buckets = [f"| {b['t'][0]}-{b['t'][1]} | {b['acc']:.3f} | {b['ba_bound_nats']:.3f} |" for b in tr["buckets"]]
    return [
        f"## Critics: `{c['file']}`",
        "",
        "| | |",
        "|---|---|",
        f"| sha256 | `{c['sha256']}` |",
        f"| size | {c['bytes']:,} bytes, {c['params']:,} parameters, "
        f"{m['flops_per_image_forward'] / 1e6:.0f} MFLOP forward per image |",
        f"| training | {recipe}, {m['train_seconds'] / 60:.0f} min |",
        f"| held-out ({m['held_out']}) | accuracy {tr['acc']:.3f} (mean over t buckets), I(X;Y) bound "
        f"{tr['ba_bound_nats']:.3f} nats (untrained {m['untrained']['ba_bound_nats']:.3f}; ln K = {tr['ln_k']:.3f}) |",
        "",
        "| t | held-out accuracy | I(X;Y) bound (nats) |",
        "|---|---|---|",
        *buckets,
        "",
    ]


def total_bytes(card: dict) -> int:
    """The shipped files' size (a pixel model has no VAE entry)."""
    return sum(card[k]["bytes"] for k in ("denoiser", "critic", "vae") if card.get(k))


def critic_card(folder: Path) -> dict:
    """Ship train-critics' output as the embedded critic (copied as trained: re-saving reorders metadata)."""
    critic = load_critic(folder / "critic.safetensors")
    out = DATA / CRITIC_FILE
    shutil.copyfile(folder / "critic.safetensors", out)
    report = folder / "critic.json"
    return {
        "file": out.name,
        "sha256": sha256(out),
        "bytes": out.stat().st_size,
        "params": critic.metrics.get("params"),
        "metrics": critic.metrics,
        "train": json.loads(report.read_text())["train"] if report.exists() else None,
    }


def replace_critic(folder: Path) -> dict:
    """Swap only the critic: embedded.json's critic entry and MODEL_CARD.md's critic section, the rest kept."""
    card_path, md_path = DATA / "embedded.json", DATA / "MODEL_CARD.md"
    card = json.loads(card_path.read_text())
    card["critic"] = critic_card(folder)
    card["total_bytes"] = total_bytes(card)
    md = md_path.read_text()
    start = md.index("## Critics:")
    end = md.index("\n## ", start) + 1
    md = md[:start] + "\n".join(critic_section(card["critic"])) + "\n" + md[end:]
    size = f"files: {card['total_bytes'] / 2**20:.1f} MiB."
    md = re.sub(r"files: [0-9.]+ MiB\.", size, md, count=1)
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    md_path.write_text(md)
    return card


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dit", type=Path, default=None, help="train-dit output folder (or a denoiser file)")
    ap.add_argument("--critic", type=Path, required=True, help="train-critics output folder")
    ap.add_argument(
        "--critic-only", action="store_true", help="replace only the critic; keep the shipped denoiser, VAE and card"
    )
    ap.add_argument("--vae", type=Path, default=None, help="the latent model's AutoencoderKL folder")
    ap.add_argument("--vae-report", type=Path, default=None, help="train_autoencoder.py report.json")
    ap.add_argument("--log", type=Path, default=None, help="train-dit log.jsonl (default: in --dit)")
    ap.add_argument("--evidence", type=Path, default=None, help="quality_evidence.py results.json to quote")
    ap.add_argument("--compare", action="append", default=[], help="NAME=judge result.json of unguided samples")
    ap.add_argument("--compare-note", default="", help="what the comparison shows and how it was run")
    ap.add_argument("--note", default="", help="free text for the card's training row (history, wall time)")
    ap.add_argument("--recipe", default="", help="the commands that trained it, for the card")
    args = ap.parse_args()
    if args.critic_only:
        card = replace_critic(args.critic)
        print(json.dumps({"critic": {k: card["critic"][k] for k in ("sha256", "bytes")}}, indent=1))
        return
    if args.dit is None:
        ap.error("--dit is required (or --critic-only to swap only the critic)")

    dit_file = args.dit / "denoiser.safetensors" if args.dit.is_dir() else args.dit
    dit = load_denoiser(dit_file)
    dit_out = DATA / DENOISER_FILE
    save_denoiser(load_denoiser(dit_file).half(), dit_out)
    parity = denoiser_parity(dit, dit_out)
    vae_out = DATA / VAE_FILE
    vae = None
    if args.vae is not None:
        ae = load_autoencoder_kl(args.vae).eval()
        with tempfile.TemporaryDirectory() as tmp:
            shutil.move(str(ae.save_pretrained(tmp, torch.float16) / "diffusion_pytorch_model.safetensors"), vae_out)
        vae = {
            "file": vae_out.name,
            "sha256": sha256(vae_out),
            "bytes": vae_out.stat().st_size,
            "config": ae.config.to_diffusers_dict(),
            "fp16_decode_rel_err": vae_parity(ae, vae_out),
            "report": json.loads(args.vae_report.read_text()) if args.vae_report else None,
        }
    else:
        vae_out.unlink(missing_ok=True)  # a pixel model ships no VAE: the embedded rule then uses pixels

    log_path = args.log or (args.dit / "log.jsonl")
    last = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.strip()][-1]
    card = {
        "denoiser": {
            "file": dit_out.name,
            "sha256": sha256(dit_out),
            "bytes": dit_out.stat().st_size,
            "params": sum(p.numel() for p in dit.parameters() if p.requires_grad),
            "config": dit.config.to_dict(),
            "train_steps": last["step"],
            "final_loss": last["loss"],
            "final_mse": last["mse"],
            "final_vb": last["vb"],
            "fp16_output_rel_err": parity,
        },
        "critic": critic_card(args.critic),
        "vae": vae,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "comparison": {
            name: {k: json.loads(Path(path).read_text()).get(k) for k in JUDGE_KEYS}
            for name, path in (c.split("=", 1) for c in args.compare)
        },
        "evidence": json.loads(args.evidence.read_text()) if args.evidence and args.evidence.exists() else None,
    }
    card["total_bytes"] = total_bytes(card)
    (DATA / "embedded.json").write_text(json.dumps(card, indent=1) + "\n")
    (DATA / "MODEL_CARD.md").write_text(model_card(card, args))
    print(
        json.dumps(
            {
                k: {"sha256": card[k]["sha256"], "bytes": card[k]["bytes"]}
                for k in ("denoiser", "critic", "vae")
                if card[k]
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
