"""The noise-conditional critic: q_phi(y | x_t, t) and features f_psi(x_t, t) in one small network.

Two trunks, both built for exporting their input-gradient (labels enter through one-hot products,
no gather whose backward would need ScatterElements):
- ``vit``: linear patchify (a reshape and a matmul), explicit softmax attention, LayerNorm, GELU;
- ``conv``: residual 3x3 convolutions with GroupNorm modulated by t, 2x2 mean-pooling by reshape
  (a convolution's input-gradient exports as a transposed convolution); the inductive bias a small
  latent and ~10k images want.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import UserError
from .dit import timestep_embedding

CRITIC_FORMAT = "igds-fast/critic-v1"
CRITIC_ARCHS = ("vit", "conv")


@dataclass
class CriticConfig:
    in_channels: int = 3
    input_size: int = 32
    patch_size: int = 4
    width: int = 192  # vit: token width; conv: channels of the first stage (doubled per stage, at most 4x)
    depth: int = 4  # vit: transformer blocks; conv: residual blocks per stage
    heads: int = 4  # vit only
    arch: str = "vit"  # "vit" or "conv"
    feat_dim: int = 64
    num_t_buckets: int = 10
    num_train_steps: int = 1000
    # Critic class k is the denoiser's label class_ids[k] (an ImageNet-1k index for ImageNet models).
    class_ids: list[int] = field(default_factory=list)
    wnids: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)


class _Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)
        self.ada = nn.Linear(width, 4 * width)  # shift/scale of both norms from the time embedding

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        b, n, c = h.shape
        s1, c1, s2, c2 = self.ada(temb)[:, None].chunk(4, dim=-1)
        a = self.norm1(h) * (1 + c1) + s1
        q, k, v = self.qkv(a).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        att = ((q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)).softmax(-1)
        h = h + self.proj((att @ v).transpose(1, 2).reshape(b, n, c))
        m = self.norm2(h) * (1 + c2) + s2
        return h + self.fc2(F.gelu(self.fc1(m)))


def _groups(channels: int) -> int:
    return math.gcd(32, channels)


def conv_stage_channels(cfg: CriticConfig) -> list[int]:
    """Channels per stage of the conv trunk: one stage per resolution from the input down to 4x4."""
    n = 1
    while cfg.input_size >> n >= 4 and (cfg.input_size >> n) << n == cfg.input_size:
        n += 1
    return [cfg.width * min(2**i, 4) for i in range(n)]


class _ResBlock(nn.Module):
    """GroupNorm -> t-modulation -> SiLU -> 3x3 conv, twice, plus the (1x1-projected) input."""

    def __init__(self, c_in: int, c_out: int, t_width: int):
        super().__init__()
        self.widths = [c_in, c_in, c_out, c_out]  # the split of ``ada``'s output
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in, affine=False)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out, affine=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.ada = nn.Linear(t_width, 2 * c_in + 2 * c_out)  # shift/scale of both norms from the time embedding
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        s1, c1, s2, c2 = self.ada(temb)[:, :, None, None].split(self.widths, dim=1)
        a = self.conv1(F.silu(self.norm1(h) * (1 + c1) + s1))
        return self.skip(h) + self.conv2(F.silu(self.norm2(a) * (1 + c2) + s2))


def _mean_pool2(h: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling as a reshape and a mean (its gradient is a broadcast: exports anywhere)."""
    b, c, hh, ww = h.shape
    return h.reshape(b, c, hh // 2, 2, ww // 2, 2).mean((3, 5))


class NoiseCritic(nn.Module):
    def __init__(self, cfg: CriticConfig):
        super().__init__()
        self.config = cfg
        if cfg.num_classes < 2:
            raise ValueError("a critic needs at least two classes")
        if cfg.arch not in CRITIC_ARCHS:
            raise ValueError(f"unknown critic architecture '{cfg.arch}' ({' or '.join(CRITIC_ARCHS)})")
        # Modules are created in the order of the first (vit) critics: the same seed, the same initial weights.
        if cfg.arch == "vit":
            p, g = cfg.patch_size, cfg.input_size // cfg.patch_size
            if g * p != cfg.input_size:
                raise ValueError(f"critic input {cfg.input_size} is not a multiple of patch {p}")
            self.patch_in = nn.Linear(cfg.in_channels * p * p, cfg.width)
            self.pos = nn.Parameter(torch.randn(1, g * g, cfg.width) * 0.02)
        self.t_mlp = nn.Sequential(nn.Linear(256, cfg.width), nn.SiLU(), nn.Linear(cfg.width, cfg.width))
        if cfg.arch == "vit":
            self.blocks = nn.ModuleList([_Block(cfg.width, cfg.heads) for _ in range(cfg.depth)])
            out_width = cfg.width
        else:
            chans = conv_stage_channels(cfg)
            self.stem = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
            self.stages = nn.ModuleList(
                nn.ModuleList(_ResBlock(chans[max(i - 1, 0)] if j == 0 else c, c, cfg.width) for j in range(cfg.depth))
                for i, c in enumerate(chans)
            )
            out_width = chans[-1]
        self.norm = nn.LayerNorm(out_width)
        self.class_head = nn.Linear(out_width, cfg.num_classes)
        self.feat_head = nn.Linear(out_width, cfg.feat_dim)
        # Kernel widths per (t bucket, class) of a diversity estimator the step no longer has: kept as a
        # buffer so that critic files keep one layout (files written before load as they are).
        self.register_buffer("kernel_sigma", torch.ones(cfg.num_t_buckets, cfg.num_classes))
        for m in self.modules():
            if isinstance(m, _Block | _ResBlock):  # t-modulation starts at zero
                nn.init.zeros_(m.ada.weight)
                nn.init.zeros_(m.ada.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.class_head.weight.dtype

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.config.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def pooled(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """The trunk: one vector per image (before the final norm)."""
        if self.config.arch == "vit":
            h = self.patch_in(self.patchify(x)) + self.pos + temb[:, None]
            for blk in self.blocks:
                h = blk(h, temb)
            return h.mean(1)
        h = self.stem(x)
        for i, stage in enumerate(self.stages):
            if i > 0:
                h = _mean_pool2(h)
            for blk in stage:
                h = blk(h, temb)
        return h.mean((2, 3))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, K), L2-normalised features (B, feat_dim)) of noisy inputs x_t at timesteps t."""
        temb = self.t_mlp(timestep_embedding(t, 256).to(self.dtype))
        pooled = self.norm(self.pooled(x, temb))
        feats = self.feat_head(pooled)
        feats = feats / torch.sqrt((feats * feats).sum(-1, keepdim=True) + 1e-12)
        return self.class_head(pooled), feats

    def t_bucket(self, t: torch.Tensor) -> torch.Tensor:
        n = self.config.num_t_buckets
        return (t.float() * n / self.config.num_train_steps).floor().clamp(0, n - 1).long()

    def flops_per_image(self) -> int:
        """Forward FLOPs (2 per multiply-add) for one image: matmuls, convolutions and attention only."""
        c = self.config
        if c.arch == "conv":
            chans = conv_stage_channels(c)
            total = c.input_size**2 * c.in_channels * chans[0] * 9  # stem
            prev = chans[0]
            for i, ch in enumerate(chans):
                cells = (c.input_size >> i) ** 2
                for _ in range(c.depth):  # two 3x3 convs, the 1x1 skip where the width changes, ada
                    total += cells * (9 * (prev * ch + ch * ch) + (prev * ch if prev != ch else 0))
                    total += c.width * 2 * (prev + ch)
                    prev = ch
            total += 256 * c.width + c.width * c.width + prev * (c.num_classes + c.feat_dim)  # t_mlp, heads
            return 2 * total
        n = (c.input_size // c.patch_size) ** 2
        w = c.width
        per_block = n * (3 * w * w + w * w + 8 * w * w) + 2 * n * n * w + c.width * 4 * w
        total = n * c.in_channels * c.patch_size**2 * w + c.depth * per_block
        total += 256 * w + w * w + w * (c.num_classes + c.feat_dim)
        return 2 * total


def save_critic(critic: NoiseCritic, path: str | Path, metrics: dict | None = None) -> Path:
    path = Path(path)
    meta = {"format": CRITIC_FORMAT, "config": json.dumps(asdict(critic.config)), "metrics": json.dumps(metrics or {})}
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in critic.state_dict().items()}, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_critic(path: str | Path) -> NoiseCritic:
    path = Path(path)
    if path.is_dir():
        path = path / "critic.safetensors"
    if not path.exists():
        raise UserError(f"critics '{path}' do not exist; train them with `igds-fast train-critics`")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        sd = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a readable critic file ({e})") from None
    if meta.get("format") != CRITIC_FORMAT:
        raise UserError(f"{path}: not an igds-fast critic file (format '{meta.get('format')}')")
    critic = NoiseCritic(CriticConfig(**json.loads(meta["config"])))
    critic.load_state_dict({k: v.float() for k, v in sd.items()})
    critic.metrics = json.loads(meta.get("metrics", "{}"))
    return critic.eval()
