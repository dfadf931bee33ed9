"""Train the noise-conditional critic on real data noised by the denoiser's forward process.

Class head: cross-entropy over uniformly random t (as for classifier guidance).
Feature head: instance discrimination (InfoNCE) between two independent noisings of the same
image, so features separate individual images (the spread H(X|Y) is about), not just classes.
Kernel widths: median pairwise feature distance per (t bucket, class) on held-out real data.

On CUDA the (encoded) training set is held on the GPU and every random draw is made there; the
forward pass runs under bf16 autocast (losses in fp32) and the critic is compiled. ``--data`` and
``--val`` are ImageFolders or data packs (``training.data_pack``).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..diffusion.schedule import Schedule
from ..errors import UserError
from ..guidance.bounds import barber_agakov, class_log_prob
from ..models.critics import CriticConfig, NoiseCritic, save_critic
from ..models.labels import class_labels
from ..models.vae import PixelSpace
from .accel import autocast, autocast_dtype, compiled_forward
from .data_pack import load_training_images
from .latents import encoded, encoded_views
from .losses import q_sample


@dataclass
class TrainCriticConfig:
    data: str
    wnids: list[str]
    out: str
    val: str | None = None  # held-out ImageFolder; default: 10% of data held out
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    arch: str = "vit"  # the critic's trunk: vit or conv (models.critics)
    width: int = 192
    depth: int = 4
    heads: int = 4
    patch_size: int | None = None  # default: 4 for pixel space, 2 for latents
    feat_dim: int = 64
    nce_weight: float = 0.5
    nce_temperature: float = 0.1
    seed: int = 0
    device: str = "cpu"
    ckpt_every: int = 500
    eval_images: int = 1000  # held-out images scored per t bucket (a class-balanced subsample)
    precision: str = "auto"  # forward pass: fp32, or bf16 autocast; auto = bf16 on CUDA, fp32 elsewhere
    compile: bool | None = None  # torch.compile the critic for training; None = on CUDA only
    # Augmentation: each clean input translated by up to this many positions of the denoiser's input
    # (latent cells for a latent model; reflected at the border), both noisings alike.
    shift: int = 0
    # t = floor(1000 u^t_power), u uniform: 1 = uniform t; 2 puts 55% of the draws at t < 300, where the
    # guidance's weight (the held-out bound) lies, instead of 30%.
    t_power: float = 1.0
    # Augmentation: this many random-resized crops (scale 0.5-1, mirrored at random) of every training
    # image, encoded once beside the image and its mirror image; each step draws one of the views.
    crops: int = 0
    # Exponential moving average of the weights (0 = off): the averaged critic is evaluated and saved.
    ema: float = 0.0


def load_encoded(
    root: str, wnids: list[str], resolution: int, vae: nn.Module, cache: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """The split in the denoiser's input space (latents cached, see ``training.latents``)."""
    images, labels = load_training_images(root, wnids, resolution, cache_dir=cache)
    return encoded(images, vae, cache), labels


