"""One contract, every backend: the same test body runs each engine available on this machine.

What an engine promises (``sampling.engine.StepEngine``): its device, static shapes and schedule
length; outputs of the right shapes and dtypes on its device; parity with the eager GuidedStep
(fp32: ||out - ref|| / ||ref|| < 1e-4 on fresh random inputs, NaN never passes); inputs given on
another device or in other dtypes are moved and cast by the engine itself; a batch or step index
it was not built for is refused with a one-line error. Backends that cannot run here are skipped
with the table's own reason (``Backend.unavailable``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from igds_fast.backends.build import ExportSpec, example_labels, export_engine
from igds_fast.backends.eager import EagerEngine
from igds_fast.backends.io import STEP_OUTPUTS, StepShapes, random_inputs, rel_error
from igds_fast.backends.registry import BACKENDS, load_engine
from igds_fast.config import ADDED_STEP_FIELDS, StepConfig
from igds_fast.errors import UserError
from igds_fast.models.critics import CriticConfig, NoiseCritic, save_critic
from igds_fast.models.dit import DiT, DiTConfig
from igds_fast.models.loading import save_denoiser
from igds_fast.sampling.engine import StepEngine, plain_path
from igds_fast.sampling.pipeline import build_pipeline

BATCH, MEMORY, STEPS = 3, 4, 4
CFG = StepConfig(steps=str(STEPS), beta=0.5, guidance_scale=10.0, window_lo=100, window_hi=750, clip_guard=0.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("contract")
    torch.manual_seed(0)
    dit = DiT(DiTConfig(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=6))
    torch.nn.init.normal_(dit.final_layer.linear.weight, std=0.05)
    critic = NoiseCritic(
        CriticConfig(
            in_channels=3, input_size=8, patch_size=2, width=32, depth=1, heads=2, feat_dim=8, class_ids=[0, 2, 4]
        )
    )
    for blk in critic.blocks:
        torch.nn.init.normal_(blk.ada.weight, std=0.05)
    return {
        "denoiser": save_denoiser(dit, d / "dit.safetensors"),
        "critics": save_critic(critic, d / "critic.safetensors"),
    }


@pytest.fixture(scope="module")
def eager_step(models):
    return build_pipeline(models["denoiser"], "none", models["critics"], CFG).step


def make_engine(name: str, cfg: StepConfig, models: dict[str, Path], tmp: pytest.TempPathFactory) -> StepEngine:
    reason = BACKENDS[name].unavailable()
    if reason:
        pytest.skip(f"{name}: {reason}")
    if name == "eager":
        pipe = build_pipeline(models["denoiser"], "none", models["critics"], cfg)
        return EagerEngine(pipe.step, pipe.vae, memory_size=MEMORY)
    out = tmp.mktemp(name) / "engine"
    spec = ExportSpec(models["denoiser"], "none", models["critics"], cfg, BATCH, MEMORY, "fp32", name, out)
    return load_engine(export_engine(spec))


@pytest.fixture(scope="module", params=list(BACKENDS))
def engine(request, models, tmp_path_factory) -> StepEngine:
    return make_engine(request.param, CFG, models, tmp_path_factory)


def inputs(engine: StepEngine, seed: int, i: int | None = None) -> tuple[torch.Tensor, ...]:
    shapes = StepShapes(engine.batch_size or BATCH, *engine.shape, engine.memory_size, engine.feat_dim)
    return random_inputs(shapes, engine.num_steps, [0, 2, 4], seed=seed, i=i)


def test_engine_describes_itself(engine):
    assert engine.backend in BACKENDS
    assert isinstance(engine.device, torch.device) and engine.device.type == "cpu"
    assert engine.shape == (3, 8, 8) and engine.num_steps == STEPS and engine.feat_dim == 8
    assert engine.batch_size in (None, BATCH) and engine.memory_size == MEMORY
    assert (engine.id is None) == (engine.backend == "eager")
    assert engine.manifest["step"]["window_lo"] == 100


@pytest.mark.parametrize("i", [STEPS - 1, 1, 0])  # the window [100, 750] guides the middle steps only
def test_outputs_match_eager(engine, eager_step, i):
    args = inputs(engine, seed=10 + i, i=i)
    with torch.no_grad():
        ref = eager_step(*args)
    out = engine.step(*args)
    assert len(out) == len(STEP_OUTPUTS)
    b = args[0].shape[0]
    for name, o, r, shape in zip(STEP_OUTPUTS, out, ref, [(b, 3, 8, 8), (b, 8), (b,), (b,)], strict=True):
        assert tuple(o.shape) == shape and o.dtype == torch.float32 and o.device == engine.device, name
        assert rel_error(o, r) < 1e-4, (name, rel_error(o, r))  # inf (NaN) fails


def test_inputs_of_other_dtypes_and_devices_are_moved(engine, eager_step):
    x, i, y, noise, mem, mask = inputs(engine, seed=3, i=2)
    with torch.no_grad():
        ref = eager_step(x, i, y, noise, mem, mask)
    other = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    moved = (
        x.double().to(other),
        i.long().to(other),
        y.long().to(other),
        noise.double().to(other),
        mem.to(other),
        mask.to(other),
    )
    out = engine.step(*moved)
    assert out[0].device == engine.device
    assert rel_error(out[0], ref[0]) < 1e-4


def test_decode_gives_images_on_the_engine_device(engine):
    x = inputs(engine, seed=4)[0]
    img = engine.decode(x * 2)
    assert tuple(img.shape) == (x.shape[0], 3, 8, 8) and img.device == engine.device
    assert float(img.abs().max()) <= 1.0


def test_wrong_step_index_and_batch_are_refused(engine):
    args = list(inputs(engine, seed=5))
    args[1] = torch.tensor([STEPS], dtype=torch.int32)
    with pytest.raises(UserError, match=f"outside this engine's schedule of {STEPS} steps"):
        engine.step(*args)
    if engine.batch_size is None:
        return  # eager takes any batch
    shapes = StepShapes(BATCH + 1, *engine.shape, engine.memory_size, engine.feat_dim)
    with pytest.raises(UserError, match="built for inputs"):
        engine.step(*random_inputs(shapes, STEPS, example_labels_of(engine), seed=6))


def example_labels_of(engine: StepEngine) -> list[int]:
    return (
        list(engine.manifest.get("labels") or [0, 2, 4]) if engine.backend != "eager" else example_labels(engine.module)
    )


# Step fields added after engines were first exported, each with a value that turns it on.
ADDED_ON = {"clip_guard": 0.5}
UNGUARDED = StepConfig(clip_guard=0.0)


@pytest.mark.parametrize(("field", "on"), ADDED_ON.items())
def test_an_engine_exported_before_a_step_field_existed_reads_as_its_old_behaviour(field, on):
    """A manifest without an added field (exported before the option) serves jobs at the field's old
    value, and is refused, naming the field, for a job that asks for another."""
    from igds_fast.backends.engine_manifest import check_manifest

    old = UNGUARDED.to_dict()
    del old[field]
    manifest = {"step": old}
    check_manifest(manifest, {"step": UNGUARDED.to_dict()})
    was = ADDED_STEP_FIELDS[field]
    with pytest.raises(UserError, match=rf"step\.{field} is {was} in the engine, {on} was asked for"):
        check_manifest(manifest, {"step": StepConfig(**{field: on}).to_dict()})


@pytest.mark.parametrize(("field", "on"), ADDED_ON.items())
def test_cache_keys_tell_an_added_field_apart_and_ignore_its_old_spelling(field, on):
    """The cache key hashes the step's identity: the field on is another engine; the field at its old
    value is the engine a release before the option cached."""
    from igds_fast.config import step_identity
    from igds_fast.jobs.engine_cache import cache_key

    def key(step: StepConfig) -> str:
        return cache_key({"denoiser": "a"}, step, 2, 4, "onnxruntime", "fp32", "cpu")

    assert key(UNGUARDED) != key(StepConfig(**{field: on}))
    old = {k: v for k, v in UNGUARDED.to_dict().items() if k not in ADDED_STEP_FIELDS}
    assert step_identity(UNGUARDED.to_dict()) == old
    assert step_identity(StepConfig(**{field: on}).to_dict())[field] == on


def test_an_engine_manifest_with_a_retired_option_reads_at_its_neutral_value_and_is_refused_otherwise():
    """Engines exported while the step still had the retired options record them; at the value every
    shipped step used they serve today's jobs, at any other value they are refused in one line."""
    from igds_fast.backends.engine_manifest import check_manifest

    recorded = UNGUARDED.to_dict() | {"diversity": "x0", "moment_guard": False}
    check_manifest({"step": recorded}, {"step": UNGUARDED.to_dict()})
    with pytest.raises(UserError, match="moment_guard=True.*no longer has"):
        check_manifest({"step": recorded | {"moment_guard": True}}, {"step": UNGUARDED.to_dict()})


