"""Trace the guided step (input-gradient included) into one graph and write it as ONNX.

torch.export cannot trace ``torch.func.grad``; what works is ``make_fx`` with the core
ATen decompositions, which runs the GuidedStep once and records the critic's backward pass as
ordinary forward ops, then ``torch.onnx.export(dynamo=True)`` of that graph. Shapes are static.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..guidance.step import step_index
from ..models.vae import decode_images
from .io import PLAIN_INPUTS, STEP_INPUTS, STEP_OUTPUTS

DEFAULT_OPSET = 18
DOUBLE = 11  # onnx.TensorProto.DOUBLE


# What the denoiser's attention becomes in a traced graph, per backend: ONNX graphs get the
# spelled-out softmax(QK^T)V (opset 18 has no attention op every runtime takes); torch.compile and
# AOTInductor keep the fused scaled_dot_product_attention kernel, because the denoiser is never
# differentiated in the guided step (only the critic's input-gradient is, and the critic spells
# its attention out itself).
ATTENTION = ("math", "sdpa")


@contextlib.contextmanager
def denoiser_attention(step: nn.Module, impl: str) -> Iterator[None]:
    """The denoiser's attention set to ``impl`` ("math" or "sdpa") while tracing, restored afterwards."""
    if impl not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {impl!r}")
    den = getattr(step, "denoiser", None)
    blocks = getattr(den, "blocks", None)
    saved = [b.attn.impl for b in blocks] if blocks is not None and hasattr(den, "set_attention") else None
    if saved is not None:
        den.set_attention(impl)
    try:
        yield
    finally:
        if saved is not None:
            for blk, impl_was in zip(blocks, saved, strict=True):
                blk.attn.impl = impl_was


