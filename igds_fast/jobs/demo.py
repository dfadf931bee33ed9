"""``igds-fast demo``: export the embedded model to ONNX Runtime, distill Imagenette with it, and
evaluate the result quickly: the whole product in a few minutes on a laptop CPU."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..backends.build import ExportSpec, export_engine
from ..backends.engine_manifest import read_engine_manifest, verify_files
from ..config import StepConfig
from ..errors import UserError
from ..evaluation.train import evaluate_set
from ..models.embedded import resolve_models
from ..subsets import subset
from .job import DistillJob
from .run import run_job

DEMO_IPC = 10


def default_val_dir() -> Path | None:
    """Real Imagenette val images, if this machine has them ($IGDS_DATA or ../shared/data)."""
    roots = [os.environ.get("IGDS_DATA"), Path.cwd().parent / "shared" / "data"]
    for root in roots:
        if root and (Path(root) / "imagenette-64" / "val").is_dir():
            return Path(root) / "imagenette-64" / "val"
    return None


def demo_job(out: Path) -> DistillJob:
    cfg = StepConfig()
    return DistillJob(
        out=out,
        classes=subset("imagenette"),
        ipc=DEMO_IPC,
        step=cfg,
        models=resolve_models(None, None, None, cfg.guidance),
        batch_size=DEMO_IPC,
    )


def ensure_engine(engine_dir: Path, job: DistillJob, log: Callable[[str], None]) -> Path:
    """Export the embedded step for ONNX Runtime once; later demos reuse the folder (distill checks
    its manifest against the job). A folder that does not check (signed under another key, by an
    earlier release, or damaged) is exported again in place; ``--overwrite`` rules apply."""
    stale = False
    if (engine_dir / "manifest.json").exists():
        try:
            verify_files(engine_dir, read_engine_manifest(engine_dir, trust=False))
            return engine_dir
        except UserError as e:
            log(f"[1/3] {engine_dir} does not check ({e}); exporting it again")
            stale = True
    m = job.models
    spec = ExportSpec(
        denoiser=m.denoiser,
        vae=m.vae,
        critics=m.critics,
        cfg=job.step,
        batch_size=job.rows,
        memory_size=1,
        precision="fp32",
        backend="onnxruntime",
        out=engine_dir,
        overwrite=stale,
    )
    log(f"[1/3] exporting the fused guided step to {engine_dir} (once) ...")
    return export_engine(spec)


def run_demo(
    out: Path, engine_dir: Path, val: Path | None, epochs: int, log: Callable[[str], None] = print
) -> dict[str, Any]:
    t0 = time.perf_counter()
    job = demo_job(out)
    ensure_engine(engine_dir, job, log)
    log(f"[2/3] distilling Imagenette, IPC {DEMO_IPC}, with the ONNX Runtime engine into {out} ...")
    summary = run_job(dataclasses.replace(job, engines=engine_dir))
    result: dict[str, Any] = {"engine": str(engine_dir), "distilled": str(out), "distill": summary}
    val = val or default_val_dir()
    if val is None:
        log("[3/3] skipped evaluation: no real Imagenette val folder found (pass --val PATH)")
    else:
        log(f"[3/3] training ConvNet-3 on the distilled set ({epochs} epochs), testing on {val} ...")
        res = evaluate_set(out, val, "convnet3", 32, [0], epochs=epochs)
        (out.parent / f"{out.name}_eval.json").write_text(json.dumps(res, indent=1))
        result["accuracy"] = res["mean"]
        result["results"] = str(out.parent / f"{out.name}_eval.json")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if summary.get("complete") is not True:
        raise UserError("the distill run did not complete")
    return result
