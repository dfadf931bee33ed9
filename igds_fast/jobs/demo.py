"""``igds-fast demo``: export the embedded model to ONNX Runtime, distill Imagenette with it, and
evaluate the result quickly: the whole product in a few minutes on a laptop CPU."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import typer

from ..errors import UserError
from .run import DistillRequest, model_paths, run_request, step_config

DEMO_IPC = 10


def default_val_dir() -> Path | None:
    """Real Imagenette val images, if this machine has them ($IGDS_DATA or ../shared/data)."""
    roots = [os.environ.get("IGDS_DATA"), Path.cwd().parent / "shared" / "data"]
    for root in roots:
        if root and (Path(root) / "imagenette-64" / "val").is_dir():
            return Path(root) / "imagenette-64" / "val"
    return None


def demo_request(out: Path, engines: Path | None) -> DistillRequest:
    return DistillRequest(out=out, subset="imagenette", ipc=DEMO_IPC, batch_size=DEMO_IPC, engines=engines)


def ensure_engine(engine_dir: Path, req: DistillRequest) -> Path:
    """Export the embedded step for ONNX Runtime once; later demos reuse the folder if it matches."""
    from ..backends.build import ExportSpec, export_engine

    if (engine_dir / "manifest.json").exists():
        return engine_dir
    den, vae, crit = model_paths(req)
    spec = ExportSpec(
        denoiser=den,
        vae=vae,
        critics=crit,
        cfg=step_config(req),
        batch_size=DEMO_IPC,
        memory_size=1,
        precision="fp32",
        backend="onnxruntime",
        out=engine_dir,
    )
    typer.echo(f"[1/3] exporting the fused guided step to {engine_dir} (once) ...")
    return export_engine(spec)


def run_demo(out: Path, engine_dir: Path, val: Path | None, epochs: int) -> dict[str, Any]:
    from ..evaluation.train import evaluate_set

    t0 = time.perf_counter()
    req = demo_request(out, None)
    ensure_engine(engine_dir, req)
    typer.echo(f"[2/3] distilling Imagenette, IPC {DEMO_IPC}, with the ONNX Runtime engine into {out} ...")
    req.engines = engine_dir
    summary = run_request(req)
    result: dict[str, Any] = {"engine": str(engine_dir), "distilled": str(out), "distill": summary}
    val = val or default_val_dir()
    if val is None:
        typer.echo("[3/3] skipped evaluation: no real Imagenette val folder found (pass --val PATH)")
    else:
        typer.echo(f"[3/3] training ConvNet-3 on the distilled set ({epochs} epochs), testing on {val} ...")
        res = evaluate_set(out, val, "convnet3", 32, [0], epochs=epochs)
        (out.parent / f"{out.name}_eval.json").write_text(json.dumps(res, indent=1))
        result["accuracy"] = res["mean"]
        result["results"] = str(out.parent / f"{out.name}_eval.json")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if summary.get("complete") is not True:
        raise UserError("the distill run did not complete")
    return result
