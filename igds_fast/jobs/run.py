"""Run a distill job: locally (one shard or all), or on a Ray cluster."""

from __future__ import annotations

from typing import Any

from ..config import check_count
from ..errors import UserError
from .distill import run_distill
from .job import DistillJob, build_engine, distill_config, run_info
from .ray_runner import run_on_ray


def run_job(job: DistillJob) -> dict[str, Any]:
    check_count(job.ipc, "--ipc")
    if job.out.exists() and not job.out.is_dir():
        raise UserError(f"--out '{job.out}' is a file; choose a folder")
    engine = build_engine(job)
    dcfg = distill_config(job, engine)
    if job.ray is not None:
        return run_on_ray(job, dcfg, run_info(job))
    return run_distill(
        engine, dcfg, job.out, shard=job.shard, overwrite=job.overwrite, json_log=job.log_json, run_info=run_info(job)
    )
