"""Run a distill job's classes on a Ray cluster: one worker per GPU (two CPU workers without GPUs).

Worker k of n (a Ray task holding one GPU) runs shard k/n, exactly the units ``--shard k/n`` would
run, so results are identical to a local run. Workers write into ``--out`` directly: on a
multi-node cluster it must be a shared filesystem. The driver prepares the folder and assembles the
manifest at the end.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import UserError
from ..outdir import make_out_folder
from .assemble import finalize
from .distill import run_distill
from .events import QUIET, Events
from .identity import DistillConfig
from .job import DistillJob, build_engine
from .job_file import prepare_out
from .lock import WriterLocks

CPU_WORKERS = 2  # workers on a cluster without GPUs


def _distill_shard(job: DistillJob, dcfg: DistillConfig, shard: tuple[int, int], digest: str) -> dict[str, Any]:
    # Runs inside a Ray worker process: build its own engine, then the ordinary local job on its shard,
    # under the job digest the driver claimed ``out`` with.
    return run_distill(build_engine(job), dcfg, job.out, shard=shard, progress=False, prepared=digest)


def run_on_ray(
    job: DistillJob, dcfg: DistillConfig, info: dict[str, Any], request: str | None = None, events: Events = QUIET
) -> dict[str, Any]:
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'igds-fast[ray]'") from None
    make_out_folder(job.out)  # the locks live in it
    with WriterLocks(job.out).acquire(wait=job.wait) as locks:  # the driver holds --out for its workers
        job_digest = prepare_out(job.out, dcfg, job.overwrite, request, locks)
        return _run(ray, job, dcfg, info, request, events, job_digest)


def _run(
    ray: Any,
    job: DistillJob,
    dcfg: DistillConfig,
    info: dict[str, Any],
    request: str | None,
    events: Events,
    digest: str,
) -> dict[str, Any]:
    started_here = not ray.is_initialized()
    if started_here:
        if job.ray == "local":
            ray.init(num_cpus=max(CPU_WORKERS, 1), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=job.ray, log_to_driver=False)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n = gpus if gpus > 0 else CPU_WORKERS
        remote = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)(_distill_shard)
        worker_job = dataclasses.replace(job, device="cuda") if gpus else job
        results = ray.get([remote.remote(worker_job, dcfg, (k, n), digest) for k in range(n)])
    finally:
        if started_here:
            ray.shutdown()
    made = sum(r["images_made"] for r in results)
    repaired = sorted(f for r in results for f in r["repaired"])
    seconds = max((r["seconds"] for r in results), default=0.0)
    summary = {
        "images_made": made,
        "repaired": repaired,
        "seconds": seconds,
        "img_per_s": made / seconds if made else None,
        "ray_workers": n,
    }
    # each worker logged its shard's run; the driver only assembles (rewriting what changed)
    summary["complete"] = finalize(job.out, dcfg, digest, None, request=request, events=events)
    return summary
