"""Load denoisers and VAEs from local paths, whatever their format.

Formats (detected from what is on disk, never downloaded):
  1. official facebookresearch/DiT ``.pt`` (plain state dict, or a train.py dict with ema/model);
  2. a diffusers ``DiTTransformer2DModel`` folder (or a pipeline folder with ``transformer/``);
  3. a diffusers class-conditional ``UNet2DModel`` folder (or a pipeline folder with ``unet/``);
  4. this project's ``.safetensors`` with its JSON config in the file's metadata.
Pickles are read with ``weights_only=True``: a checkpoint that needs code execution is refused.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import UserError
from .convert import diffusers_config, from_diffusers_state_dict, infer_official_config
from .dit import DiT, DiTConfig

OUR_FORMAT = "igds-fast/denoiser-v1"


def denoiser_shape(denoiser: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) of the space a denoiser works in: the shape of one sample everywhere in the package."""
    size = int(denoiser.input_size)
    return (int(denoiser.in_channels), size, size)


class UNetDenoiser(nn.Module):
    """A diffusers class-conditional ``UNet2DModel`` behind the ``forward(x, t, y)`` interface.

    Its last class embedding is the null class for classifier-free guidance (DiT's convention),
    so ``num_classes = num_class_embeds - 1``.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        conf = unet.config
        if not conf.get("num_class_embeds"):
            raise UserError("UNet2DModel has no class embedding (num_class_embeds): it is not class-conditional")
        self.num_classes = int(conf["num_class_embeds"]) - 1
        self.in_channels = int(conf["in_channels"])
        self.input_size = int(conf["sample_size"] if isinstance(conf["sample_size"], int) else conf["sample_size"][0])
        self.learn_sigma = int(conf["out_channels"]) == 2 * self.in_channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, class_labels=y).sample


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        # argparse.Namespace holds train.py's arguments: plain data, safe to allow.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is many lines of advice; the offending global is what names the problem.
        if m := re.search(r"Unsupported global: GLOBAL (\S+)", str(e)):
            raise UserError(
                f"{path}: refusing a checkpoint that needs code execution to load (it pickles {m.group(1)}); "
                "save a plain state dict or safetensors instead"
            ) from None
        detail = (str(e).split("WeightsUnpickler error:")[-1].strip().splitlines() or ["bad pickle"])[0]
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({detail[:160]})") from None
    except Exception as e:  # corrupt bytes raise any of RuntimeError, EOFError, KeyError, ValueError, ...
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        if not (isinstance(e, (RuntimeError, OSError)) and first):
            first = f"empty, truncated or corrupt file: {type(e).__name__} {first}".strip()
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    if isinstance(obj, dict) and ("ema" in obj or "model" in obj):
        obj = obj.get("ema") or obj["model"]  # train.py checkpoints: the EMA weights sample best
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _build(model: nn.Module, sd: dict[str, torch.Tensor], where: str) -> nn.Module:
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}")
        raise UserError(f"{where}: keys do not match a {type(model).__name__} ({'; '.join(parts)})")
    for k, v in sd.items():
        if own[k].shape != v.shape:
            raise UserError(f"{where}: tensor '{k}' has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    return model.eval()


def _diffusers_folder(path: Path) -> tuple[Path, dict]:
    if (path / "model_index.json").exists():  # a whole pipeline: take its denoiser
        for sub in ("transformer", "unet"):
            if (path / sub / "config.json").exists():
                return path / sub, _read_json(path / sub / "config.json")
        raise UserError(f"{path}: pipeline folder without transformer/ or unet/")
    return path, _read_json(path / "config.json")


def _diffusers_weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / name).exists():
            return _load_state_dict(folder / name)
    raise UserError(f"{folder}: no diffusion_pytorch_model.safetensors/.bin weights found")


def load_denoiser(path: str | Path, arch: str | None = None, num_classes: int | None = None) -> nn.Module:
    """Load a class-conditional denoiser; ``forward(x, t, y)`` returns the raw model output."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"denoiser '{path}' does not exist (weights load from local paths only)")
    where = str(path)
    if path.is_dir():
        folder, conf = _diffusers_folder(path)
        cls = conf.get("_class_name", "")
        if cls in ("DiTTransformer2DModel", "Transformer2DModel"):
            cfg = diffusers_config(conf)
            sd = from_diffusers_state_dict(_diffusers_weights(folder), cfg, where)  # errors before building
            model: nn.Module = _build(DiT(cfg), sd, where)
        elif cls == "UNet2DModel":
            try:
                from diffusers import UNet2DModel
            except ImportError:
                raise UserError("loading a UNet2DModel needs diffusers: pip install 'igds-fast[diffusers]'") from None
            model = UNetDenoiser(UNet2DModel.from_pretrained(str(folder), local_files_only=True)).eval()
        else:
            raise UserError(
                f"{where}: unsupported diffusers model class '{cls}' (DiTTransformer2DModel or UNet2DModel)"
            )
    elif path.suffix == ".safetensors" and _our_config(path) is not None:
        cfg = DiTConfig(**_our_config(path))
        model = _build(DiT(cfg), _load_state_dict(path), where)
    else:
        sd = _load_state_dict(path)
        model = _build(DiT(infer_official_config(sd, arch, where)), sd, where)
    if arch is not None and isinstance(model, DiT) and path.is_dir():
        infer_official_config(model.state_dict(), arch, where)  # same shape check for diffusers folders
    if num_classes is not None and model.num_classes != num_classes:
        raise UserError(f"{where}: the model has {model.num_classes} classes, expected {num_classes}")
    return model


def _our_config(path: Path) -> dict | None:
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get("format") != OUR_FORMAT:
        return None
    return json.loads(meta["config"])


def save_denoiser(model: DiT, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write our format: weights + the JSON config inside one safetensors file."""
    path = Path(path)
    meta = {"format": OUR_FORMAT, "config": json.dumps(model.config.to_dict())} | (extra or {})
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
    tmp.replace(path)
    return path
