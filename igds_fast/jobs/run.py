"""Run a distill job: locally (one shard or all), or on a Ray cluster.

The order is what keeps a bad or redundant job cheap: options are checked first; then, without
loading any weights, whether ``--out`` already holds this finished job (a rerun that finds every
recorded file intact has nothing to do); then the memory and disk the job needs; only then are
the weights loaded (or the cached engine exported), the writer locks taken and the folder claimed.

A run that returns has done every unit of its shard: its summary says ``shard_complete``, and
``complete`` when the whole set is (an array job's other shards may still be running; see
``events.exit_code``).
"""

from __future__ import annotations

import time
from typing import Any

from ..outdir import make_out_folder
from .assemble import finalize
from .distill import is_finished, run_distill
from .events import QUIET, Events, show_progress
from .job import DistillJob, build_engine, choose, distill_config, job_shape, model_hashes, request_key, run_info
from .job_file import read_job_file
from .limits import check_clip_guard_memory, check_limits
from .lock import WriterLocks
from .ray_runner import run_on_ray


def run_job(job: DistillJob, events: Events = QUIET) -> dict[str, Any]:
    job.validate()
    t0 = time.perf_counter()
    have = read_job_file(job.out)  # the one read before the locks; the claim reads it again under its lock
    hashes = model_hashes(job.models, job.step.guidance)
    choice = choose(job, hashes, have)
    request = request_key(job, choice, hashes)
    base = {"backend": choice.backend, "precision": choice.precision}
    events.emit(
        "start",
        classes=len(job.classes),
        ipc=job.ipc,
        shard=f"{job.shard[0]}/{job.shard[1]}",
        backend=choice.backend,
        precision=choice.precision,
        backend_reason=choice.reason,
        engines=str(choice.engines) if choice.engines is not None else None,
    )
    finished = is_finished(job.out, have, request, job.shard) if job.ray is None else None
    if finished is not None:  # every unit of this shard checks out: no weights needed
        cfg, digest, states = finished
        with WriterLocks(job.out, job.shard).acquire(wait=job.wait):
            complete = finalize(job.out, cfg, digest, None, request=request, states=states, events=events)
        return base | {
            "images_made": 0,
            "repaired": [],
            "seconds": time.perf_counter() - t0,
            "img_per_s": None,
            "complete": complete,
            "shard_complete": True,
            "nothing_to_do": True,
        }
    check_limits(job_shape(job), job.out)  # before any weights load or export
    log = (lambda msg: events.emit("note", message=msg)) if events is not QUIET else None
    engine = build_engine(job, choice, log=log)
    dcfg = distill_config(job, engine, choice, hashes)
    check_limits(job_shape(job, engine), job.out)
    check_clip_guard_memory(engine, job.rows)
    if job.ray is not None:
        return base | run_on_ray(job, dcfg, request=request, events=events)
    make_out_folder(job.out)  # the locks live in it
    on_wait = (lambda holder: events.emit("waiting", holder=holder)) if job.wait else None
    with WriterLocks(job.out, job.shard).acquire(wait=job.wait, on_wait=on_wait) as locks:
        return (
            base
            | {"shard_complete": True}
            | run_distill(
                engine,
                dcfg,
                job.out,
                shard=job.shard,
                overwrite=job.overwrite,
                progress=show_progress(job.progress),
                events=events,
                run_info=run_info(job),
                request=request,
                locks=locks,
            )
        )
