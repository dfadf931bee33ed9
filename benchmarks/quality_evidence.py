"""Quality evidence for a denoiser + critics: contact sheets, class consistency, critic numbers.

    python benchmarks/quality_evidence.py --denoiser runs/embedded_dit/denoiser.safetensors \
        --critics runs/embedded_critic/critic.safetensors --n-per-class 20 --steps 50 \
        --out docs/quality --json docs/quality/results.json --md docs/quality.md

1. One contact sheet per class (``<out>/contact_<wnid>.png``): real val images, samples with
   guidance off, IGDS samples; the two generated rows share their seeds (same initial and step noise).
2. Class consistency: ConvNet-3 trained on the REAL train split (cached under ``--classifier-cache``),
   its top-1 on real val and on the generated sets (fraction classified as the intended class).
3. The critic: held-out I(X;Y) bound and accuracy from the critic file, and per set the mean
   log q(y|x) and H2 bound of the final samples at t = 0 (the same estimator for every set);
   for IGDS also what the guided step itself reported at its last step.
4. ``--json`` results and a markdown snippet ``--md`` with the tables and the exact command.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file
from torch import nn

from igds_fast.config import StepConfig, resolve_beta
from igds_fast.errors import UserError
from igds_fast.evaluation.networks import build_net
from igds_fast.evaluation.train import top1_accuracy, train_net
from igds_fast.guidance.step import GuidedStep
from igds_fast.imagefolder import load_split, scan_image_folder, to_model_range
from igds_fast.imageio import grid, save_picture, to_uint8
from igds_fast.jobs.sample import sample_classes
from igds_fast.machine import library_versions as versions
from igds_fast.models.critics import load_critic
from igds_fast.models.embedded import resolve_models
from igds_fast.models.labels import class_labels
from igds_fast.sampling.pipeline import Pipeline, build_pipeline
from igds_fast.subsets import class_info, subset

CLASSIFIER_NET = "convnet3"
CLASSIFIER_SEED = 0
SETS = ("real", "off", "igds")  # the rows of a contact sheet; the last two are generated
ROW_TITLES = {"real": "real (val)", "off": "guidance off", "igds": "IGDS"}


@dataclass
class SampleSet:
    """One row type of the evidence: images in [-1, 1] and the same images in the denoiser's space."""

    images: torch.Tensor  # (N, 3, R, R), class-major, n per class
    space: torch.Tensor  # (N, C, H, W) in the denoiser's input space
    chain_log_q: torch.Tensor | None = None  # the guided step's outputs at its last step (IGDS only)
    chain_h2: torch.Tensor | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--denoiser", type=Path, default=None, help="denoiser file (default: the embedded model)")
    p.add_argument("--critics", type=Path, default=None, help="critics file (default: the embedded critics)")
    data = Path(os.environ.get("IGDS_DATA", "../shared/data")) / "imagenette-64"
    p.add_argument("--data-train", type=Path, default=data / "train")
    p.add_argument("--data-val", type=Path, default=data / "val")
    p.add_argument("--subset", default="imagenette", help="classes when the denoiser does not name its own")
    p.add_argument("--n-per-class", type=int, default=20)
    p.add_argument("--steps", default="50", help="respaced sampling steps")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="IGDS gradient scale s")
    p.add_argument("--beta", type=float, default=None, help="H2 weight (default: beta(IPC = --n-per-class))")
    p.add_argument("--cfg-scale", type=float, default=4.0, help="classifier-free guidance scale (both sets)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (the same for guidance off and IGDS)")
    p.add_argument("--out", type=Path, default=Path("docs/quality"), help="folder for the contact sheets")
    p.add_argument("--json", type=Path, default=None, help="results file (default: <out>/results.json)")
    p.add_argument("--md", type=Path, default=Path("docs/quality.md"), help="markdown snippet")
    p.add_argument("--classifier-epochs", type=int, default=15, help="ConvNet-3 epochs on real train")
    p.add_argument("--classifier-cache", type=Path, default=Path("runs/quality_classifier"))
    p.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="classifier-test batch; sampling rounds it to whole classes",
    )
    p.add_argument("--sheet-scale", type=int, default=2, help="pixel upscaling of the contact sheets")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


# ---------------------------------------------------------------- classes and data


def model_classes(pipe: Pipeline, subset_name: str) -> tuple[list[str], list[int]]:
    """(WNIDs, denoiser labels): the classes the checkpoint names, else the critic's, else the subset's."""
    denoiser, critic = pipe.step.denoiser, pipe.step.critic
    wnids = list(getattr(getattr(denoiser, "config", None), "wnids", None) or [])
    wnids = wnids or list(critic.config.wnids if critic is not None else [])
    wnids = wnids or [c.wnid for c in subset(subset_name)]
    return wnids, class_labels(denoiser, wnids)


