"""Diffusion Transformer (DiT, Peebles & Xie 2023), written from the architecture description.

Parameter names follow the official checkpoints (``x_embedder.proj``, ``blocks.N.attn.qkv``, ...),
so an official state dict loads without renaming. Two switches cover the numerical differences of
diffusers' ``DiTTransformer2DModel``: its timestep frequencies divide by ``half - 1``
(``time_freq_shift=1``) and its pre-MLP LayerNorm uses ``eps=1e-5``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# Official variants: name -> (depth, hidden size, heads).
DIT_VARIANTS: dict[str, tuple[int, int, int]] = {
    "XL": (28, 1152, 16),
    "L": (24, 1024, 16),
    "B": (12, 768, 12),
    "S": (12, 384, 6),
}


@dataclass
class DiTConfig:
    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    learn_sigma: bool = True
    # Row ``num_classes`` of the label table is the null class used by classifier-free guidance.
    class_dropout: bool = True
    time_freq_shift: int = 0
    mlp_norm_eps: float = 1e-6
    freq_dim: int = 256
    # Class names of our own checkpoints: label k is wnids[k]. Empty for ImageNet-1k models,
    # whose labels are ImageNet-1k indices.
    wnids: list[str] = field(default_factory=list)

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_arch(cls, arch: str, **kw) -> DiTConfig:
        """``"DiT-XL/2"`` -> config (input size, channels and classes from ``kw``)."""
        name = arch.removeprefix("DiT-")
        try:
            size, patch = name.split("/")
            depth, hidden, heads = DIT_VARIANTS[size]
            if patch not in ("2", "4", "8"):
                raise ValueError(patch)
            return cls(patch_size=int(patch), depth=depth, hidden_size=hidden, num_heads=heads, **kw)
        except (KeyError, ValueError):
            raise ValueError(f"unknown DiT arch '{arch}': expected DiT-{{S,B,L,XL}}/{{2,4,8}}, e.g. DiT-XL/2") from None


def timestep_embedding(t: torch.Tensor, dim: int, freq_shift: int = 0, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos, sin] of (possibly fractional) timesteps, always in float32.

    fp16/bf16 cannot represent timesteps near 1000 finely enough (bf16 spacing there is 4), so the
    embedding is computed in fp32 whatever the model's dtype.
    """
    half = dim // 2
    # Same operation order as the official DiT and diffusers (-log(P) * k, then / (half - shift)):
    # at t ~ 1000 one ulp in a frequency moves the embedding by ~6e-5.
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    exponent = -math.log(max_period) * k / (half - freq_shift)
    freqs = torch.exp(exponent)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position table (grid*grid, dim), patches in row-major order: the first
    half of each vector encodes the patch's column, the second half its row (official layout)."""

    def one_axis(d: int, pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    coords = torch.arange(grid, dtype=torch.float64)
    rows = coords[:, None].expand(grid, grid)
    cols = coords[None, :].expand(grid, grid)
    return torch.cat([one_axis(dim // 2, cols), one_axis(dim // 2, rows)], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_ch: int, hidden: int):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, hidden, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int, freq_shift: int):
        super().__init__()
        self.freq_dim, self.freq_shift = freq_dim, freq_shift
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.freq_dim, self.freq_shift)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, hidden: int, with_null: bool):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(with_null), hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # "sdpa" uses the fused kernel; "math" spells softmax(QK^T)V out, which every exporter and
        # every backward pass understands.
        self.impl = "sdpa"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)
            out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.hidden_size
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, cfg.num_heads)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=cfg.mlp_norm_eps)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_a[:, None] * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, patch: int, out_ch: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * out_ch)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """``forward(x, t, y)`` returns the raw model output: eps and, with learned sigma, the
    variance interpolation channels (2C channels in total)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.config = cfg
        grid = cfg.input_size // cfg.patch_size
        if grid * cfg.patch_size != cfg.input_size:
            raise ValueError(f"input size {cfg.input_size} is not a multiple of patch {cfg.patch_size}")
        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.in_channels, cfg.hidden_size)
        self.t_embedder = TimestepEmbedder(cfg.hidden_size, cfg.freq_dim, cfg.time_freq_shift)
        self.y_embedder = LabelEmbedder(cfg.num_classes, cfg.hidden_size, cfg.class_dropout)
        # A fixed table; stored in the state dict as the official checkpoints do.
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(cfg.hidden_size, grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(cfg.hidden_size, cfg.patch_size, cfg.out_channels)

    # Facts other modules ask every denoiser.
    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def learn_sigma(self) -> bool:
        return self.config.learn_sigma

    def set_attention(self, impl: str) -> None:
        for blk in self.blocks:
            blk.attn.impl = impl

    def initialize(self, seed: int = 0) -> DiT:
        """DiT's training init: Xavier linears, zeroed adaLN and output layers (so the network
        starts as the identity residual and predicts zeros)."""
        g = torch.Generator().manual_seed(seed)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                bound = math.sqrt(6.0 / (m.in_features + m.out_features))
                with torch.no_grad():
                    m.weight.uniform_(-bound, bound, generator=g)
                    m.bias.zero_()
        w = self.x_embedder.proj.weight
        bound = math.sqrt(6.0 / (w[0].numel() + w.shape[0]))
        with torch.no_grad():
            w.uniform_(-bound, bound, generator=g)
            self.x_embedder.proj.bias.zero_()
            self.y_embedder.embedding_table.weight.normal_(0, 0.02, generator=g)
            for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
                lin.weight.normal_(0, 0.02, generator=g)
            for blk in self.blocks:
                blk.adaLN_modulation[1].weight.zero_()
                blk.adaLN_modulation[1].bias.zero_()
            for p in self.final_layer.parameters():
                p.zero_()
        return self

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p, c = self.config.patch_size, self.config.out_channels
        h = w = int(round(x.shape[1] ** 0.5))
        x = x.reshape(x.shape[0], h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        c = self.t_embedder(t) + self.y_embedder(y)
        for blk in self.blocks:
            h = blk(h, c)
        return self.unpatchify(self.final_layer(h, c))
