"""Batches across classes: which samples share a denoiser call, and that sharing changes nothing it
must not (a class's diversity term, the bytes of a set across shards, kills and repairs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from igds_fast.backends.eager import EagerEngine
from igds_fast.backends.io import rel_error
from igds_fast.guidance.step import GuidedStep, StepConfig
from igds_fast.jobs.run import run_job as run_request
from igds_fast.sampling import (
    batch_rows,
    class_groups,
    class_units,
    group_batches,
    memory_rows,
    memory_tensors,
    shard_classes,
)
from igds_fast.sampling.chain import run_batch

from .test_distill import WNIDS, models, request, snapshot  # noqa: F401 (the module's models fixture)
from .test_guidance import random_critic, small_dit

pytestmark = pytest.mark.usefixtures("single_thread")

FOUR = ",".join(WNIDS[:4])


def test_groups_fill_the_batch_with_whole_chunks_of_consecutive_classes():
    wnids = [f"c{k}" for k in range(7)]
    assert class_groups(wnids, ipc=1, batch_size=3) == [["c0", "c1", "c2"], ["c3", "c4", "c5"], ["c6"]]
    assert class_groups(wnids, ipc=10, batch_size=25) == [["c0", "c1"], ["c2", "c3"], ["c4", "c5"], ["c6"]]
    assert class_groups(wnids, ipc=50, batch_size=25) == [[w] for w in wnids]  # a class fills it alone
    batches = group_batches([("a", 0)], ipc=5, batch_size=4)  # chunks of 4: one class a batch, in chunk order
    assert [[(u.wnid, u.start, u.count) for u in b] for b in batches] == [[("a", 0, 4)], [("a", 4, 1)]]
    batches = group_batches([("a", 0), ("b", 1)], ipc=3, batch_size=6)
    assert [[(u.wnid, u.start, u.count) for u in b] for b in batches] == [[("a", 0, 3), ("b", 0, 3)]]
    assert batch_rows(ipc=1, batch_size=50, num_classes=10) == 10  # no padding to 50
    assert batch_rows(ipc=10, batch_size=50, num_classes=10) == 50
    assert memory_rows(ipc=5, batch_size=2) == 4 and memory_rows(ipc=1, batch_size=50) == 0
    # shards take whole groups, and together every class once
    shards = [shard_classes(wnids, k, 2, ipc=1, batch_size=3) for k in range(2)]
    assert shards == [["c0", "c1", "c2", "c6"], ["c3", "c4", "c5"]]
    # a class's units do not depend on the batch size beyond its chunk size
    assert class_units("a", 0, 3, 6) == class_units("a", 0, 3, 3)


def test_a_batch_with_chunks_of_several_classes_has_their_rows_side_by_side():
    memory = [[np.ones((2, 4), np.float32)], [], [2 * np.ones((1, 4), np.float32)]]
    mem, mask = memory_tensors(memory, counts=[2, 1, 2], batch=6, rows=4, feat_dim=4, device="cpu")
    assert mem[:, 0].tolist() == [1, 1, 2, 0]
    want = [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert mask.tolist() == want  # each row sees only its class's memory; padding sees none


def test_a_class_guidance_is_unchanged_by_other_classes_in_its_batch():
    """The prototype and diversity terms of class 3's rows, alone or beside class 5's rows (with class
    5's memory in the batch's memory): the same to float rounding."""
    dit, critic = small_dit(), random_critic()
    step = GuidedStep(dit, StepConfig(steps="10", clip_guard=0.0, window_hi=999), critic)
    g = torch.Generator().manual_seed(7)
    xa, xb = torch.randn(3, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    mem_a, mem_b = torch.randn(2, step.feat_dim, generator=g), torch.randn(3, step.feat_dim, generator=g)
    mem_a, mem_b = mem_a / mem_a.norm(dim=1, keepdim=True), mem_b / mem_b.norm(dim=1, keepdim=True)
    i = torch.tensor([4])
    alone_y = torch.full((3,), 3)
    eps_a, _ = step.eps(xa, i, alone_y)
    alone = step.guidance_grad(xa, i, alone_y, eps_a, mem_a, torch.ones(3, 2))
    x, y = torch.cat([xa, xb]), torch.tensor([3, 3, 3, 5, 5])
    mask = torch.zeros(5, 5)
    mask[:3, :2], mask[3:, 2:] = 1, 1
    eps, _ = step.eps(x, i, y)
    both = step.guidance_grad(x, i, y, eps, torch.cat([mem_a, mem_b]), mask)
    for k, name in enumerate(("g_proto", "g_div", "features", "log q", "diversity")):
        a, b = alone[k], both[k][:3]
        assert torch.isfinite(b).all() and float(a.abs().max()) > 0, name
        assert rel_error(b, a) < 1e-5, name
    # and class 5's memory did reach class 5: its diversity value is not the memoryless one
    assert float(both[4][3:].abs().min()) > 0


def test_ipc_1_over_ten_classes_runs_one_batch_per_step(monkeypatch):
    dit, critic = small_dit(), random_critic()
    step = GuidedStep(dit, StepConfig(steps="3", clip_guard=0.0, window_hi=999), critic)
    engine = EagerEngine(step, torch.nn.Identity())
    rows: list[int] = []
    real_step = engine.step
    monkeypatch.setattr(engine, "step", lambda x, *a: rows.append(len(x)) or real_step(x, *a))
    units = tuple(u for k in range(10) for u in class_units(WNIDS[k], k, 1, 50))
    results = run_batch(engine, 0, units, [[] for _ in units])
    assert rows == [10, 10, 10]  # 3 steps, all ten classes in each call
    assert [r.unit.wnid for r in results] == WNIDS[:10] and all(len(r.x0) == 1 for r in results)


@pytest.fixture(scope="module")
def shared(models, tmp_path_factory) -> tuple[Path, dict[str, str]]:  # noqa: F811
    """Four classes, IPC 3, batch 6: two classes a batch, two groups."""
    out = tmp_path_factory.mktemp("shared") / "set"
    summary = run_request(request(models, out, classes=FOUR, ipc=3, batch_size=6))
    assert summary["complete"] and summary["images_made"] == 12
    return out, snapshot(out)


def test_shards_of_cross_class_batches_equal_the_unsharded_set(models, shared, tmp_path):  # noqa: F811
    _, snap = shared
    out = tmp_path / "set"
    for k in range(2):
        run_request(request(models, out, classes=FOUR, ipc=3, batch_size=6, shard=f"{k}/2"))
    assert snapshot(out) == snap


def test_a_damaged_image_of_a_shared_batch_is_repaired_to_the_same_bytes(models, shared, tmp_path):  # noqa: F811
    src, snap = shared
    import shutil

    out = shutil.copytree(src, tmp_path / "set")
    for lock in out.glob(".igds-lock*"):
        lock.unlink()
    victim = sorted(out.glob(f"{WNIDS[1]}/*.png"))[1]  # the second class of the first batch
    victim.write_bytes(victim.read_bytes()[:100])
    stale = victim.with_name(f".{victim.name}.4242-7.tmp")  # what a writer killed mid-image leaves
    stale.write_bytes(b"half an image")
    summary = run_request(request(models, out, classes=FOUR, ipc=3, batch_size=6))
    assert summary["repaired"] == [str(victim.relative_to(out))]
    assert not stale.exists() and snapshot(out) == snap


def test_a_killed_cross_class_run_resumes_to_the_same_bytes(models, shared, tmp_path):  # noqa: F811
    _, snap = shared
    out = tmp_path / "set"
    args = [sys.executable, "-m", "igds_fast.cli", "distill", "--out", str(out), "--classes", FOUR]
    args += ["--ipc", "3", "--batch-size", "6", "--seed", "3", "--denoiser", str(models["dit"]), "--vae", "none"]
    args += ["--critics", str(models["critic"]), "--guidance-scale", "2", "--beta", "1", "--steps", "4"]
    args += ["--cfg-scale", "2", "--clip-guard", "0", "--backend", "eager"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(out.glob(".unit-*.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)  # after the first unit, before (or while) the rest are written
    proc.wait()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-500:]
    assert snapshot(out) == snap
