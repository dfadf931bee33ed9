"""Run a distill job's classes on a Ray cluster: one worker per GPU (two CPU workers without GPUs).

Worker k of n (a Ray task holding one GPU) runs shard k/n, exactly the units ``--shard k/n`` would run, so results are
identical to a local run. Workers write into ``--out`` directly: on a multi-node cluster it must
be a shared filesystem. The driver prepares the folder and assembles the manifest at the end.
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from .distill import DistillConfig, finalize, prepare_out

CPU_WORKERS = 2  # workers on a cluster without GPUs


def _distill_shard(req: Any, dcfg: DistillConfig, shard: tuple[int, int]) -> dict[str, Any]:
    # Runs inside a Ray worker process: build its own engine, then the ordinary local job on its shard.
    from .distill import run_distill
    from .run import build_engine, step_config
    from .units import memory_rows

    engine = build_engine(req, step_config(req), dcfg.batch_size, memory_rows(dcfg.ipc, dcfg.batch_size))
    return run_distill(engine, dcfg, req.out, shard=shard, progress=False, prepared=True)


def run_on_ray(req: Any, dcfg: DistillConfig, info: dict[str, Any]) -> dict[str, Any]:
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'igds-fast[ray]'") from None
    prepare_out(req.out, dcfg, req.overwrite)
    started_here = not ray.is_initialized()
    if started_here:
        if req.ray == "local":
            ray.init(num_cpus=max(CPU_WORKERS, 1), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=req.ray, log_to_driver=False)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n = gpus if gpus > 0 else CPU_WORKERS
        remote = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)(_distill_shard)
        if gpus:
            req.device = "cuda"
        results = ray.get([remote.remote(req, dcfg, (k, n)) for k in range(n)])
    finally:
        if started_here:
            ray.shutdown()
    made = sum(r["images_made"] for r in results)
    seconds = max((r["seconds"] for r in results), default=0.0)
    summary = {"images_made": made, "seconds": seconds, "img_per_s": made / seconds if made else None, "ray_workers": n}
    summary["complete"] = finalize(req.out, dcfg, info | {"last_run": summary})
    return summary
