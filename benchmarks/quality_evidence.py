"""Quality evidence for a model from a judged sweep: contact sheets and the judge's table.

Reads the sets ``benchmarks/sweep_guidance.py`` wrote (one folder per configuration, each with its
judge ``result.json``) and writes, for every class, one contact sheet with three rows: real val
images, the unguided samples and the guided samples (the two generated rows share their seeds),
tiles upscaled to >= 96 px and titled with the class name; plus ``results.json`` (the judge's
rows for both sets, its reference rows, the critic's held-out numbers) and a markdown page.

    python benchmarks/quality_evidence.py --sweep runs/sweep_v2 --guided default \\
        --critics igds_fast/data/embedded_critic.safetensors --out docs/quality --md docs/quality.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from igds_fast.imageio import labelled_sheet, save_picture
from igds_fast.models.critics import load_critic
from igds_fast.subsets import class_info

KEYS = ("accuracy", "precision", "recall", "density", "coverage", "saturation", "within_class_distance")


def load_folder(folder: Path, n: int) -> torch.Tensor:
    """The first n images of a class folder (sorted by name) as [-1, 1] NCHW; resized to the first's size."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:n]
    if len(files) < n:
        sys.exit(f"error: '{folder}' has {len(files)} images, fewer than --n {n}")
    pics = [Image.open(f).convert("RGB") for f in files]
    size = pics[0].size
    arr = np.stack([np.asarray(p.resize(size, Image.Resampling.BICUBIC) if p.size != size else p) for p in pics])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


def repo_relative(path: str) -> str:
    """A path inside this repository as the docs name it (relative to the root), others as given."""
    root = Path(__file__).resolve().parents[1]
    p = Path(path).resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else path


def critic_numbers(path: Path) -> dict[str, Any]:
    trained = load_critic(path).metrics.get("trained", {})
    return {k: trained.get(k) for k in ("acc", "ba_bound_nats", "ln_k", "buckets")}


def markdown(res: dict[str, Any]) -> str:
    rows = [("guidance off", res["off"]), (f"IGDS ({res['guided_name']})", res["guided"])]
    ref = res["off"]["reference"]
    rows += [(f"*{k.replace('_', ' ')}*", ref[k]) for k in ("real_val", "random_real_train") if k in ref]
    out = [
        "# Quality evidence",
        "",
        f"Model: `{res['denoiser']}`; the sweep's sets (seed {res['seed']}; the sheets show {res['n']} per class), "
        f"judged at "
        f"{res['judge_resolution']} px by the independent judge (`igds-fast quality`, never the guidance critic). "
        f"Guided step: `{json.dumps(res['guided']['step'])}`.",
        "",
        "| set | " + " | ".join(k.replace("_", " ") for k in KEYS) + " | judge log q | critic log q |",
        "|---" * (len(KEYS) + 3) + "|",
    ]
    for name, r in rows:
        vals = " | ".join("-" if r.get(k) is None else f"{r[k]:.3f}" for k in KEYS)
        jl = "-" if r.get("judge_log_q") is None else f"{r['judge_log_q']:.2f}"
        cl = "-" if r.get("critic_log_q") is None else f"{r['critic_log_q']:.2f}"
        out.append(f"| {name} | {vals} | {jl} | {cl} |")
    if res["guided"].get("critic_log_q") is not None:
        gap = res["guided"]["critic_log_q"] - res["guided"]["judge_log_q"]
        out += [
            "",
            f"Critic-vs-judge log q gap on the guided samples: {gap:+.2f} nats (positive: the critic is "
            "more confident than the judge, i.e. partly fooled).",
        ]
    c = res["critic"]
    if c.get("buckets"):
        out += [
            "",
            f"Critic (held out): accuracy {c['acc']:.3f}, I(X;Y) bound {c['ba_bound_nats']:.3f} of "
            f"ln K = {c['ln_k']:.3f} nats.",
            "",
            "| t | acc | I(X;Y) bound (nats) |",
            "|---|---|---|",
        ]
        out += [f"| {b['t'][0]}-{b['t'][1]} | {b['acc']:.3f} | {b['ba_bound_nats']:.3f} |" for b in c["buckets"]]
    out += ["", "## Contact sheets (rows: real val, guidance off, IGDS)", ""]
    out += [f"![{Path(f).stem}]({Path(f).parent.name}/{Path(f).name})" for f in res["sheets"]]
    out += ["", "Made by:", "", "```bash", res["command"], "```", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", type=Path, required=True, help="sweep_guidance.py --out folder")
    ap.add_argument("--off", default="off", help="The unguided configuration's name.")
    ap.add_argument("--guided", default="default", help="The guided configuration's name.")
    ap.add_argument("--real-val", type=Path, default=Path("../shared/data/imagenette-64/val"))
    ap.add_argument("--critics", type=Path, required=True, help="The critics the guided set used.")
    ap.add_argument("--n", type=int, default=10, help="Images per row.")
    ap.add_argument("--out", type=Path, default=Path("docs/quality"))
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()
    folders = {k: args.sweep / name.replace(" ", "_") for k, name in (("off", args.off), ("guided", args.guided))}
    results = {}
    for k, folder in folders.items():
        if not (folder / "result.json").is_file():
            sys.exit(f"error: '{folder}' has no result.json: run benchmarks/sweep_guidance.py --only first")
        results[k] = json.loads((folder / "result.json").read_text())
    wnids = sorted(p.name for p in folders["off"].iterdir() if p.is_dir())
    args.out.mkdir(parents=True, exist_ok=True)
    sheets = []
    for w in wnids:
        rows = [
            ("real (val)", load_folder(args.real_val / w, args.n)),
            ("guidance off", load_folder(folders["off"] / w, args.n)),
            ("IGDS", load_folder(folders["guided"] / w, args.n)),
        ]
        path = args.out / f"contact_{w}.png"
        save_picture(labelled_sheet(rows, f"{w} {class_info(w).name}"), path)
        sheets.append(str(path))
    res = {
        "denoiser": repo_relative(results["guided"].get("denoiser") or str(args.sweep)),
        "n": args.n,
        "seed": results["guided"].get("seed", 0),
        "judge_resolution": results["guided"].get("judge_resolution"),
        "guided_name": args.guided,
        "off": results["off"],
        "guided": results["guided"],
        "critic": critic_numbers(args.critics),
        "sheets": sheets,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }
    (args.out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    if args.md is not None:
        args.md.write_text(markdown(res))
    print(json.dumps({k: {m: res[k][m] for m in KEYS} for k in ("off", "guided")}, indent=1))


if __name__ == "__main__":
    main()
