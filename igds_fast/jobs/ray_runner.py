"""Run a distill job's classes on a Ray cluster (docs/cluster.md).

Worker k of n (a Ray task) runs shard k/n, exactly the units ``--shard k/n`` would run, so results
are identical to a local run. How many workers: one per GPU of the cluster, each holding its GPU;
without GPUs, the cluster's CPUs divided by the threads of a worker (``--threads``, default 1), each
holding that many CPUs; never more workers than classes.

Workers write into ``--out`` directly, so every node must see the same ``--out`` (a shared
filesystem): the driver writes a probe file there first, and a worker that does not find it stops
before loading any weights, with a one-line error naming its node. The driver prepares and claims
the folder, relays each worker's events (``unit_done``, ``class_done``, ...) as they happen, with
the worker's number, and assembles the manifest at the end. Each worker records its run (library
versions, its machine, the Ray worker and node) in the run history, as a local shard does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..outdir import make_out_folder
from .assemble import finalize
from .distill import run_distill
from .events import QUIET, Events
from .identity import DistillConfig
from .job import DistillJob, build_engine, run_info
from .job_file import prepare_out
from .lock import WriterLocks

CPU_THREADS_PER_WORKER = 1  # without --threads: one thread per worker, as many workers as CPUs
PROBE_PREFIX = ".ray-probe-"
POLL_S = 0.2  # how often the driver relays the workers' events


@dataclasses.dataclass(frozen=True)
class WorkerPlan:
    """How a job is spread over the cluster."""

    workers: int
    gpus_per_worker: int
    cpus_per_worker: int
    threads: int | None  # torch/ORT threads of each worker (None: GPU workers keep the library default)


def plan_workers(resources: dict[str, float], classes: int, threads: int | None = None) -> WorkerPlan:
    """Workers for a cluster with these resources (``ray.cluster_resources()``): one per GPU, else
    CPUs // threads per worker; at least one, at most one per class."""
    gpus = int(resources.get("GPU", 0))
    if gpus > 0:
        return WorkerPlan(max(1, min(gpus, classes)), 1, 0, threads)
    per = threads or CPU_THREADS_PER_WORKER
    cpus = int(resources.get("CPU", 0))
    if cpus < per:
        raise UserError(
            f"the Ray cluster has {cpus} CPUs and no GPU: a worker needs {per} (--threads); lower --threads"
        )
    return WorkerPlan(max(1, min(cpus // per, classes)), 0, per, per)


class _RelayEvents(Events):
    """A worker's events: put on the driver's queue (the driver emits them), not printed."""

    def __init__(self, queue: Any, worker: int):
        super().__init__(quiet=True)
        self.queue, self.worker = queue, worker

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        rec = super().emit(event, **fields)
        with contextlib.suppress(Exception):  # an event lost is never worth a failed unit
            self.queue.put_nowait(rec | {"worker": self.worker})
        return rec


def check_probe(out: Path, probe: str) -> str | None:
    """None if this process sees the driver's probe file in ``out``, else the one-line reason."""
    path = out / probe
    try:
        if path.read_text() == probe:
            return None
    except OSError:
        pass
    return (
        f"the Ray worker on node {socket.gethostname()} does not see --out '{out}' as the driver wrote it "
        f"(no {probe} there): --ray needs --out on a filesystem that every node mounts at the same path "
        "(docs/cluster.md)"
    )


def _distill_shard(
    job: DistillJob,
    dcfg: DistillConfig,
    shard: tuple[int, int],
    digest: str,
    request: str | None,
    probe: str,
    queue: Any,
    ray_info: dict[str, Any],
) -> dict[str, Any]:
    # Runs inside a Ray worker process: check the shared folder, build its own engine, then the
    # ordinary local run of its shard under the job digest the driver claimed ``out`` with.
    reason = check_probe(job.out, probe)
    if reason is not None:
        return {"error": reason}
    info = run_info(job) | {"ray": ray_info | {"worker": shard[0], "node": socket.gethostname()}}
    try:
        return run_distill(
            build_engine(job),
            dcfg,
            job.out,
            shard=shard,
            progress=False,
            events=_RelayEvents(queue, shard[0]),
            run_info=info,
            prepared=digest,
            request=request,
        )
    except UserError as e:
        return {"error": str(e)}


def run_on_ray(
    job: DistillJob, dcfg: DistillConfig, request: str | None = None, events: Events = QUIET
) -> dict[str, Any]:
    """Run every shard of the job on the cluster ``job.ray`` names ('local' starts one here); the summary
    of a local run, with ``ray_workers``."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'igds-fast[ray]'") from None
    make_out_folder(job.out)  # the locks live in it
    with WriterLocks(job.out).acquire(wait=job.wait) as locks:  # the driver holds --out for its workers
        job_digest = prepare_out(job.out, dcfg, job.overwrite, request, locks)
        return _run(ray, job, dcfg, request, events, job_digest)


def _run(
    ray: Any,
    job: DistillJob,
    dcfg: DistillConfig,
    request: str | None,
    events: Events,
    digest: str,
) -> dict[str, Any]:
    started_here = not ray.is_initialized()
    if started_here:
        if job.ray == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=job.ray, log_to_driver=False)
    probe = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    (job.out / probe).write_text(probe)
    try:
        from ray.util.queue import Queue

        plan = plan_workers(ray.cluster_resources(), len(dcfg.wnids), job.threads)
        n = plan.workers
        queue = Queue(actor_options={"num_cpus": 0})
        remote = ray.remote(num_gpus=plan.gpus_per_worker, num_cpus=plan.cpus_per_worker)(_distill_shard)
        worker_job = dataclasses.replace(
            job, device="cuda" if plan.gpus_per_worker else job.device, threads=plan.threads
        )
        ray_info = {"address": job.ray, "workers": n, "driver": socket.gethostname(), "driver_pid": os.getpid()}
        pending = [remote.remote(worker_job, dcfg, (k, n), digest, request, probe, queue, ray_info) for k in range(n)]
        refs = list(pending)
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            _relay(queue, events)
        results = ray.get(refs)
        _relay(queue, events)
    finally:
        with contextlib.suppress(OSError):
            (job.out / probe).unlink()
        if started_here:
            ray.shutdown()
    errors = [(k, r["error"]) for k, r in enumerate(results) if "error" in r]
    if errors:
        k, message = errors[0]
        raise UserError(message if message.startswith("the Ray worker") else f"Ray worker {k}/{n}: {message}")
    made = sum(r["images_made"] for r in results)
    repaired = sorted(f for r in results for f in r["repaired"])
    seconds = max((r["seconds"] for r in results), default=0.0)
    summary = {
        "images_made": made,
        "repaired": repaired,
        "seconds": seconds,
        "img_per_s": made / seconds if made else None,
        "ray_workers": n,
        "shard_complete": True,  # the driver ran every shard
    }
    # each worker logged its shard's run; the driver only assembles (rewriting what changed)
    summary["complete"] = finalize(job.out, dcfg, digest, None, request=request, events=events)
    return summary


def _relay(queue: Any, events: Events) -> None:
    """Emit the workers' events queued so far, each with its worker's time and number."""
    size = queue.qsize()
    if not size:
        return
    for rec in queue.get_nowait_batch(size):
        fields = {k: v for k, v in rec.items() if k not in ("event", "out")}
        events.emit(rec["event"], **fields)