@pytest.fixture(scope="module", params=list(BACKENDS))
def engine_without_range_guard(request, models, tmp_path_factory) -> StepEngine:
    return make_engine(request.param, dataclasses.replace(CFG, range_guard=False), models, tmp_path_factory)


def test_no_engine_has_a_plain_path_under_the_pixel_range_guard(engine):
    """The range guard (on in CFG, a pixel model) edits eps outside the window too: no plain steps, no plain graph."""
    assert plain_path(engine) == (None, frozenset())
    assert "plain" not in engine.manifest.get("graphs", {})


def test_every_engine_runs_the_plain_step_outside_the_window(engine_without_range_guard, models):
    """At the step indices outside the window but index 0, every engine has a plain step (eager: the
    denoiser alone; exported: the plain graph) whose x_{t-1} is the full eager step's: bit-identical
    on eager, fp32 parity (< 1e-4) on an exported graph, on fresh inputs at every such index."""
    engine = engine_without_range_guard
    ref = build_pipeline(
        models["denoiser"], "none", models["critics"], dataclasses.replace(CFG, range_guard=False)
    ).step
    plain, steps = plain_path(engine)
    t = [int(v) for v in ref.tab_timestep]
    assert steps == frozenset(k for k in range(1, STEPS) if not 100 <= t[k] <= 750) and steps
    assert steps == ref.plain_steps
    for k in sorted(steps):
        args = inputs(engine, seed=20 + k, i=k)
        with torch.no_grad():
            want = ref(*args)[0]
        got = plain(*args)[0]
        assert got.shape == want.shape and got.device == engine.device
        if engine.backend == "eager":
            assert torch.equal(got, want)
        else:
            assert rel_error(got, want) < 1e-4, rel_error(got, want)
    if engine.backend != "eager":
        wrong = list(inputs(engine, seed=30))
        wrong[1] = torch.tensor([STEPS], dtype=torch.int32)
        with pytest.raises(UserError, match="outside this engine's schedule"):
            plain(*wrong)
