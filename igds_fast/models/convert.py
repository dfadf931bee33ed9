"""Key layouts of DiT checkpoints -> our ``DiT`` module.

Official facebookresearch/DiT state dicts use our names already; only the architecture has to be
read off the tensor shapes. diffusers' ``DiTTransformer2DModel`` splits q/k/v, renames every layer
and stores a copy of the timestep/label embedder in every block (749.8M stored vs 674.8M unique
parameters for XL/2); we keep one copy and check that the others agree.
"""

from __future__ import annotations

import re

import torch

from ..errors import UserError
from .dit import DIT_VARIANTS, DiTConfig, sincos_pos_embed_2d

_HEADS_BY_WIDTH = {hidden: heads for _, hidden, heads in DIT_VARIANTS.values()}


def _need(sd: dict[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    if key not in sd:
        raise UserError(f"{where}: missing tensor '{key}'; is this a DiT checkpoint?")
    return sd[key]


def infer_official_config(sd: dict[str, torch.Tensor], arch: str | None = None, where: str = "checkpoint") -> DiTConfig:
    """Read the DiT variant off an official state dict's shapes (optionally checked against ``arch``)."""
    w = _need(sd, "x_embedder.proj.weight", where)
    hidden, in_ch, patch = w.shape[0], w.shape[1], w.shape[2]
    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    n_patches = _need(sd, "pos_embed", where).shape[1]
    grid = int(round(n_patches**0.5))
    if grid * grid != n_patches:
        raise UserError(f"{where}: pos_embed has {n_patches} positions, not a square grid")
    out_ch = _need(sd, "final_layer.linear.weight", where).shape[0] // (patch * patch)
    if out_ch not in (in_ch, 2 * in_ch):
        raise UserError(f"{where}: output has {out_ch} channels for {in_ch} input channels (expected C or 2C)")
    rows = _need(sd, "y_embedder.embedding_table.weight", where).shape[0]
    mlp_hidden = _need(sd, "blocks.0.mlp.fc1.weight", where).shape[0]
    cfg = DiTConfig(
        input_size=grid * patch,
        patch_size=patch,
        in_channels=in_ch,
        hidden_size=hidden,
        depth=depth,
        num_heads=_HEADS_BY_WIDTH.get(hidden, max(1, hidden // 64)),
        mlp_ratio=mlp_hidden / hidden,
        num_classes=rows - 1,
        learn_sigma=out_ch == 2 * in_ch,
        class_dropout=True,
        freq_dim=_need(sd, "t_embedder.mlp.0.weight", where).shape[1],
    )
    if arch is not None:
        try:
            want = DiTConfig.from_arch(arch)
        except ValueError as e:
            raise UserError(f"{where}: {e}") from None
        got = (cfg.depth, cfg.hidden_size, cfg.patch_size)
        if (want.depth, want.hidden_size, want.patch_size) != got:
            raise UserError(
                f"{where}: arch {arch} expects depth/width/patch {want.depth}/{want.hidden_size}/"
                f"{want.patch_size}, the checkpoint has {got[0]}/{got[1]}/{got[2]}"
            )
        cfg.num_heads = want.num_heads
    return cfg


def diffusers_config(conf: dict) -> DiTConfig:
    heads, head_dim = conf.get("num_attention_heads", 16), conf.get("attention_head_dim", 72)
    in_ch = conf.get("in_channels", 4)
    out_ch = conf.get("out_channels") or in_ch
    return DiTConfig(
        input_size=conf.get("sample_size", 32),
        patch_size=conf.get("patch_size", 2),
        in_channels=in_ch,
        hidden_size=heads * head_dim,
        depth=conf.get("num_layers", 28),
        num_heads=heads,
        num_classes=conf.get("num_embeds_ada_norm", 1000),
        learn_sigma=out_ch == 2 * in_ch,
        class_dropout=True,
        time_freq_shift=1,
        mlp_norm_eps=conf.get("norm_eps", 1e-5),
    )


def from_diffusers_state_dict(sd: dict[str, torch.Tensor], cfg: DiTConfig, where: str) -> dict[str, torch.Tensor]:
    """diffusers DiTTransformer2DModel tensors -> our (official) names."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return _need(sd, key, where)

    def linear(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = take(f"{src}.weight")
        out[f"{dst}.bias"] = take(f"{src}.bias")

    linear("pos_embed.proj", "x_embedder.proj")
    # diffusers does not store the fixed position table; it is the same sin-cos table as ours.
    out["pos_embed"] = sincos_pos_embed_2d(cfg.hidden_size, cfg.input_size // cfg.patch_size)[None]
    emb0 = "transformer_blocks.0.norm1.emb"
    linear(f"{emb0}.timestep_embedder.linear_1", "t_embedder.mlp.0")
    linear(f"{emb0}.timestep_embedder.linear_2", "t_embedder.mlp.2")
    out["y_embedder.embedding_table.weight"] = take(f"{emb0}.class_embedder.embedding_table.weight")
    for i in range(cfg.depth):
        src, dst = f"transformer_blocks.{i}", f"blocks.{i}"
        if i > 0:  # the duplicated embedders must equal block 0's, or one copy cannot represent them
            for part in ("timestep_embedder.linear_1", "timestep_embedder.linear_2", "class_embedder.embedding_table"):
                for p in ("weight", "bias"):
                    k = f"{src}.norm1.emb.{part}.{p}"
                    if k in sd:
                        used.add(k)
                        if not torch.equal(sd[k], sd[f"{emb0}.{part}.{p}"]):
                            raise UserError(
                                f"{where}: block {i} has its own {part} weights; this loader needs the "
                                "per-block timestep/label embedders to be identical copies"
                            )
        linear(f"{src}.norm1.linear", f"{dst}.adaLN_modulation.1")
        for p in ("weight", "bias"):
            out[f"{dst}.attn.qkv.{p}"] = torch.cat([take(f"{src}.attn1.to_{n}.{p}") for n in "qkv"], dim=0)
        linear(f"{src}.attn1.to_out.0", f"{dst}.attn.proj")
        linear(f"{src}.ff.net.0.proj", f"{dst}.mlp.fc1")
        linear(f"{src}.ff.net.2", f"{dst}.mlp.fc2")
    linear("proj_out_1", "final_layer.adaLN_modulation.1")
    linear("proj_out_2", "final_layer.linear")
    extra = sorted(k for k in sd if k not in used and not k.endswith("pos_embed.pos_embed"))
    if extra:
        raise UserError(f"{where}: unexpected tensors for a DiT with depth {cfg.depth}: {', '.join(extra[:3])}")
    return out