def load_real(root: Path, classes: list[str], resolution: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, R, R) and labels = positions in ``classes`` (other class folders are ignored)."""
    files = scan_image_folder(root, what)
    missing = [w for w in classes if w not in files]
    if missing:
        raise UserError(f"{what} folder '{root}' lacks the model's class {missing[0]}")
    return load_split(files, classes, resolution)


def first_per_class(images: torch.Tensor, labels: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    """The first n images of each class, class-major (deterministic, like the generated sets)."""
    keep = [torch.nonzero(labels == c).flatten()[:n] for c in range(num_classes)]
    short = [c for c, k in enumerate(keep) if len(k) < n]
    if short:
        raise UserError(f"val class {short[0]} has fewer than --n-per-class {n} images")
    return images[torch.cat(keep)]


def to_images_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] NCHW -> uint8 NCHW, rounded as the saved PNGs are."""
    return to_uint8(images).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------- sampling and critic scores


def step_config(args: argparse.Namespace, guidance: str) -> StepConfig:
    return StepConfig(
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        guidance=guidance,
        guidance_scale=args.guidance_scale,
        beta=resolve_beta(args.beta, guidance),
    )


def generate(pipe: Pipeline, labels: list[int], args: argparse.Namespace) -> SampleSet:
    """Per-class chunks with the entropy memory, as a distill run with this batch size does."""
    space, images, log_q, h2 = sample_classes(pipe, labels, args.n_per_class, args.seed, args.batch_size)
    if pipe.step.critic is None:
        return SampleSet(images, space)
    return SampleSet(images, space, log_q, h2)


@torch.no_grad()
def critic_scores(step: GuidedStep, x: torch.Tensor, labels: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample log q(y|x) and its class's H2 bound at t = 0, one class (all n samples) per call."""
    dev = step.tab_timestep.device
    log_q, h2 = [], []
    for start in range(0, len(x), n):
        xb, yb = x[start : start + n].to(dev), labels[start : start + n].to(dev)
        t = torch.zeros(len(xb), device=dev)
        memory = torch.zeros(1, step.feat_dim, device=dev)
        mask = torch.zeros(len(xb), 1, device=dev)
        _, (_, lq, h) = step.objective(xb, t, yb, memory, mask)
        log_q.append(lq.cpu())
        h2.append(h.cpu())
    return torch.cat(log_q), torch.cat(h2)


# ---------------------------------------------------------------- classifier trained on real data


def classifier_path(args: argparse.Namespace, classes: list[str], resolution: int) -> Path:
    key = json.dumps(
        [
            str(args.data_train.resolve()),
            classes,
            resolution,
            args.classifier_epochs,
            CLASSIFIER_NET,
            CLASSIFIER_SEED,
        ]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return args.classifier_cache / f"{CLASSIFIER_NET}_{resolution}px_{args.classifier_epochs}ep_{digest}.safetensors"


def real_classifier(args: argparse.Namespace, classes: list[str], resolution: int) -> tuple[nn.Module, dict[str, Any]]:
    """ConvNet-3 trained on the real train split (MinimaxDiffusion's recipe), cached by its inputs."""
    path = classifier_path(args, classes, resolution)
    net = build_net(CLASSIFIER_NET, len(classes), resolution)
    info = {
        "net": CLASSIFIER_NET,
        "epochs": args.classifier_epochs,
        "seed": CLASSIFIER_SEED,
        "train": str(args.data_train),
        "weights": str(path),
        "cached": path.exists(),
    }
    if path.exists():
        net.load_state_dict(load_file(str(path)))
        return net.to(args.device), info
    t0 = time.perf_counter()
    images, labels = load_real(args.data_train, classes, resolution, "train")
    net = train_net(CLASSIFIER_NET, images, labels, len(classes), args.classifier_epochs, CLASSIFIER_SEED, args.device)
    info["train_seconds"] = round(time.perf_counter() - t0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(path))
    return net, info


def per_class_top1(net: nn.Module, images: torch.Tensor, n: int, batch_size: int) -> list[float]:
    """Top-1 of each class's n images (class-major) against the intended class."""
    out = []
    for c, start in enumerate(range(0, len(images), n)):
        chunk = to_images_uint8(images[start : start + n])
        out.append(top1_accuracy(net, chunk, torch.full((len(chunk),), c), batch_size))
    return out


# ---------------------------------------------------------------- contact sheets


def contact_sheet(rows: dict[str, torch.Tensor], title: str, scale: int) -> Image.Image:
    """The three rows (real, off, IGDS) side by side with a label column and a title line."""
    pics = grid(torch.cat([rows[s] for s in SETS]), rows=len(SETS))
    pics = pics.resize((pics.width * scale, pics.height * scale), Image.Resampling.NEAREST)
    label_w, title_h = 96, 18
    sheet = Image.new("RGB", (label_w + pics.width, title_h + pics.height), "white")
    sheet.paste(pics, (label_w, title_h))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 3), title, fill="black")
    row_h = pics.height / len(SETS)
    for r, name in enumerate(SETS):
        draw.text((4, title_h + int((r + 0.5) * row_h) - 6), ROW_TITLES[name], fill="black")
    return sheet


