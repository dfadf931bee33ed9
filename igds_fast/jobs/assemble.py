"""Assembling a finished distilled set from its unit records: the manifest, the per-class contact
sheets and ``run.json``.

Done once every unit of the job checks out, by whichever shard or worker finishes last, under the
claim lock; each file is rewritten only when its content changes, so a rerun that finds the set
intact writes nothing.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from ..imageio import labelled_sheet, write_atomic
from ..subsets import class_info
from .events import QUIET, Events
from .identity import DistillConfig, all_units
from .image_manifest import NEAR_CONSTANT_STD, near_constant_classes, read_image_manifest, write_image_manifest
from .lock import claim_lock
from .state import UnitState, append_run, read_json, read_runs, timestamp, unit_state
from .unit_writer import write_if_changed


def sheet_ok(path: Path) -> bool:
    """Whether ``path`` is a readable image (a contact sheet that need not be redrawn)."""
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # any decoder error: missing, truncated, not an image
        return False


def manifest_rows(path: Path) -> list[dict[str, Any]] | None:
    """The manifest's rows; None when it is missing or damaged."""
    try:
        return read_image_manifest(path)
    except (UserError, OSError, ValueError):
        return None


def same_rows(a: list[dict[str, Any]] | None, b: list[dict[str, Any]]) -> bool:
    """Whether two lists of manifest rows hold the same rows, in any order."""
    if a is None or len(a) != len(b):
        return False
    key = lambda r: r["path"]  # noqa: E731
    dump = lambda rows: json.dumps(sorted(rows, key=key), sort_keys=True, default=float)  # noqa: E731
    return dump(a) == dump(b)


def contact_sheet(out: Path, wnid: str, rows: list[dict[str, Any]]) -> None:
    """The class's first 100 images, 10 a row, tiles >= 96 px, titled with the class's name."""
    files = [out / r["path"] for r in sorted(rows, key=lambda r: r["sample_index"])][:100]
    arr = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])
    imgs = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
    lines = [(f"{k}-{min(k + 10, len(imgs)) - 1}", imgs[k : k + 10]) for k in range(0, len(imgs), 10)]
    buf = io.BytesIO()
    labelled_sheet(lines, f"{wnid} {class_info(wnid).name} ({len(rows)} images)").save(buf, format="PNG")
    write_if_changed(out / f"contact_{wnid}.png", buf.getvalue())  # the same sheet is not rewritten


def assembled(out: Path, cfg: DistillConfig, job: str, states: dict[str, UnitState] | None = None) -> dict[str, Any]:
    """What finalizing would do: {"complete", "rows", "seconds", "manifest", "sheets", "run_json"}
    (the last three: whether each must be rewritten). Reads and hashes every image."""
    rows, seconds = [], 0.0
    for u in all_units(cfg):
        st = states[u.key] if states is not None and u.key in states else unit_state(out, u, job)
        if not st.done:
            return {"complete": False}
        rows += st.record["rows"]
        seconds += float(st.record.get("seconds", 0.0))
    by_class: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_class.setdefault(r["wnid"], []).append(r)
    run = read_json(out / "run.json")
    return {
        "complete": True,
        "rows": rows,
        "by_class": by_class,
        "seconds": seconds,
        "manifest": not same_rows(manifest_rows(out / "manifest.parquet"), rows),
        "sheets": [w for w in cfg.wnids if not sheet_ok(out / f"contact_{w}.png")],
        "run_json": not (isinstance(run, dict) and run.get("complete") is True and run.get("job") == job),
    }


def finalize(
    out: Path,
    cfg: DistillConfig,
    job: str,
    run_entry: dict[str, Any] | None = None,
    changed: set[str] | frozenset[str] = frozenset(),
    request: str | None = None,
    states: dict[str, UnitState] | None = None,
    events: Events = QUIET,
) -> bool:
    """Assemble manifest, run.json and contact sheets once every unit of the job checks out; write
    only what changed. ``run_entry``: this run's line for the run history (appended when this run
    changed anything); ``changed``: classes whose images this run wrote."""
    with claim_lock(out):
        plan = assembled(out, cfg, job, states)
        if not plan["complete"]:
            if run_entry is not None:
                append_run(out, run_entry)
            return False
        sheets = sorted(set(plan["sheets"]) | set(changed))
        rebuilt = (["manifest.parquet"] if plan["manifest"] else []) + [f"contact_{w}.png" for w in sheets]
        only_rebuilt = run_entry is None  # nothing was sampled: manifest, sheets or run.json were damaged
        if only_rebuilt and (rebuilt or plan["run_json"]):
            run_entry = {"finished": timestamp(), "images_made": 0, "repaired": [], "rebuilt": rebuilt or ["run.json"]}
        if run_entry is None:
            return True  # nothing changed: nothing is rewritten
        if rebuilt and only_rebuilt:
            run_entry = run_entry | {"rebuilt": rebuilt}
        append_run(out, run_entry)
        if plan["manifest"]:
            write_image_manifest(plan["rows"], out / "manifest.parquet")
            for wnid, (k, n) in near_constant_classes(plan["rows"]).items():
                events.emit(
                    "warning",
                    wnid=wnid,
                    near_constant=k,
                    images=n,
                    message=f"class {wnid}: {k} of {n} images are near-constant (pixel std < "
                    f"{NEAR_CONSTANT_STD}): the generator or the guidance collapsed there",
                )
        for wnid in sheets:
            contact_sheet(out, wnid, plan["by_class"][wnid])
        if only_rebuilt:
            events.emit("rebuilt", files=rebuilt or ["run.json"])
        write_run_json(out, cfg, job, request, plan)
    return True


def write_run_json(out: Path, cfg: DistillConfig, job: str, request: str | None, plan: dict[str, Any]) -> None:
    runs = read_runs(out)
    rows, seconds = plan["rows"], plan["seconds"]
    last = runs[-1] if runs else {}
    info = {
        "kind": "distilled",
        "guidance": cfg.step.get("guidance"),
        "ipc": cfg.ipc,
        "classes": cfg.wnids,
        "seed": cfg.seed,
        "config": cfg.fingerprint(),
        "job": job,
        "request": request,
        "images": len(rows),
        "unit_seconds_total": seconds,
        "img_per_s_units": len(rows) / seconds if seconds else None,
        "near_constant": {w: {"images": k, "of": n} for w, (k, n) in near_constant_classes(rows).items()},
        "complete": True,
        "started": next((r.get("started") for r in runs if r.get("started")), None),  # the first run's
        "finished": last.get("finished"),
        "versions": last.get("versions"),
        "machine": last.get("machine"),
        "last_run": last,
        "runs": runs,
    }
    write_atomic(out / "run.json", json.dumps(info, indent=1, default=str).encode())
