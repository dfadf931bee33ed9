"""The Stable Diffusion VAE (``AutoencoderKL``) written out in plain PyTorch, without diffusers.

Module and parameter names are exactly diffusers' ``AutoencoderKL`` state-dict keys, so a diffusers
folder loads with ``strict=True``; a single file in the original CompVis/ldm layout (e.g.
``vae-ft-mse-840000-ema-pruned.safetensors``) loads after renaming its keys. Only what the SD VAEs
use is implemented: ``DownEncoderBlock2D``/``UpDecoderBlock2D``, SiLU, GroupNorm, a one-head
attention in the mid block.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

EPS = 1e-6  # every GroupNorm in the SD VAE uses eps 1e-6 (not PyTorch's 1e-5)
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


@dataclass(frozen=True)
class AutoencoderKLConfig:
    """The config.json fields that shape the network (others, e.g. force_upcast, are ignored)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 32
    scaling_factor: float = 0.18215
    mid_block_add_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if not self.block_out_channels or bad:
            raise UserError(
                f"AutoencoderKL block_out_channels {list(self.block_out_channels)} must be non-empty "
                f"and divisible by norm_num_groups {self.norm_num_groups}"
            )

    @classmethod
    def from_dict(cls, conf: dict[str, Any]) -> AutoencoderKLConfig:
        """Read a diffusers config.json dict; refuse block types and activations we do not implement."""
        n = len(conf.get("block_out_channels", cls.block_out_channels))
        checks = [
            ("down_block_types", ["DownEncoderBlock2D"] * n),
            ("up_block_types", ["UpDecoderBlock2D"] * n),
            ("act_fn", "silu"),
        ]
        for key, want in checks:
            got = conf.get(key, want)
            if (list(got) if isinstance(got, (list, tuple)) else got) != want:
                raise UserError(f"AutoencoderKL config {key}={got} is not supported (only {want})")
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in conf.items() if k in known and v is not None}
        return cls(**kw)

    def to_diffusers_dict(self) -> dict[str, Any]:
        """A config.json that diffusers' ``AutoencoderKL.from_pretrained`` also reads."""
        n = len(self.block_out_channels)
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKL",
            "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n,
            "act_fn": "silu",
            "force_upcast": True,
            **d,
        }


@dataclass
class DiagonalGaussian:
    """The posterior q(z|x): mean and log-variance (clamped to [-30, 20] as diffusers does)."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, summed over latent elements."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


def _norm(groups: int, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=EPS)


class ResnetBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = _norm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    """One-head self-attention over the H*W positions, with a residual (diffusers' VAE mid-block)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = _norm(groups, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # key "to_out.0", as in diffusers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.group_norm(x).flatten(2).transpose(1, 2)  # B, HW, C
        q, k, v = (proj(t).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))  # B, 1 head, HW, C
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        return x + self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)