def balanced_subsample(x: torch.Tensor, y: torch.Tensor, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """At most n images, the same number from each class (the first ones: deterministic)."""
    per = max(1, n // k)
    keep = torch.cat([torch.nonzero(y == c).flatten()[:per] for c in range(k)])
    return x[keep], y[keep]


@torch.no_grad()
def evaluate_critic(
    critic: NoiseCritic, x: torch.Tensor, labels: torch.Tensor, tab: dict, seed: int = 1, batch: int = 256
) -> dict:
    """Held-out accuracy and Barber-Agakov bound (nats) per t bucket and overall."""
    g = torch.Generator().manual_seed(seed)
    n_b = critic.config.num_t_buckets
    buckets = []
    all_lq, all_y = [], []
    dev = next(critic.parameters()).device
    for b in range(n_b):
        lo, hi = b * 1000 // n_b, (b + 1) * 1000 // n_b
        lq, correct = [], 0
        for k in range(0, len(x), batch):
            x0, y = x[k : k + batch], labels[k : k + batch]
            t = torch.randint(lo, hi, (len(x0),), generator=g)
            xt = q_sample(x0, t, torch.randn(x0.shape, generator=g), tab)
            logits, _ = critic(xt.to(dev), t.float().to(dev))
            lq.append(class_log_prob(logits, y.to(dev)).cpu())
            correct += int((logits.argmax(-1).cpu() == y).sum())
        lq = torch.cat(lq)
        all_lq.append(lq)
        all_y.append(labels)
        k_cls = critic.config.num_classes
        buckets.append({"t": [lo, hi - 1], "acc": correct / len(x), "ba_bound_nats": barber_agakov(lq, labels, k_cls)})
    lq, ys = torch.cat(all_lq), torch.cat(all_y)
    return {
        "acc": sum(b["acc"] for b in buckets) / n_b,
        "ba_bound_nats": barber_agakov(lq, ys, critic.config.num_classes),
        "ln_k": math.log(critic.config.num_classes),
        "buckets": buckets,
    }


def config_key(ccfg: CriticConfig) -> str:
    """What a training state records of the critic it trains (compared on resume)."""
    return json.dumps(asdict(ccfg), sort_keys=True)


def resumable_config(saved: str, ccfg: CriticConfig) -> bool:
    """Whether a training state's config is this critic's; a vit state saved before ``arch`` existed is."""
    if saved == config_key(ccfg):
        return True
    return ccfg.arch == "vit" and saved == json.dumps(
        {k: v for k, v in asdict(ccfg).items() if k != "arch"}, sort_keys=True
    )


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each (C, H, W) sample by its own offsets in [-max_shift, max_shift], reflecting at the border."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    dy, dx = (torch.randint(-max_shift, max_shift + 1, (n, 1), generator=gen, device=x.device) for _ in range(2))

    def reflect(i: torch.Tensor, size: int) -> torch.Tensor:
        i = i.abs()  # -k -> k
        return torch.where(i > size - 1, 2 * (size - 1) - i, i)

    rows = reflect(torch.arange(h, device=x.device) + dy, h)  # (N, H)
    cols = reflect(torch.arange(w, device=x.device) + dx, w)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return x[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)


def sample_t(n: int, power: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """n training timesteps in 0..999, floor(1000 u^power)."""
    if power == 1.0:  # the draws of the recipe before --t-power existed
        return torch.randint(1000, (n,), generator=gen, device=device)
    u = torch.rand(n, generator=gen, device=device)
    return (1000 * u**power).long().clamp_max(999)


def train_critic(
    cfg: TrainCriticConfig, denoiser: nn.Module, vae: nn.Module, progress: bool = True, overwrite: bool = False
) -> Path:
    out = Path(cfg.out)
    if (out / "critic.safetensors").exists() and not (out / "train_state.pt").exists() and not overwrite:
        raise UserError(f"{out / 'critic.safetensors'} already exists; pass --overwrite or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if cfg.batch_size < 2 or cfg.steps <= 0:
        raise UserError("--batch-size must be >= 2 and --steps >= 1")
    if cfg.arch == "vit" and cfg.width % cfg.heads:
        raise UserError(f"--heads {cfg.heads} must divide --width {cfg.width}")
    ids = class_labels(denoiser, cfg.wnids)
    size, chans = int(denoiser.input_size), int(denoiser.in_channels)
    resolution = size * getattr(vae, "downsample", 1)
    images, y = load_training_images(cfg.data, cfg.wnids, resolution, cache_dir=out / "cache")
    x = encoded_views(images, vae, out / "cache", cfg.crops, cfg.seed)  # (N, 2 + crops, C, H, W)
    if x.shape[2:] != (chans, size, size):
        raise UserError(f"encoded data has shape {tuple(x.shape[2:])}, the denoiser expects {(chans, size, size)}")
    if cfg.val is not None:
        xv, yv = load_encoded(cfg.val, cfg.wnids, resolution, vae, out / "cache")
    else:  # hold out every 10th image
        held = torch.arange(len(x)) % 10 == 0
        xv, yv, x, y = x[held, 0], y[held], x[~held], y[~held]
    xv, yv = balanced_subsample(xv, yv, cfg.eval_images, len(cfg.wnids))
    ccfg = CriticConfig(
        in_channels=chans,
        input_size=size,
        patch_size=cfg.patch_size or (4 if isinstance(vae, PixelSpace) else 2),
        width=cfg.width,
        depth=cfg.depth,
        heads=cfg.heads,
        arch=cfg.arch,
        feat_dim=cfg.feat_dim,
        class_ids=ids,
        wnids=list(cfg.wnids),
    )
    torch.manual_seed(cfg.seed)
    dev = torch.device(cfg.device)
    critic = NoiseCritic(ccfg).to(dev)
    tab = Schedule.create(1000).tables()
    untrained = evaluate_critic(critic.eval(), xv, yv, tab)
    ema = copy.deepcopy(critic) if cfg.ema > 0 else None
    opt = torch.optim.AdamW(critic.parameters(), lr=cfg.lr, weight_decay=0.05)
    warm = max(1, cfg.steps // 20)  # linear warm-up over 5% of the steps, then cosine decay to 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda k: (k + 1) / warm if k < warm else 0.5 * (1 + math.cos(math.pi * (k - warm) / max(1, cfg.steps - warm))),
    )
    step, state_path = 0, out / "train_state.pt"
    if state_path.exists():
        st = torch.load(state_path, map_location=dev, weights_only=True)
        if not resumable_config(st["config"], ccfg):
            raise UserError(f"{state_path} belongs to another critic configuration; use a new --out")
        critic.load_state_dict(st["critic"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step = int(st["step"])
        if ema is not None:
            ema.load_state_dict(st["ema"])
    gen = torch.Generator(dev).manual_seed(cfg.seed * 7919 + step)
    amp = autocast_dtype(cfg.precision, dev)
    forward = compiled_forward(critic, cfg.compile, dev)
    x, y, tab_dev = x.to(dev), y.to(dev), {k: v.to(dev) for k, v in tab.items()}  # the training set on the device
    bar = tqdm(total=cfg.steps, initial=step, desc="train-critics", unit="step", disable=not progress)
    t0 = time.perf_counter()
    critic.train()
    while step < cfg.steps:
        idx = torch.randint(len(x), (cfg.batch_size,), generator=gen, device=dev)
        if cfg.crops == 0:  # image or mirror: the draw of the recipe before --crops, so its critics reproduce
            view = (torch.rand(len(idx), generator=gen, device=dev) < 0.5).long()
        else:  # image, mirror or one of the crops
            view = torch.randint(x.shape[1], (len(idx),), generator=gen, device=dev)
        x0, yb = random_shift(x[idx, view], cfg.shift, gen), y[idx]
        t1, t2 = (sample_t(len(x0), cfg.t_power, gen, dev) for _ in range(2))
        v1 = q_sample(x0, t1, torch.randn(x0.shape, generator=gen, device=dev), tab_dev)
        v2 = q_sample(x0, t2, torch.randn(x0.shape, generator=gen, device=dev), tab_dev)
        with autocast(dev, amp):
            logits, f = forward(torch.cat([v1, v2]), torch.cat([t1, t2]).float())
        logits, f = logits.float(), f.float()
        ce = F.cross_entropy(logits, torch.cat([yb, yb]))
        f1, f2 = f.chunk(2)
        sim = f1 @ f2.T / cfg.nce_temperature
        target = torch.arange(len(f1), device=dev)
        nce = 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target))
        loss = ce + cfg.nce_weight * nce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema is not None:
            with torch.no_grad():
                for avg, p in zip(ema.parameters(), critic.parameters(), strict=True):
                    avg.lerp_(p, 1 - cfg.ema)
        step += 1
        bar.update(1)
        if step % 25 == 0 or step == cfg.steps:  # .item() waits for the device: not every step
            bar.set_postfix(ce=f"{ce.item():.3f}", nce=f"{nce.item():.3f}")
        if step % cfg.ckpt_every == 0 and step < cfg.steps:
            cfg_key = config_key(ccfg)
            st = {
                "critic": critic.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "step": step,
                "config": cfg_key,
            }
            if ema is not None:
                st["ema"] = ema.state_dict()
            torch.save(st, state_path.with_suffix(".tmp"))
            state_path.with_suffix(".tmp").replace(state_path)
    bar.close()
    critic = (critic if ema is None else ema).eval()
    trained = evaluate_critic(critic, xv, yv, tab)
    metrics = {
        "held_out": "val" if cfg.val else "every 10th training image",
        "untrained": {"acc": untrained["acc"], "ba_bound_nats": untrained["ba_bound_nats"]},
        "trained": trained,
        "train_seconds": time.perf_counter() - t0,
        "steps": cfg.steps,
        "flops_per_image_forward": critic.flops_per_image(),
        "params": sum(p.numel() for p in critic.parameters()),
    }
    path = save_critic(critic, out / "critic.safetensors", metrics)
    (out / "critic.json").write_text(
        json.dumps({"config": asdict(ccfg), "train": asdict(cfg), "metrics": metrics}, indent=1)
    )
    state_path.unlink(missing_ok=True)
    return path