def write_sheets(sets: dict[str, SampleSet], classes: list[str], n: int, out: Path, scale: int) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for c, wnid in enumerate(classes):
        rows = {s: sets[s].images[c * n : (c + 1) * n] for s in SETS}
        path = out / f"contact_{wnid}.png"
        save_picture(contact_sheet(rows, f"{wnid} {class_info(wnid).name}", scale), path)
        files.append(str(path))
    return files


# ---------------------------------------------------------------- report


def set_summary(
    net: nn.Module, step: GuidedStep, sample_set: SampleSet, labels: torch.Tensor, n: int, batch_size: int
) -> dict[str, Any]:
    top1 = per_class_top1(net, sample_set.images, n, batch_size)
    log_q, h2 = critic_scores(step, sample_set.space, labels, n)
    summary = {
        "classifier_top1": sum(top1) / len(top1),
        "classifier_top1_per_class": top1,
        "critic_log_q_t0": float(log_q.mean()),
        "critic_h2_t0": float(h2.mean()),  # every sample carries its class's H2; classes are equal-sized
    }
    if sample_set.chain_log_q is not None and sample_set.chain_h2 is not None:
        summary["chain_last_step_log_q"] = float(sample_set.chain_log_q.mean())
        summary["chain_last_step_h2"] = float(sample_set.chain_h2.mean())
    return summary


def critic_numbers(path: Path) -> dict[str, Any]:
    m = load_critic(path).metrics
    trained = m.get("trained", {})
    return {
        "path": str(path),
        "held_out": m.get("held_out"),
        "acc": trained.get("acc"),
        "ba_bound_nats": trained.get("ba_bound_nats"),
        "ln_k": trained.get("ln_k"),
        "untrained": m.get("untrained"),
        "buckets": trained.get("buckets", []),
        "steps": m.get("steps"),
    }


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec)


def md_sets(res: dict[str, Any]) -> list[str]:
    """Classifier top-1 and critic scores per set, then top-1 per class."""
    cfg, clf, sets = res["config"], res["classifier"], res["sets"]
    lines = [
        "## Class consistency and critic scores",
        "",
        f"Classifier: {clf['net']} trained on real `{cfg['data_train']}` for {clf['epochs']} epochs; "
        f"top-1 on the whole real val split: {100 * clf['val_top1']:.1f}%. Critic scores are at t = 0 on "
        "the final samples (H2: our collision-entropy lower bound per class, nats).",
        "",
        "| set | classifier top-1 | critic log q(y\\|x) | critic H2 | guided step's last log q / H2 |",
        "|---|---|---|---|---|",
    ]
    for name in SETS:
        s = sets[name]
        chain = "—"
        if "chain_last_step_log_q" in s:
            chain = f"{fmt(s['chain_last_step_log_q'])} / {fmt(s['chain_last_step_h2'])}"
        top1, lq, h2 = 100 * s["classifier_top1"], fmt(s["critic_log_q_t0"]), fmt(s["critic_h2_t0"])
        lines.append(f"| {ROW_TITLES[name]} | {top1:.1f}% | {lq} | {h2} | {chain} |")
    lines += ["", "| class | " + " | ".join(ROW_TITLES[s] for s in SETS) + " |", "|---|---|---|---|"]
    for c, wnid in enumerate(res["classes"]):
        cells = " | ".join(f"{100 * sets[s]['classifier_top1_per_class'][c]:.0f}%" for s in SETS)
        lines.append(f"| {wnid} {class_info(wnid).name} | {cells} |")
    return lines + [""]


def md_critic(crit: dict[str, Any]) -> list[str]:
    """The critic's held-out numbers, overall and per t bucket."""
    untrained = (crit["untrained"] or {}).get("ba_bound_nats")
    lines = [
        "## Critic (held-out real data, from the critic file)",
        "",
        f"Our Barber–Agakov bound on I(X;Y): **{fmt(crit['ba_bound_nats'])} nats** of "
        f"ln K = {fmt(crit['ln_k'])} (untrained {fmt(untrained)}); accuracy {fmt(crit['acc'])}; "
        f"held out: {crit['held_out']}.",
        "",
        "| t | acc | I(X;Y) bound (nats) |",
        "|---|---|---|",
    ]
    lines += [f"| {b['t'][0]}–{b['t'][1]} | {b['acc']:.3f} | {b['ba_bound_nats']:.3f} |" for b in crit["buckets"]]
    return lines + [""]


