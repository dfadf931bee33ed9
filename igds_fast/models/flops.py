"""FLOP counts of the models, from their configs (formulas) or counted by torch on the meta device, and
the activation memory of the decoder's input-gradient (the clip guard's), counted the same way."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .dit import DiTConfig
from .vae import decode_unclipped


def dit_forward_flops(c: DiTConfig) -> int:
    """FLOPs (2 per multiply-add) of one DiT forward for one image: every linear layer, the two
    attention matmuls and the scaling of the attention scores; norms, activations, softmax and
    the label lookup are left out (< 0.5%).

    N = (input/patch)^2 tokens, hidden d, MLP width m = 4d, depth L, h heads:
        MACs = L (N (4d^2 + 2dm) + 2 N^2 d + h N^2 + 6d^2)   qkv, proj, MLP, QK^T, AV, score scale, adaLN
             + N C p^2 d + N d p^2 C_out + 2d^2               patchify, final linear and adaLN
             + 256 d + d^2                                    timestep MLP
    DiT-XL/2 at 256 px (N = 256, d = 1152, L = 28, h = 16): 118.65 GMAC = 237.3 GFLOP (the DiT
    paper's "119 Gflops"); without the score scaling it would be 237.24.
    """
    n = (c.input_size // c.patch_size) ** 2
    d, m = c.hidden_size, int(c.hidden_size * c.mlp_ratio)
    block = n * (4 * d * d + 2 * d * m) + 2 * n * n * d + c.num_heads * n * n + 6 * d * d
    head = n * c.in_channels * c.patch_size**2 * d + n * d * c.patch_size**2 * c.out_channels + 2 * d * d
    return 2 * (c.depth * block + head + c.freq_dim * d + d * d)


def counted_flops(fn: Callable[[], Any]) -> int:
    """FLOPs torch's own counter sees in ``fn`` (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def meta_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers live on the meta device (shapes and dtypes, no
    storage): counting on it neither computes nor duplicates the weights (on a GPU, not even briefly)."""
    memo: dict[int, Any] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(module, memo)


def decoder_flops(codec: nn.Module, shape: tuple[int, int, int]) -> int:
    """Per-image decode FLOPs, counted on the meta device (no real compute)."""
    if not any(True for _ in codec.parameters()):
        return 0
    meta = meta_copy(codec)
    z = torch.zeros(1, *shape, device="meta")
    try:
        return counted_flops(lambda: meta.decode(z))
    except Exception:  # some diffusers ops refuse meta tensors: count for real on one image
        return counted_flops(lambda: codec.decode(torch.zeros(1, *shape)))


def decoder_grad_bytes(codec: nn.Module, shape: tuple[int, int, int]) -> int:
    """Per-image bytes of the activations that the decoder's input-gradient keeps for its backward
    (the clip guard's, at each guided step), in the codec's weights' dtype: the tensors autograd saves
    while decoding a batch of 2 minus a batch of 1 (weights saved by the ops cancel), counted on the
    meta device (no real compute). A lower bound of the peak: the backward's own buffers come on top."""
    if not any(True for _ in codec.parameters()):
        return 0  # pixel space: nothing to differentiate
    meta = meta_copy(codec)

    def saved(batch: int) -> int:
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            s = t.untyped_storage()
            storages[s._cdata] = s.nbytes()  # a tensor saved by several ops counts once
            return t

        z = torch.zeros(batch, *shape, device="meta", requires_grad=True)
        with (
            torch.enable_grad(),
            sdpa_kernel(SDPBackend.MATH),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            out = decode_unclipped(meta, z)
        del out
        return sum(storages.values())

    return saved(2) - saved(1)
