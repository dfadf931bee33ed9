"""Calibrate the guidance by the independent judge (``igds-fast quality``), never by the critic.

For each configuration: sample IPC images per class of every Imagenette class with the shipped
embedded model (or --denoiser/--critics), write them as a set, and score it with one cached judge
(accuracy, coverage, saturation, within-class distance, ...). Also records the guided critic's
log q next to the judge's, so the gap (how much the critic is fooled) is visible. Resumable: a
finished configuration's JSON is kept and skipped on rerun.

    python benchmarks/sweep_guidance.py --out runs/sweep --table runs/sweep/table.md

The recorded sweeps and what they showed: docs/experiments/sweep_guidance.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from igds_fast.config import step_config
from igds_fast.evaluation.judge import load_or_train_judge
from igds_fast.evaluation.scoring import judge_samples
from igds_fast.imageio import encode_image, to_uint8, write_atomic
from igds_fast.jobs.image_manifest import image_name, pixel_stats
from igds_fast.jobs.sample import sample_classes
from igds_fast.models.embedded import resolve_models
from igds_fast.models.labels import class_labels
from igds_fast.sampling.pipeline import build_pipeline
from igds_fast.subsets import subset

# The defaults these rows were measured against (releases before 2026-12-02: every t guided, s 0.1,
# beta 0.05, no clip guard): every named row is this plus its options, so a name keeps its meaning as
# defaults move.
BASE = {"guidance_scale": 0.1, "beta": 0.05, "window_hi": 999, "clip_guard": 0.0}
# name -> step options on top of BASE ("default": the config defaults at run time, recorded in the row).
# s and beta are in units of eps RMS.
CONFIGS: dict[str, dict] = {
    "off": {"guidance": "off"},
    "default": {},
    "s0.1 b0.05 full": {},  # the default of earlier releases
    # the base sampler: CFG on all latent channels (DiT's official code guides only the first 3)
    "off cfg-all": {"guidance": "off", "cfg_channels": "all"},
    "off cfg6 cfg-all": {"guidance": "off", "cfg_channels": "all", "cfg_scale": 6.0},
    "off cfg8 cfg-all": {"guidance": "off", "cfg_channels": "all", "cfg_scale": 8.0},
    "proto s0.1": {"guidance_scale": 0.1, "beta": 0.0},
    "proto s0.25": {"guidance_scale": 0.25, "beta": 0.0},
    "proto s0.5": {"guidance_scale": 0.5, "beta": 0.0},
    "proto s0.25 flat": {"guidance_scale": 0.25, "beta": 0.0, "weighting": "flat"},
    "s0.1 x0 b0.25": {"guidance_scale": 0.1, "beta": 0.25},
    "s0.25 x0 b0.25": {"guidance_scale": 0.25, "beta": 0.25},
    "s0.25 x0 b0.5": {"guidance_scale": 0.25, "beta": 0.5},
    "s0.25 x0 b1": {"guidance_scale": 0.25, "beta": 1.0},
    # the collision-entropy diversity term and the moment, spread and envelope guards were measured here
    # too and removed from the product; their rows stay in docs/experiments/sweep_guidance.md
    # with the range guard (pixel models: guidance may not push x0_hat outside [-1, 1]); the rows
    # above were run before it existed (range_guard recorded as false in their JSON)
    "guard proto s0.25": {"guidance_scale": 0.25, "beta": 0.0},
    "guard s0.25 x0 b0.05": {"guidance_scale": 0.25, "beta": 0.05},
    "guard s0.25 x0 b0.1": {"guidance_scale": 0.25, "beta": 0.1},
    "guard s0.1 x0 b0.05": {"guidance_scale": 0.1, "beta": 0.05},
    "guard s0.1 x0 b0.1": {"guidance_scale": 0.1, "beta": 0.1},
    "guard s0.1 x0 b0.2": {"guidance_scale": 0.1, "beta": 0.2},
    "guard s0.25 x0 b0.2": {"guidance_scale": 0.25, "beta": 0.2},
    "guard s0.05 x0 b0.05": {"guidance_scale": 0.05, "beta": 0.05},
    "guard s0.05 x0 b0.1": {"guidance_scale": 0.05, "beta": 0.1},
    # the default guidance kept off the last steps (does low-t guidance make the extra saturated pixels?)
    "default lo200": {"window_lo": 200},
    "default lo400": {"window_lo": 400},
    "default hi500": {"window_hi": 500},
    "default hi300": {"window_hi": 300},
    "default hi400": {"window_hi": 400},
    "hi500 b0.1": {"window_hi": 500, "beta": 0.1},
    # guidance only where the critic knows most (low t), stronger there to keep the accuracy
    "hi300 s0.2": {"window_hi": 300, "guidance_scale": 0.2},
    "hi300 s0.3": {"window_hi": 300, "guidance_scale": 0.3},
    "hi300 s0.2 b0.1": {"window_hi": 300, "guidance_scale": 0.2, "beta": 0.1},
    "hi400 s0.2 b0.1": {"window_hi": 400, "guidance_scale": 0.2, "beta": 0.1},
    "hi300 s0.3 b0.15": {"window_hi": 300, "guidance_scale": 0.3, "beta": 0.15},
    "hi300 s0.3 b0.25": {"window_hi": 300, "guidance_scale": 0.3, "beta": 0.25},
    "hi300 s0.4 b0.25": {"window_hi": 300, "guidance_scale": 0.4, "beta": 0.25},
    "hi300 s0.4 b0.4": {"window_hi": 300, "guidance_scale": 0.4, "beta": 0.4},
    "hi300 s0.4 b0.3": {"window_hi": 300, "guidance_scale": 0.4, "beta": 0.3},
    "hi300 s0.5 b0.3": {"window_hi": 300, "guidance_scale": 0.5, "beta": 0.3},
    "clip0.25 hi300 s0.4 b0.3": {"clip_guard": 0.25, "window_hi": 300, "guidance_scale": 0.4, "beta": 0.3},
    "clip0.5 hi300 s0.4 b0.3": {"clip_guard": 0.5, "window_hi": 300, "guidance_scale": 0.4, "beta": 0.3},
    "clip1 hi300 s0.4 b0.3": {"clip_guard": 1.0, "window_hi": 300, "guidance_scale": 0.4, "beta": 0.3},
    # the default (clip0.5 hi300 s0.4 b0.3) with more diversity or a weaker prototype term (a critic that knows more)
    "clip0.5 hi300 s0.4 b0.6": {"clip_guard": 0.5, "window_hi": 300, "guidance_scale": 0.4, "beta": 0.6},
    "clip0.5 hi300 s0.3 b0.3": {"clip_guard": 0.5, "window_hi": 300, "guidance_scale": 0.3, "beta": 0.3},
}
# The order a sweep runs them in when --only is not given (most informative first).
ORDER = [
    "off",
    "guard proto s0.25",
    "guard s0.25 x0 b0.1",
    "guard s0.25 x0 b0.05",
    "guard s0.1 x0 b0.05",
    "guard s0.1 x0 b0.1",
    "guard s0.1 x0 b0.2",
    "guard s0.25 x0 b0.2",
    "proto s0.25",
    "s0.25 x0 b0.5",
    "s0.25 x0 b1",
    "proto s0.1",
    "s0.1 x0 b0.25",
    "s0.25 x0 b0.25",
    "proto s0.25 flat",
    "s0.25 collision b0.5",
    "proto s0.5",
]
KEYS = ("accuracy", "coverage", "density", "precision", "recall", "saturation", "within_class_distance")


def judge_log_q(judge, folder: Path, wnids: list[str]) -> float:
    """The judge's mean log-probability of each sample's own class."""
    from PIL import Image

    lq = []
    for _k, w in enumerate(wnids):
        files = sorted((folder / w).glob("*.png"))
        imgs = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])).permute(0, 3, 1, 2)
        lq.append(torch.log_softmax(judge.logits(imgs), -1)[:, judge.classes.index(w)])
    return float(torch.cat(lq).mean())


def run_config(
    name: str, opts: dict, args: argparse.Namespace, judge, wnids: list[str], base: dict | None = BASE
) -> dict:
    """Sample and judge one configuration (``base``, then ``opts``, over the step's defaults); cached."""
    folder = args.out / name.replace(" ", "_")
    done = folder / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    cfg = step_config(None if name == "default" else base, opts)
    models = resolve_models(args.denoiser, args.vae, args.critics, cfg.guidance)
    pipe = build_pipeline(models.denoiser, models.vae, models.critics, cfg)
    labels = class_labels(pipe.step.denoiser, wnids)
    t0 = time.perf_counter()
    _, images, log_q, _ = sample_classes(pipe, labels, args.ipc, args.seed, args.ipc, progress=False)
    seconds = time.perf_counter() - t0
    arr = to_uint8(images).numpy()
    for k, w in enumerate(wnids):
        (folder / w).mkdir(parents=True, exist_ok=True)
        for j in range(args.ipc):
            write_atomic(folder / w / image_name(j), encode_image(arr[k * args.ipc + j], "png"))
    res = judge_samples(folder, args.real_train, args.real_val, judge=judge, progress=False)
    row = {
        "name": name,
        "denoiser": str(models.denoiser),
        "vae": models.vae,
        "critics": models.critics and str(models.critics),
        "seed": args.seed,
        "judge_resolution": args.resolution,
        "step": cfg.to_dict(),
        "seconds": seconds,
        **{k: res[k] for k in KEYS},
        "critic_log_q": float(log_q.mean()) if cfg.guidance == "igds" else None,
        "judge_log_q": judge_log_q(judge, folder, wnids),
        "reference": res["reference"],
    }
    write_atomic(done, json.dumps(row, indent=1).encode())
    return row


def image_stats(folder: Path, wnids: list[str]) -> dict[str, np.ndarray]:
    """Per image (class by class, index order): the saturation and pixel std distill's manifest records."""
    from PIL import Image

    stats = [
        pixel_stats(np.asarray(Image.open(f).convert("RGB"))) for w in wnids for f in sorted((folder / w).glob("*.png"))
    ]
    return {k: np.array([st[k] for st in stats]) for k in ("saturation", "pixel_std")}


def paired_saturation(folder: Path, off: dict[str, np.ndarray], wnids: list[str]) -> dict[str, float]:
    """Saturation against guidance off (``off``: its ``image_stats``) image by image (image k of a class
    has the same noise in every row): the mean difference and its paired standard error, and the
    row's flattest image."""
    a, b = image_stats(folder, wnids), off
    if len(a["saturation"]) != len(b["saturation"]):
        raise SystemExit(f"{folder} and the off row hold different numbers of images: rerun with one --ipc")
    diff = a["saturation"] - b["saturation"]
    return {
        "saturation_vs_off": float(diff.mean()),
        "saturation_vs_off_se": float(diff.std(ddof=1) / len(diff) ** 0.5),
        "min_pixel_std": float(a["pixel_std"].min()),
    }


def table(rows: list[dict]) -> str:
    cols = " | ".join(KEYS)
    head = f"| config | {cols} | saturation - off (paired se) | min pixel std | judge log q | critic log q |\n"
    head += "|---" * (len(KEYS) + 5) + "|\n"
    lines = []
    for r in rows:
        vals = " | ".join(f"{r[k]:.3f}" if r[k] is not None else "-" for k in KEYS)
        crit = f"{r['critic_log_q']:.2f}" if r["critic_log_q"] is not None else "-"
        p = r.get("paired")
        pair = f"{p['saturation_vs_off']:+.4f} ({p['saturation_vs_off_se']:.4f})" if p else "-"
        flat = f"{p['min_pixel_std']:.4f}" if p else "-"
        lines.append(f"| {r['name']} | {vals} | {pair} | {flat} | {r['judge_log_q']:.2f} | {crit} |")
    ref = rows[0]["reference"]
    for key in ("real_val", "random_real_train"):
        if key in ref:
            vals = " | ".join(f"{ref[key][k]:.3f}" if ref[key].get(k) is not None else "-" for k in KEYS)
            lines.append(f"| *{key.replace('_', ' ')}* | {vals} | - | - | - | - |")
    return head + "\n".join(lines) + "\n"


def sweep_arguments(description: str, out: str) -> argparse.ArgumentParser:
    """The options every judge sweep takes (``prepare`` reads them)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path, default=Path(out))
    ap.add_argument("--table", type=Path, default=None, help="Write the markdown table here too.")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/imagenette-64"))
    ap.add_argument("--denoiser", type=Path, default=None)
    ap.add_argument("--critics", type=Path, default=None)
    ap.add_argument("--vae", default=None, help="The denoiser's VAE (a latent --denoiser); default: the embedded rule.")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resolution", type=int, default=32, help="The judge's resolution (samples are resized to it).")
    ap.add_argument("--only", default=None, help="Comma list of config names to run.")
    ap.add_argument("--threads", type=int, default=1)
    return ap


def prepare(args: argparse.Namespace) -> tuple[list[str], object]:
    """(the Imagenette WNIDs, the cached judge) for a sweep's parsed options."""
    torch.set_num_threads(args.threads)
    args.real_train, args.real_val = args.data / "train", args.data / "val"
    wnids = [c.wnid for c in subset("imagenette")]
    return wnids, load_or_train_judge(args.real_train, args.resolution, progress=False)


def main() -> None:
    args = sweep_arguments(__doc__.splitlines()[0], "runs/sweep").parse_args()
    wnids, judge = prepare(args)
    names = args.only.split(",") if args.only else ORDER
    rows = []
    off_folder, off = args.out / "off", None
    for name in names:
        row = run_config(name, CONFIGS[name], args, judge, wnids)
        if name != "off" and (off_folder / "result.json").exists():  # computed from the images: not cached
            off = off if off is not None else image_stats(off_folder, wnids)
            row["paired"] = paired_saturation(args.out / name.replace(" ", "_"), off, wnids)
        rows.append(row)
        shown = ("name", "seconds", *KEYS, "judge_log_q", "critic_log_q")
        print(json.dumps({k: row[k] for k in shown} | row.get("paired", {})), flush=True)
    text = table(rows)
    print(text)
    if args.table is not None:
        args.table.write_text(text)


if __name__ == "__main__":
    main()