class MidBlock(nn.Module):
    """resnet -> attention -> resnet (the attention is optional: ``mid_block_add_attention``)."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.attentions = nn.ModuleList([Attention(channels, groups)] if attention else [])
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Downsample2D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # asymmetric padding (right/bottom only), as ldm and diffusers do: same sampling grid as their weights
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EncoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(cin if i == 0 else cout, cout, groups) for i in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample2D(cout)] if downsample else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in (*self.resnets, *self.downsamplers):
            x = m(x)
        return x


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(cin if i == 0 else cout, cout, groups) for i in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(cout)] if upsample else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in (*self.resnets, *self.upsamplers):
            x = m(x)
        return x


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderKLConfig):
        super().__init__()
        ch, g, n = cfg.block_out_channels, cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            EncoderBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, downsample=i < n - 1) for i in range(n)
        )
        self.mid_block = MidBlock(ch[-1], g, cfg.mid_block_add_attention)
        self.conv_norm_out = _norm(g, ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)  # mean and logvar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderKLConfig):
        super().__init__()
        ch, g, n = cfg.block_out_channels[::-1], cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        # lowest resolution first; one more resnet per block than the encoder, as in diffusers/ldm
        self.up_blocks = nn.ModuleList(
            DecoderBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, g, upsample=i < n - 1) for i in range(n)
        )
        self.mid_block = MidBlock(ch[0], g, cfg.mid_block_add_attention)  # registered after, as diffusers does
        self.conv_norm_out = _norm(g, ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    """Images in [-1, 1] <-> unscaled latents (multiply by ``config.scaling_factor`` for a denoiser)."""

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        self.config = config
        c = config.latent_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(c, c, 1) if config.use_post_quant_conv else None

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def encode(self, images: torch.Tensor) -> DiagonalGaussian:
        moments = self.encoder(images)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = moments.chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar.clamp(-30.0, 20.0))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        """Write a diffusers folder: config.json + diffusion_pytorch_model.safetensors."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config.to_diffusers_dict(), indent=2) + "\n")
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.state_dict().items()}
        # the config rides along in the metadata too, so the file alone still loads (see file_config)
        save_file(
            state, str(folder / WEIGHT_FILES[0]), metadata={"format": "pt", "config": json.dumps(asdict(self.config))}
        )
        return folder


# ---- loading -------------------------------------------------------------------------------------

_LDM_PREFIXES = ("first_stage_model.", "vae.")  # the VAE inside a full SD / ldm checkpoint
_LDM_IGNORED = ("loss.", "model_ema.")  # training-only parts some ldm VAE checkpoints keep
_DEPRECATED_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}  # diffusers < 0.14
_LDM_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _ldm_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename CompVis/ldm VAE keys to diffusers' (ldm stores decoder levels highest-resolution first)."""
    levels = {int(m.group(1)) for k in state if (m := re.match(r"decoder\.up\.(\d+)\.", k))}
    n_up = max(levels) + 1 if levels else 0
    out = {}
    for key, value in state.items():
        new = key
        new = re.sub(
            r"^(encoder|decoder)\.mid\.block_(\d)\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.", new
        )
        if m := re.match(r"^(encoder|decoder)\.mid\.attn_1\.(\w+)\.(weight|bias)$", new):
            new = f"{m[1]}.mid_block.attentions.0.{_LDM_ATTN.get(m[2], m[2])}.{m[3]}"
            if value.dim() > 2:  # ldm's q/k/v/proj_out are 1x1 convs; ours are linears
                value = value.reshape(value.shape[0], value.shape[1])
        new = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets.", new)
        new = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", new)
        new = re.sub(
            r"^decoder\.up\.(\d+)\.block\.", lambda m: f"decoder.up_blocks.{n_up - 1 - int(m[1])}.resnets.", new
        )
        new = re.sub(
            r"^decoder\.up\.(\d+)\.upsample\.", lambda m: f"decoder.up_blocks.{n_up - 1 - int(m[1])}.upsamplers.0.", new
        )
        new = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", new)
        out[new.replace(".nin_shortcut.", ".conv_shortcut.")] = value
    return out