def markdown(res: dict[str, Any], md_path: Path) -> str:
    cfg = res["config"]
    header = [
        "# Quality evidence",
        "",
        f"Denoiser `{cfg['denoiser']}`, critics `{cfg['critics']}`; {cfg['n_per_class']} samples per class, "
        f"{cfg['steps']} steps, CFG {cfg['cfg_scale']}, IGDS scale {cfg['guidance_scale']}, "
        f"beta {cfg['beta']:.3f}, seed {cfg['seed']} (guidance off and IGDS share every seed).",
        "",
    ]
    sheets = ["## Contact sheets (rows: real val, guidance off, IGDS)", ""]
    for f in res["sheets"]:
        sheets.append(f"![{Path(f).stem}]({os.path.relpath(f, md_path.parent)})")
    footer = ["", "Made by:", "", "```bash", res["command"], "```", ""]
    return "\n".join(header + md_sets(res) + md_critic(res["critic"]) + sheets + footer)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def command_line(argv: list[str] | None) -> str:
    return shlex.join(["python", *(sys.argv if argv is None else [sys.argv[0], *argv])])


def build_pipes(args: argparse.Namespace) -> tuple[Path, Path, dict[str, Pipeline]]:
    """Denoiser and critic paths, and one pipeline per guidance mode (otherwise the same config)."""
    models = resolve_models(args.denoiser, None, args.critics, "igds")
    denoiser, critics = models.denoiser, models.critics
    if critics is None:
        raise UserError("--critics is needed with your own --denoiser")
    pipes = {g: build_pipeline(denoiser, None, critics, step_config(args, g), device=args.device) for g in SETS[1:]}
    return denoiser, critics, pipes


def real_set(pipe: Pipeline, real: torch.Tensor) -> SampleSet:
    images = to_model_range(real)
    with torch.no_grad():
        return SampleSet(images, pipe.vae.encode(images.to(pipe.device)).cpu())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    denoiser, critics, pipes = build_pipes(args)
    guided = pipes["igds"]
    classes, labels = model_classes(guided, args.subset)
    n = args.n_per_class
    sets: dict[str, SampleSet] = {}
    for g, pipe in pipes.items():
        t = time.perf_counter()
        sets[g] = generate(pipe, labels, args)
        timings[f"sample_{g}_s"] = round(time.perf_counter() - t, 1)
    resolution = int(sets["off"].images.shape[-1])
    val_images, val_labels = load_real(args.data_val, classes, resolution, "val")
    sets["real"] = real_set(guided, first_per_class(val_images, val_labels, n, len(classes)))
    t = time.perf_counter()
    net, clf_info = real_classifier(args, classes, resolution)
    clf_info["val_top1"] = top1_accuracy(net, val_images, val_labels, args.batch_size)
    timings["classifier_s"] = round(time.perf_counter() - t, 1)
    step_labels = torch.tensor(labels).repeat_interleave(n)
    summaries = {s: set_summary(net, guided.step, sets[s], step_labels, n, args.batch_size) for s in SETS}
    sheets = write_sheets(sets, classes, n, args.out, args.sheet_scale)
    timings["total_s"] = round(time.perf_counter() - t0, 1)
    cfg = guided.step.cfg
    res = {
        "command": command_line(argv),
        "config": {
            "denoiser": str(denoiser),
            "critics": str(critics),
            "n_per_class": n,
            "steps": args.steps,
            "cfg_scale": cfg.cfg_scale,
            "guidance_scale": cfg.guidance_scale,
            "beta": cfg.beta,
            "seed": args.seed,
            "data_train": str(args.data_train),
            "data_val": str(args.data_val),
            "device": args.device,
            "batch_size": args.batch_size,
        },
        "classes": classes,
        "labels": labels,
        "classifier": clf_info,
        "critic": critic_numbers(critics),
        "sets": summaries,
        "sheets": sheets,
        "timings": timings,
        "versions": versions(),
    }
    json_path = args.json or args.out / "results.json"
    write_text(json_path, json.dumps(res, indent=1))
    write_text(args.md, markdown(res, args.md))
    brief = {s: {k: v for k, v in summaries[s].items() if not k.endswith("per_class")} for s in SETS}
    print(json.dumps(brief, indent=1))
    print(f"wrote {json_path}, {args.md}, {len(sheets)} contact sheets in {args.out} ({timings['total_s']} s)")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
