"""The distill run: this shard's units that are not done, sampled group by group (the classes that
share a batch) and handed to the unit writer; then the set is assembled if every unit of the job checks out.

A rerun checks every unit it would run (``state.unit_state``): a unit whose record is missing or
damaged, whose features are damaged, or one of whose images is missing, truncated or altered, is run
again, and only the files that differ are rewritten (the same seeds give the same bytes). What the
other modules hold: the output's identity in ``identity.py``, the job file and the claim on the
folder in ``job_file.py``, durable writing in ``unit_writer.py``, the manifest, sheets and
``run.json`` in ``assemble.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..imageio import to_uint8
from ..outdir import make_out_folder
from ..sampling import StepEngine, WorkUnit, class_groups, group_batches, run_group, shard_classes
from .assemble import finalize
from .events import QUIET, Events, Progress
from .identity import DistillConfig, all_units
from .job_file import JobFile, prepare_out
from .lock import WriterLocks
from .state import UnitState, refuse_links, remove_stale_temps, timestamp, unit_state
from .unit_writer import UnitWriter


def distill_group(
    engine: StepEngine,
    cfg: DistillConfig,
    wnids: list[str],
    writer: UnitWriter,
    states: dict[str, UnitState],
    on_images: Callable[[int], None] | None = None,
    on_step: Callable[[int, int, Any], None] | None = None,
) -> int:
    """Run the units of a group of classes (``sampling.class_groups``) that are not done, batch by batch
    in chunk order; returns how many images were sampled. ``on_step``: called after each denoising
    step of a batch (a progress bar's tick)."""
    made = 0

    def done(unit: WorkUnit) -> np.ndarray | None:  # a finished chunk: its stored features join the memory
        st = states[unit.key]
        return st.feats if st.done else None

    labels = dict(zip(cfg.wnids, cfg.labels, strict=True))
    batches = group_batches([(w, labels[w]) for w in wnids], cfg.ipc, cfg.batch_size)
    for res in run_group(engine, cfg.seed, batches, done=done, on_step=on_step):
        t0 = time.perf_counter()
        images = to_uint8(engine.decode(res.x0)).cpu().numpy()
        writer.submit(res, images, res.seconds + time.perf_counter() - t0, states[res.unit.key])
        made += res.unit.count
        if on_images is not None:
            on_images(res.unit.count)
    return made


def shard_states(out: Path, cfg: DistillConfig, job: str, shard: tuple[int, int]) -> dict[str, UnitState]:
    """The state of every unit of this shard's classes (every recorded file is checked); a link where
    the run would write (a class folder, one of its files) is refused first."""
    mine = shard_classes(cfg.wnids, *shard, cfg.ipc, cfg.batch_size)
    refuse_links(out, mine)
    return {u.key: unit_state(out, u, job) for u in all_units(cfg, mine)}


def run_distill(
    engine: StepEngine,
    cfg: DistillConfig,
    out: Path,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: bool = False,
    events: Events = QUIET,
    run_info: dict[str, Any] | None = None,
    prepared: str | None = None,
    request: str | None = None,
    wait: bool = False,
    locks: WriterLocks | None = None,
) -> dict[str, Any]:
    """Distill this shard's classes; returns a summary (images made, files repaired, seconds, img/s,
    complete).

    ``locks``: the writer locks the caller holds on ``out`` (else they are taken here, waiting with
    ``wait``); ``prepared``: the job digest ``prepare_out`` returned to the caller (a Ray driver), which holds the
    locks and has claimed ``out``."""
    cfg.validate()
    own_locks = None
    if not prepared and locks is None:
        make_out_folder(out)  # the locks live in it
        own_locks = locks = WriterLocks(out, shard).acquire(wait=wait)
    try:
        job = prepared or prepare_out(out, cfg, overwrite, request, locks)
        return _run_units(engine, cfg, out, job, shard, progress, events, run_info or {}, request)
    finally:
        if own_locks is not None:
            own_locks.release()


def _run_units(
    engine: StepEngine,
    cfg: DistillConfig,
    out: Path,
    job: str,
    shard: tuple[int, int],
    progress: bool,
    events: Events,
    run_info: dict[str, Any],
    request: str | None,
) -> dict[str, Any]:
    started = timestamp()
    mine = shard_classes(cfg.wnids, *shard, cfg.ipc, cfg.batch_size)
    states = shard_states(out, cfg, job, shard)
    remove_stale_temps(out, mine)  # a killed run's half-written images: this shard's lock is held
    for st in states.values():
        if not st.done and st.problem != "not run yet":
            events.emit(
                "damaged",
                wnid=st.unit.wnid,
                chunk=st.unit.chunk,
                missing=st.missing,
                damaged=st.damaged,
                problem=st.problem,
            )
    todo = sum(st.unit.count for st in states.values() if not st.done)
    bar = Progress(todo, engine.num_steps, enabled=progress)
    writer = UnitWriter(out, cfg, job, events)
    t0 = time.perf_counter()
    made = sampled = 0
    changed: set[str] = set()
    try:
        for group in class_groups(mine, cfg.ipc, cfg.batch_size):
            tc = time.perf_counter()
            fresh = {
                w: sum(st.unit.count for st in states.values() if st.unit.wnid == w and st.problem == "not run yet")
                for w in group
            }
            n = distill_group(engine, cfg, group, writer, states, on_images=bar.images_done, on_step=bar.on_step)
            sampled += n
            if n:
                writer.drain()
                made += sum(fresh.values())
                seconds = round((time.perf_counter() - tc) / len(group), 3)  # the group's time, shared
                for wnid in group:
                    changed.add(wnid)
                    events.emit("class_done", wnid=wnid, images=fresh[wnid], seconds=seconds)
        writer.drain()
    finally:
        writer.close()
        bar.close()
    seconds = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "images_made": made,
        "repaired": sorted(writer.repaired),
        "seconds": seconds,
        "img_per_s": sampled / seconds if sampled else None,
    }
    if writer.changed:
        summary["changed"] = sorted(writer.changed)  # regenerated with other bytes than recorded
    entry = None
    if sampled:
        entry = {
            "started": started,
            "finished": timestamp(),
            "shard": f"{shard[0]}/{shard[1]}",
            "images_made": made,
            "repaired": summary["repaired"],
            "seconds": round(seconds, 3),
            "img_per_s": summary["img_per_s"],
            "backend": cfg.backend,
            "precision": cfg.precision,
            "engine_id": cfg.engine_id,
        } | run_info
    # units that checked out before this run are not hashed again; the ones just written are
    unchanged = {k: st for k, st in states.items() if st.done}
    summary["complete"] = finalize(out, cfg, job, entry, changed, request, unchanged, events)
    return summary


def is_finished(
    out: Path, have: JobFile, request: str, shard: tuple[int, int]
) -> tuple[DistillConfig, str, dict[str, UnitState]] | None:
    """(config, job digest, unit states) when ``out``'s job file ``have`` records the job of this
    ``request`` key and every unit of this shard checks out: the run has nothing to sample, so no
    weights need loading."""
    if have.config is None or have.request != request:
        return None
    cfg = DistillConfig.from_fingerprint(have.config)
    try:
        states = shard_states(out, cfg, have.digest, shard)
    except (KeyError, TypeError, ValueError):
        return None
    if not all(st.done for st in states.values()):
        return None
    return cfg, have.digest, states