def to_diffusers_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any supported AutoencoderKL state dict (diffusers, old diffusers, ldm) -> diffusers keys."""
    for prefix in _LDM_PREFIXES:
        if any(k.startswith(prefix + "encoder.") for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            break
    state = {k: v for k, v in state.items() if not k.startswith(_LDM_IGNORED)}
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in state):
        pattern = re.compile(r"\.attentions\.0\.(query|key|value|proj_attn)\.")
        return {pattern.sub(lambda m: f".attentions.0.{_DEPRECATED_ATTN[m[1]]}.", k): v for k, v in state.items()}
    if any(k.startswith(("encoder.down.", "decoder.up.")) for k in state):
        return _ldm_to_diffusers(state)
    first = next(iter(state), "(no tensors)")
    raise UserError(f"neither diffusers nor ldm AutoencoderKL keys (first key '{first}')")


def infer_config(state: dict[str, torch.Tensor], **overrides: Any) -> AutoencoderKLConfig:
    """The architecture from tensor shapes of a diffusers-keyed state dict (a single file has no config).

    GroupNorm's group count leaves no trace in the shapes: ldm always uses 32, so that is the default
    (a file our ``save_pretrained`` wrote carries its own config in its metadata instead)."""
    try:
        n = len({int(m[1]) for k in state if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
        layers = len({int(m[1]) for k in state if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k))})
        kw: dict[str, Any] = dict(
            in_channels=state["encoder.conv_in.weight"].shape[1],
            out_channels=state["decoder.conv_out.weight"].shape[0],
            block_out_channels=tuple(
                state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(n)
            ),
            layers_per_block=layers,
            latent_channels=state["decoder.conv_in.weight"].shape[1],
            mid_block_add_attention="encoder.mid_block.attentions.0.to_q.weight" in state,
            use_quant_conv="quant_conv.weight" in state,
            use_post_quant_conv="post_quant_conv.weight" in state,
        )
    except KeyError as e:
        raise UserError(f"AutoencoderKL weights lack {e.args[0]}: cannot infer the architecture") from None
    kw.update(overrides)
    return AutoencoderKLConfig(**kw)


def file_config(path: Path) -> AutoencoderKLConfig | None:
    """The config our ``save_pretrained`` stores in a safetensors file's metadata, if any."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            text = (f.metadata() or {}).get("config")
        return AutoencoderKLConfig(**json.loads(text)) if text else None
    except Exception:  # a damaged file fails with a clear message in read_state_dict instead
        return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A .safetensors file, or a .bin/.pt/.ckpt read with ``weights_only=True`` (no pickled code runs)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch.load raise many types for a damaged file
        raise UserError(f"cannot read VAE weights '{path}': {str(e).splitlines()[0][:200]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # an ldm .ckpt
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"VAE weights '{path}' hold a {type(state).__name__}, not a state dict")
    return state


def build(config: AutoencoderKLConfig, state: dict[str, torch.Tensor], where: Path) -> AutoencoderKL:
    """The module with ``state`` loaded strictly; a mismatch names its first key."""
    model = AutoencoderKL(config)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        kind, keys = ("missing", missing) if missing else ("unexpected", unexpected)
        raise UserError(f"VAE '{where}': {len(keys)} {kind} key(s), first '{keys[0]}' (config does not match weights)")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise UserError(
                f"VAE '{where}': '{k}' has shape {tuple(v.shape)}, the config expects {tuple(own[k].shape)}"
            )
    model.load_state_dict(state, strict=True)  # copies into float32 parameters whatever the stored dtype
    return model.eval()


def load_autoencoder_kl(path: str | Path) -> AutoencoderKL:
    """A diffusers AutoencoderKL folder, a pipeline folder (``vae/``), or a single weights file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"VAE '{path}' does not exist")
    if path.is_file():
        state = to_diffusers_keys(read_state_dict(path))
        config = file_config(path) or infer_config(state)
        return build(config, state, path)
    if (path / "vae" / "config.json").exists():  # a pipeline folder
        path = path / "vae"
    if not (path / "config.json").exists():
        raise UserError(f"VAE '{path}' is not a diffusers AutoencoderKL folder (no config.json); or pass --vae none")
    try:
        conf = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path / 'config.json'}: {e}") from None
    if not isinstance(conf, dict):
        raise UserError(f"{path / 'config.json'} is not a JSON object")
    if conf.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise UserError(f"VAE '{path}' is a {conf['_class_name']}, not an AutoencoderKL")
    weights = next((path / f for f in WEIGHT_FILES if (path / f).exists()), None)
    if weights is None:
        raise UserError(f"VAE folder '{path}' has no {' or '.join(WEIGHT_FILES)}")
    try:
        config = AutoencoderKLConfig.from_dict(conf)
    except TypeError as e:
        raise UserError(f"bad AutoencoderKL config in {path}: {e}") from None
    return build(config, to_diffusers_keys(read_state_dict(weights)), weights)
