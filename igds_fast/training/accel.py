"""What train-dit and train-critics share on a GPU: the forward pass's autocast dtype and torch.compile."""

from __future__ import annotations

import torch

from ..errors import UserError

PRECISIONS = ("auto", "fp32", "bf16")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the forward pass (None: plain fp32). ``auto``: bf16 on CUDA, fp32 elsewhere
    (CPUs without bf16 matrix units run bf16 slower than fp32). Losses are computed in fp32."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown --precision '{precision}': use {', '.join(PRECISIONS)}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def compiled_forward(model: torch.nn.Module, enabled: bool | None, device: torch.device) -> torch.nn.Module:
    """``torch.compile(model)`` when asked (None: on CUDA only). It shares the model's parameters, so
    the optimizer, EMA and checkpoints keep using ``model`` itself (no ``_orig_mod.`` keys)."""
    if enabled or (enabled is None and device.type == "cuda"):
        return torch.compile(model)
    return model
