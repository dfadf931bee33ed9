"""Assembling a finished distilled set from its unit records: ``metadata.parquet``, the dataset
card ``README.md``, the per-class contact sheets and ``run.json``.

Done once every unit of the job checks out, by whichever shard or worker finishes last, under the
claim lock; each file is rewritten only when its content changes, so a rerun that finds the set
intact writes nothing.

The set is a dataset that loaders read as is (``docs/outputs.md``): at its root only the class
folders, ``metadata.parquet``, ``README.md``, ``run.json`` and hidden files; contact sheets are
hidden files (``.igds-contact-<wnid>.png``), since every folder at the root would be a class to
torchvision's ``ImageFolder`` and every image file at the root a sample to ``datasets``. A set of the
previous layout (``manifest.parquet``, ``contact_<wnid>.png`` at the root) is moved to this one by
the next run: the new files are written first, the old ones removed last.
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
from .dataset_card import CARD_FILE, distilled_card
from .events import QUIET, Events
from .identity import DistillConfig, all_units
from .image_manifest import (
    METADATA_FILE,
    NEAR_CONSTANT_STD,
    PREVIOUS_MANIFEST,
    SET_FORMAT,
    manifest_format,
    near_constant_classes,
    read_image_manifest,
    write_image_manifest,
)
from .lock import claim_lock
from .state import UnitState, append_run, file_digest, read_json, read_runs, sha256_bytes, timestamp, unit_state
from .unit_writer import write_if_changed


def sheet_name(wnid: str) -> str:
    """A class's contact sheet: a hidden file at the set's root, out of the loaders' way."""
    return f".igds-contact-{wnid}.png"


def previous_layout(out: Path, wnids: list[str]) -> list[str]:
    """The previous layout's files still in ``out`` (its manifest, contact sheets at the root)."""
    names = [PREVIOUS_MANIFEST] + [f"contact_{w}.png" for w in wnids]
    return [n for n in names if (out / n).is_file()]


def sheet_ok(path: Path) -> bool:
    """Whether ``path`` is a readable image (a contact sheet that need not be redrawn)."""
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # any decoder error: missing, truncated, not an image
        return False


def manifest_rows(path: Path) -> list[dict[str, Any]] | None:
    """The metadata file's rows; None when it is missing or damaged."""
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


def metadata_current(out: Path, rows: list[dict[str, Any]]) -> bool:
    """Whether ``metadata.parquet`` is of this layout's schema and holds exactly ``rows``."""
    path = out / METADATA_FILE
    return manifest_format(path) == SET_FORMAT and same_rows(manifest_rows(path), rows)


def made_by(out: Path) -> list[str]:
    """The igds-fast versions of the runs that made or repaired the set's images (the run log's)."""
    found = set()
    for run in read_runs(out):
        versions = run.get("versions")
        if isinstance(versions, dict) and versions.get("igds_fast"):
            found.add(str(versions["igds_fast"]))
    return sorted(found)


def card_bytes(out: Path, cfg: DistillConfig, rows: list[dict[str, Any]]) -> bytes:
    """The dataset card the set's configuration, images and run log give."""
    return distilled_card(cfg, rows, made_by(out))


def card_state(out: Path, card: bytes) -> str:
    """ok | missing | stale: ``README.md`` against the card the set should have."""
    have = file_digest(out / CARD_FILE)
    if have is None:
        return "missing"
    return "ok" if have == (len(card), sha256_bytes(card)) else "stale"


def contact_sheet(out: Path, wnid: str, rows: list[dict[str, Any]]) -> None:
    """The class's first 100 images, 10 a row, tiles >= 96 px, titled with the class's name."""
    files = [out / r["path"] for r in sorted(rows, key=lambda r: r["sample_index"])][:100]
    arr = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])
    imgs = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
    lines = [(f"{k}-{min(k + 10, len(imgs)) - 1}", imgs[k : k + 10]) for k in range(0, len(imgs), 10)]
    buf = io.BytesIO()
    labelled_sheet(lines, f"{wnid} {class_info(wnid).name} ({len(rows)} images)").save(buf, format="PNG")
    write_if_changed(out / sheet_name(wnid), buf.getvalue())  # the same sheet is not rewritten


def assembled(out: Path, cfg: DistillConfig, job: str, states: dict[str, UnitState] | None = None) -> dict[str, Any]:
    """What finalizing would do: {"complete", "rows", "seconds", "manifest", "sheets", "card",
    "previous", "run_json"} (whether each must be rewritten; "previous": the previous layout's files
    to remove). Reads and hashes every image."""
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
        "manifest": not metadata_current(out, rows),
        "sheets": [w for w in cfg.wnids if not sheet_ok(out / sheet_name(w))],
        "card": card_state(out, card_bytes(out, cfg, rows)) != "ok",
        "previous": previous_layout(out, cfg.wnids),
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
    """Assemble metadata, dataset card, run.json and contact sheets once every unit of the job checks
    out; write only what changed, then remove the previous layout's files. ``run_entry``: this run's
    line for the run history (appended when this run changed anything); ``changed``: classes whose
    images this run wrote."""
    with claim_lock(out):
        plan = assembled(out, cfg, job, states)
        if not plan["complete"]:
            if run_entry is not None:
                append_run(out, run_entry)
            return False
        sheets = sorted(set(plan["sheets"]) | set(changed))
        rebuilt = (
            ([METADATA_FILE] if plan["manifest"] else [])
            + [sheet_name(w) for w in sheets]
            + ([CARD_FILE] if plan["card"] else [])
        )
        previous = plan["previous"]
        only_rebuilt = run_entry is None  # nothing was sampled: metadata, card, sheets or run.json were damaged
        if only_rebuilt and (rebuilt or previous or plan["run_json"]):
            run_entry = {"finished": timestamp(), "images_made": 0, "repaired": [], "rebuilt": rebuilt or ["run.json"]}
            if previous:
                run_entry["removed"] = previous  # the previous layout's files, now in their new form
        if run_entry is None:
            return True  # nothing changed: nothing is rewritten
        append_run(out, run_entry)
        if plan["manifest"]:
            write_image_manifest(plan["rows"], out / METADATA_FILE)
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
        write_if_changed(out / CARD_FILE, card_bytes(out, cfg, plan["rows"]))  # this run's version counts
        if only_rebuilt:
            events.emit("rebuilt", files=rebuilt or ["run.json"], **({"removed": previous} if previous else {}))
        write_run_json(out, cfg, job, request, plan)
        for name in previous:  # last: until here a reader finds the previous layout whole
            (out / name).unlink(missing_ok=True)
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
