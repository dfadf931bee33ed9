"""Train our SD-layout ``AutoencoderKL`` on an ImageFolder (the embedded default's VAE: Imagenette 64 px).

Loss per pixel: L1 + MSE of the reconstruction of a posterior sample, plus ``kl_weight`` x the KL
summed over latent elements and divided by the pixel count (LDM's "1e-6 of the sum", rescaled).
Augmentation: horizontal flip.

Resumable: ``<out>/train_state.pt`` (tensors and strings only, loaded with ``weights_only=True``) is
written every ``ckpt_minutes``; ``<out>/log.jsonl`` gets losses and held-out PSNR. At the end
``<out>/vae/`` holds a diffusers folder (fp16 weights, ``scaling_factor`` = 1 / std of the latent
means of ``scale_images`` train images) and ``<out>/report.json`` what it measured.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..errors import UserError
from ..imagefolder import load_imagefolder, scan_image_folder, to_model_range
from ..models.autoencoder_kl import WEIGHT_FILES, AutoencoderKL, AutoencoderKLConfig, DiagonalGaussian


@dataclass
class TrainAutoencoderConfig:
    data: str  # train ImageFolder: <data>/<wnid>/*.jpg
    out: str
    val: str | None = None  # held-out ImageFolder for PSNR (none: no PSNR)
    resolution: int = 64
    # 3 levels: 64 px -> 16x16 latents; narrow at 64/32 px, where decoding spends its time
    block_out_channels: tuple[int, ...] = (32, 32, 128)
    layers_per_block: int = 1
    norm_num_groups: int = 16
    latent_channels: int = 4
    steps: int = 3000  # ~5 epochs of Imagenette; ~45 min on one CPU core with bf16
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 200
    kl_weight: float = 1e-6
    bf16: bool = False  # CPU/GPU autocast for the training forward (weights and optimizer stay fp32)
    seed: int = 0
    device: str = "cpu"
    ckpt_minutes: float = 5.0
    log_every: int = 50
    eval_images: int = 500  # held-out images scored at each checkpoint
    final_eval_images: int | None = None  # None: the whole held-out set
    scale_images: int = 2000

    def model_config(self, scaling_factor: float = 1.0) -> AutoencoderKLConfig:
        return AutoencoderKLConfig(
            block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            latent_channels=self.latent_channels,
            norm_num_groups=self.norm_num_groups,
            sample_size=self.resolution,
            scaling_factor=scaling_factor,
        )


def _check(cfg: TrainAutoencoderConfig) -> None:
    down = 2 ** (len(cfg.block_out_channels) - 1)
    if cfg.steps <= 0 or cfg.batch_size <= 0:
        raise UserError("--steps and --batch-size must be >= 1")
    if cfg.resolution % down:
        raise UserError(f"--resolution {cfg.resolution} is not a multiple of the downsample factor {down}")


def _batch(data: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n random images, each flipped with probability 1/2 (uint8 in, [-1, 1] out)."""
    x = data[torch.randint(len(data), (n,), generator=gen)]
    flip = torch.rand(n, generator=gen) < 0.5
    return to_model_range(torch.where(flip[:, None, None, None], x.flip(-1), x))