def math_attention(step: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Spelled-out attention while tracing (the form every ONNX runtime takes)."""
    return denoiser_attention(step, "math")


def _is_sdpa(op: Any) -> bool:
    return "scaled_dot_product" in str(op)


def decompositions(keep_sdpa: bool) -> dict[Any, Callable[..., Any]]:
    """Core ATen decompositions; with ``keep_sdpa``, without the ones that spell fused attention out
    (so the graph keeps ``aten._scaled_dot_product_*_attention`` for Inductor to run fused)."""
    from torch._decomp import core_aten_decompositions

    table = core_aten_decompositions()
    table = {k: v for k, v in table.items() if not (keep_sdpa and _is_sdpa(k))}
    table[torch.ops.aten.convolution_backward.default] = _convolution_input_backward
    table[torch.ops.aten.empty_permuted.default] = _empty_as_zeros  # from the decoder's backward
    table[torch.ops.aten.upsample_nearest2d_backward.default] = _upsample_nearest2d_backward
    return table


def _upsample_nearest2d_backward(
    grad_out: torch.Tensor,
    output_size: list[int],
    input_size: list[int],
    scales_h: float | None = None,
    scales_w: float | None = None,
) -> torch.Tensor:
    """Nearest upsampling's input-gradient for whole-number factors (a VAE decoder's 2x): each input
    pixel's gradient is the sum over the block it was copied to."""
    (h, w), (oh, ow) = input_size[2:], output_size
    if oh % h or ow % w:
        raise UserError(f"nearest upsampling {h}x{w} -> {oh}x{ow} is not by a whole factor: no gradient graph for it")
    b, c = grad_out.shape[:2]
    return grad_out.reshape(b, c, h, oh // h, w, ow // w).sum(dim=(3, 5))


def _empty_as_zeros(size: list[int], physical_layout: list[int], **kwargs: Any) -> torch.Tensor:
    """An uninitialised buffer (no ONNX form) as zeros: every element is written before it is read."""
    kwargs.pop("pin_memory", None)
    return torch.zeros(size, **kwargs)


def _convolution_input_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias_sizes: Any,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    transposed: bool,
    output_padding: list[int],
    groups: int,
    output_mask: list[bool],
) -> tuple[torch.Tensor | None, None, None]:
    """A convolution's input-gradient as the transposed convolution (core ATen has no decomposition):
    what ``clip_guard`` needs to differentiate a VAE decoder in the step graph. Weight and bias
    gradients are never asked for there (the step differentiates images, not models)."""
    if transposed or output_mask[1] or output_mask[2]:
        raise UserError("the traced step differentiates a convolution w.r.t. its weights: no ONNX form for that")
    if not output_mask[0]:
        return None, None, None
    k = weight.shape[2:]
    fill = [
        x.shape[2 + d] - ((grad_out.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (k[d] - 1) + 1)
        for d in range(len(k))
    ]
    grad_x = torch.ops.aten.convolution.default(grad_out, weight, None, stride, padding, dilation, True, fill, groups)
    return grad_x, None, None


def sdpa_ops(gm: torch.fx.GraphModule) -> list[str]:
    """The fused-attention ops a traced graph calls (empty for a spelled-out graph)."""
    return sorted({str(n.target) for n in gm.graph.nodes if n.op == "call_function" and _is_sdpa(n.target)})


def trace(fn: Callable[..., Any], args: tuple[torch.Tensor, ...], keep_sdpa: bool = False) -> torch.fx.GraphModule:
    """make_fx with core ATen decompositions: autograd and functorch transforms become plain ops.
    ``keep_sdpa``: fused attention stays one op (for Inductor), instead of its math decomposition."""
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(fn, decomposition_table=decompositions(keep_sdpa))(*args)
    gm.eval()
    leftover = sorted(
        {str(n.target) for n in gm.graph.nodes if n.op == "call_function" and "backward" in str(n.target)}
    )
    if leftover:
        raise UserError(f"the traced step still contains backward ops {leftover[:3]}: they have no ONNX form")
    return gm


def trace_step(step: nn.Module, args: tuple[torch.Tensor, ...], attention: str = "math") -> torch.fx.GraphModule:
    """The GuidedStep itself (forward: eps, critic input-gradient, update) as one FX graph.

    ``attention``: the denoiser's attention in the graph, "math" (ONNX) or "sdpa" (the fused kernel,
    for torch.compile and AOTInductor; the critic's attention is spelled out either way)."""
    step.eval()
    with denoiser_attention(step, attention), torch.no_grad():
        return trace(lambda *a: tuple(step(*a)), args, keep_sdpa=attention == "sdpa")


def trace_plain(step: nn.Module, args: tuple[torch.Tensor, ...], attention: str = "math") -> torch.fx.GraphModule:
    """``GuidedStep.plain`` (the denoiser-only step of the indices outside the window) as one FX graph
    of the step's first four inputs (x, i, y, noise)."""
    step.eval()
    with denoiser_attention(step, attention), torch.no_grad():
        return trace(lambda *a: tuple(step.plain(*a)), args[: len(PLAIN_INPUTS)], keep_sdpa=attention == "sdpa")


def _split_fns(step: nn.Module) -> dict[str, tuple[Callable[..., Any], tuple[str, ...], tuple[str, ...]]]:
    """The step's parts (``GuidedStep.eps`` and ``.guidance_grad``) as graphs of their own, for
    comparing timings and errors part by part (not an engine)."""

    def denoiser_eps(x: torch.Tensor, i: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        eps, var = step.eps(x, step_index(i), y.long())
        return (eps,) if var is None else (eps, var)

    def critic_grad(
        x: torch.Tensor, i: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor
    ):
        return step.guidance_grad(x, step_index(i), y.long(), eps, memory, mask)

    out = {"denoiser_eps": (denoiser_eps, ("x", "i", "y"), ("eps", "var") if step.learn_sigma else ("eps",))}
    if step.critic is not None:
        out["critic_grad"] = (
            critic_grad,
            ("x", "i", "y", "eps", "memory", "memory_mask"),
            ("grad_proto", "grad_div", "feats", "log_q", "h2"),
        )
    return out


def export_graph(
    gm: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    opset: int = DEFAULT_OPSET,
) -> Path:
    if opset < 17:
        raise UserError(f"opset {opset} is too old: LayerNormalization needs opset >= 17")
    with _quiet_exporter():
        prog = torch.onnx.export(
            gm,
            args,
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
        prog.save(str(path))
    check_no_float64(path)
    return path


def export_step(step: nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int = DEFAULT_OPSET) -> Path:
    """The fused guided step as ONE graph: (x, i, y, noise, memory, memory_mask) -> 4 outputs."""
    return export_graph(trace_step(step, args), args, path, STEP_INPUTS, STEP_OUTPUTS, opset)


def export_plain(step: nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int = DEFAULT_OPSET) -> Path:
    """The plain step as a graph of its own: (x, i, y, noise) -> the step's 4 outputs."""
    plain_args = args[: len(PLAIN_INPUTS)]
    return export_graph(trace_plain(step, plain_args), plain_args, path, PLAIN_INPUTS, STEP_OUTPUTS, opset)


def export_split(
    step: nn.Module, args: tuple[torch.Tensor, ...], folder: Path, opset: int = DEFAULT_OPSET
) -> dict[str, str]:
    """denoiser_eps.onnx (x, i, y -> eps[, var]) and, when guided, critic_grad.onnx."""
    by_name = dict(zip(STEP_INPUTS, args, strict=True))
    by_name["eps"] = by_name["noise"]  # any tensor of x's shape stands in for the denoiser's eps
    written = {}
    with math_attention(step), torch.no_grad():
        for name, (fn, ins, outs) in _split_fns(step).items():
            a = tuple(by_name[k] for k in ins)
            export_graph(trace(fn, a), a, folder / f"{name}.onnx", ins, outs, opset)
            written[name] = f"{name}.onnx"
    return written


class _Decode(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return decode_images(self.vae, z)


def export_decoder(vae: nn.Module, latents: torch.Tensor, path: Path, opset: int = DEFAULT_OPSET) -> Path:
    """The VAE decoder (latents -> images in [-1, 1]) for a static batch."""
    with torch.no_grad():
        return export_graph(_Decode(vae).eval(), (latents,), path, ("latents",), ("images",), opset)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter logs progress and onnx_ir notes on every call; keep the CLI output readable."""
    names = ("torch.onnx", "onnxscript", "onnx_ir", "torch.export", "torch._export")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(None), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecations inside torch.export
            yield
    finally:
        for n, lvl in saved.items():
            logging.getLogger(n).setLevel(lvl)


# ---- static checks of an exported graph -------------------------------------------------------


def load_inlined(path: Path) -> Any:
    """The model with its local functions inlined, so op lists show what a runtime really parses."""
    import onnx
    import onnx.inliner

    return onnx.inliner.inline_local_functions(onnx.load(str(path), load_external_data=False))


def op_types(model: Any) -> set[str]:
    """``op_type`` of every node, subgraphs included; non-default domains as ``domain::op``."""
    found: set[str] = set()

    def walk(graph: Any) -> None:
        for node in graph.node:
            found.add(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}")
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return found


def float64_tensors(model: Any) -> list[str]:
    """Names of float64 inputs, outputs, initializers, Constant values and casts to double."""
    g = model.graph
    bad = [v.name for v in list(g.input) + list(g.output) if v.type.tensor_type.elem_type == DOUBLE]
    bad += [t.name for t in g.initializer if t.data_type == DOUBLE]
    for node in g.node:
        if node.op_type == "Constant" and any(a.t.data_type == DOUBLE for a in node.attribute if a.name == "value"):
            bad.append(node.output[0])
        if node.op_type == "Cast" and any(a.name == "to" and a.i == DOUBLE for a in node.attribute):
            bad.append(node.output[0])
    return bad


def check_no_float64(path: Path) -> None:
    bad = float64_tensors(load_inlined(path))
    if bad:
        raise UserError(f"{path.name}: float64 tensors {bad[:3]} (TensorRT and fp16 engines need float32 or lower)")


def trt_supported_ops() -> dict[str, Any]:
    """TensorRT's ONNX operator list (igds_fast/data/trt_onnx_ops.json, with its source)."""
    text = resources.files("igds_fast.data").joinpath("trt_onnx_ops.json").read_text()
    return json.loads(text)


def trt_unsupported_ops(path: Path) -> list[str]:
    """Op types of the graph that TensorRT's ONNX parser does not list as supported."""
    supported = set(trt_supported_ops()["supported"])
    return sorted(op_types(load_inlined(path)) - supported)
