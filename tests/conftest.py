"""Shared test helpers: tiny randomly initialised models and a relative-error check."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from igds_fast.models.dit import DiT, DiTConfig, sincos_pos_embed_2d

# The shared real data (Imagenette at 64 px); CI sets IGDS_DATA, the default is ../shared/data.
DATA_ROOT = Path(os.environ.get("IGDS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(autouse=True, scope="session")
def engine_key_home(tmp_path_factory: pytest.TempPathFactory):
    """Engines signed in tests use a key under a temporary config folder, never the user's own key
    (a test that needs another key sets IGDS_ENGINE_KEY or XDG_CONFIG_HOME itself)."""
    before = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))
    yield
    if before is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = before


def randomize_(module: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
    """Overwrite every parameter (the zero-initialised adaLN/output layers too) with fresh
    N(0, 1/fan_in) weights and N(0, 0.1^2) biases/vectors, so no code path is trivially zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * scale / fan_in**0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 * scale)
    return module


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64; fails (not passes) on NaN/inf or an all-zero reference."""
    out = np.asarray(out.detach().cpu().double() if isinstance(out, torch.Tensor) else out, dtype=np.float64)
    ref = np.asarray(ref.detach().cpu().double() if isinstance(ref, torch.Tensor) else ref, dtype=np.float64)
    assert out.shape == ref.shape, f"shape {out.shape} != reference shape {ref.shape}"
    assert np.isfinite(out).all(), "output has NaN/inf"
    assert np.isfinite(ref).all(), "reference has NaN/inf"
    denom = np.linalg.norm(ref)
    assert denom > 0, "reference is all zeros: the comparison would prove nothing"
    return float(np.linalg.norm(out - ref) / denom)


@pytest.fixture
def tiny_dit():
    """Factory: a small random DiT (default 8x8x4 input, 2 blocks of width 64, 10 classes).

    Width 64 with 1 head keeps the official-format head inference (width // 64) exact."""

    def make(seed: int = 0, **overrides) -> DiT:
        kw = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=1, num_classes=10)
        kw.update(overrides)
        model = DiT(DiTConfig(**kw))
        randomize_(model, seed)
        with torch.no_grad():  # the fixed sin-cos table is not a weight: restore it
            model.pos_embed.copy_(sincos_pos_embed_2d(kw["hidden_size"], kw["input_size"] // kw["patch_size"])[None])
        return model.eval()

    return make


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP spin contention
    (ms per op instead of us). Use with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save_tiny_pixel_models(root: Path, wnids: list[str]) -> dict[str, Path]:
    """A tiny pixel-space DiT (8 px) naming ``wnids`` and a random critic for all of them, saved in ``root``:
    the models of the distill job tests (seconds per job on one thread)."""
    from igds_fast.models.critics import CriticConfig, NoiseCritic, save_critic
    from igds_fast.models.loading import save_denoiser

    k = len(wnids)
    dit = DiT(
        DiTConfig(
            input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=k, wnids=wnids
        )
    )
    randomize_(dit, 0, scale=0.5)
    save_denoiser(dit, root / "dit.safetensors")
    config = CriticConfig(
        in_channels=3,
        input_size=8,
        patch_size=4,
        width=16,
        depth=1,
        heads=2,
        feat_dim=8,
        class_ids=list(range(k)),
        wnids=wnids,
    )
    critic = NoiseCritic(config)
    randomize_(critic, 1)
    save_critic(critic, root / "critic.safetensors")
    return {"dit": root / "dit.safetensors", "critic": root / "critic.safetensors"}


def run_cli_in_process(*args: object) -> tuple[int, str, str]:
    """``igds-fast ARGS`` through ``igds_fast.cli.main`` (its one-line errors and exit codes) in this
    interpreter: (exit code, stdout, stderr)."""
    import contextlib
    import io
    import sys

    from igds_fast import cli as cli_module

    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["igds-fast", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli_module.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()