def lr_at(cfg: TrainAutoencoderConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


@torch.no_grad()
def psnr(model: AutoencoderKL, images: torch.Tensor, batch: int = 50) -> float:
    """Mean per-image PSNR (dB) of posterior-mean reconstructions, quantized to uint8 as written."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    values = []
    for k in range(0, len(images), batch):
        ref = images[k : k + batch]
        x = to_model_range(ref).to(dev)
        rec = model.decode(model.encode(x).mean).float().clamp(-1, 1)
        rec = ((rec + 1) * 127.5).round().cpu()
        mse = (rec - ref.float()).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
        values.append(10 * torch.log10(255.0**2 / mse))
    model.train(was_training)
    return float(torch.cat(values).mean())


@torch.no_grad()
def latent_std(model: AutoencoderKL, images: torch.Tensor, batch: int = 100) -> float:
    """Std over all elements of the posterior means (what ``LatentVAE.encode`` returns, unscaled)."""
    model.eval()
    dev = next(model.parameters()).device
    z = torch.cat(
        [model.encode(to_model_range(images[k : k + batch]).to(dev)).mean.cpu() for k in range(0, len(images), batch)]
    )
    return float(z.double().std())


@torch.no_grad()
def decode_seconds(model: AutoencoderKL, n: int = 100, side: int = 16, repeats: int = 3) -> float:
    """Best-of-``repeats`` wall time to decode ``n`` latents on one CPU thread, fp32."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cpu = AutoencoderKL(model.config).eval()
        cpu.load_state_dict({k: v.float().cpu() for k, v in model.state_dict().items()})
        z = torch.randn(n, model.config.latent_channels, side, side, generator=torch.Generator().manual_seed(0))
        cpu.decode(z[:4])  # warm-up: first-call allocations
        best = math.inf
        for _ in range(repeats):
            t = time.perf_counter()
            cpu.decode(z)
            best = min(best, time.perf_counter() - t)
        return best
    finally:
        torch.set_num_threads(threads)


def _save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _val_order(n: int) -> torch.Tensor:
    """A fixed shuffle of the held-out set: its subsets mix the classes (the files are sorted by class)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(1))


def _load_split(root: str, resolution: int, cache: Path) -> torch.Tensor:
    wnids = sorted(scan_image_folder(Path(root), "image"))
    return load_imagefolder(root, wnids, resolution, cache_dir=cache)[0]


def train_autoencoder(cfg: TrainAutoencoderConfig, progress: bool = True) -> Path:
    """Train to ``cfg.steps`` (resuming from ``<out>/train_state.pt``); returns the ``<out>/vae`` folder."""
    _check(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = _load_split(cfg.data, cfg.resolution, out / "cache")
    val = _load_split(cfg.val, cfg.resolution, out / "cache") if cfg.val else None
    if val is not None:  # a fixed, class-mixed subset for the checkpoints' PSNR
        val_sub = val[_val_order(len(val))[: cfg.eval_images]]
    dev = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = AutoencoderKL(cfg.model_config()).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    # what must match to resume (the logging/eval knobs may change between runs)
    arch = json.dumps({**asdict(cfg.model_config()), "kl_weight": cfg.kl_weight}, sort_keys=True)
    step, elapsed, state_path = 0, 0.0, out / "train_state.pt"
    if state_path.exists():
        state = torch.load(state_path, map_location=dev, weights_only=True)
        if state["arch"] != arch:
            raise UserError(f"{state_path} was written for another autoencoder config; use a new --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
    if step >= cfg.steps and (out / "report.json").is_file() and (out / "vae").is_dir():
        return out / "vae"  # finished: a rerun leaves the folder (and every hash taken of it) as it was
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # a resume gets a fresh stream
    pixels = cfg.resolution**2 * 3
    log = open(out / "log.jsonl", "a")  # noqa: SIM115 - held for the whole loop, closed at the end
    bar = tqdm(total=cfg.steps, initial=step, desc="train-autoencoder", unit="step", disable=not progress)
    t0, last_ckpt, seen, sums, n = time.perf_counter() - elapsed, time.perf_counter(), 0, {}, 0
    while step < cfg.steps:
        x = _batch(data, cfg.batch_size, gen).to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            post = model.encode(x)
        post = DiagonalGaussian(post.mean.float(), post.logvar.float())  # sample and KL in fp32
        z = post.mean + torch.exp(0.5 * post.logvar) * torch.randn(post.mean.shape, generator=gen).to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            rec = model.decode(z)
        err = rec.float() - x
        l1, mse = err.abs().mean(), err.pow(2).mean()
        kl = post.kl().mean() / pixels  # the sum over latents, per image pixel
        loss = l1 + mse + cfg.kl_weight * kl
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen, n = seen + len(x), n + 1
        for k, v in (("loss", loss), ("l1", l1), ("mse", mse), ("kl", kl * pixels)):
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            rec_log = {"step": step, **{k: v / n for k, v in sums.items()}, "lr": lr_at(cfg, step - 1)}
            rec_log.update(img_s=seen / (time.perf_counter() - t0 - elapsed), minutes=_minutes(t0))
            log.write(json.dumps(rec_log) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{rec_log['loss']:.4f}")
            sums, n = {}, 0
        if time.perf_counter() - last_ckpt >= cfg.ckpt_minutes * 60 or step == cfg.steps:
            state = {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "elapsed": time.perf_counter() - t0,
                "arch": arch,
            }
            _save_state(state_path, state)
            last_ckpt = time.perf_counter()
            if val is not None:
                log.write(json.dumps({"step": step, "val_psnr": psnr(model, val_sub), "minutes": _minutes(t0)}) + "\n")
                log.flush()
    bar.close()
    log.close()
    return finish(cfg, model, data, val, train_minutes=_minutes(t0))


def _minutes(t0: float) -> float:
    return round((time.perf_counter() - t0) / 60, 2)


def finish(
    cfg: TrainAutoencoderConfig,
    model: AutoencoderKL,
    data: torch.Tensor,
    val: torch.Tensor | None,
    train_minutes: float,
) -> Path:
    """Scale the latents, write the fp16 diffusers folder, and measure what ships (reloaded from it)."""
    from ..models.vae import load_vae

    out = Path(cfg.out)
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(2))[: cfg.scale_images]
    std = latent_std(model, data[pick])
    model.config = dataclasses.replace(model.config, scaling_factor=round(1.0 / std, 5))
    folder = model.save_pretrained(out / "vae", dtype=torch.float16)
    shipped = load_vae(folder).vae  # the fp16 weights, as every user will load them
    report: dict[str, Any] = {
        "config": asdict(shipped.config),
        "steps": cfg.steps,
        "train_minutes": train_minutes,
        "latent_std": std,
        "scaling_factor": shipped.config.scaling_factor,
        "parameters": sum(p.numel() for p in shipped.parameters()),
        "decoder_parameters": sum(p.numel() for n, p in shipped.named_parameters() if "decoder" in n or "post" in n),
        "weights_bytes": (folder / WEIGHT_FILES[0]).stat().st_size,
    }
    side = cfg.resolution // shipped.downsample
    report["decode_100_seconds_1_thread"] = decode_seconds(shipped, 100, side)
    report["decode_ms_per_image_1_thread"] = report["decode_100_seconds_1_thread"] * 10
    if val is not None:
        held = val if cfg.final_eval_images is None else val[_val_order(len(val))[: cfg.final_eval_images]]
        report["val_images"] = len(held)
        report["val_psnr"] = psnr(shipped.to(cfg.device), held)
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    last = [r for r in logs if "loss" in r][-5:]
    report["final_losses"] = (
        {k: sum(r[k] for r in last) / len(last) for k in ("loss", "l1", "mse", "kl")} if last else {}
    )
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return folder
