"""A distill folder's state on disk, read defensively: unit records, stored features, the image
files they list, and the run log (the job file is read by ``job_file.py``).

Nothing here trusts what it reads. A record that does not parse, belongs to another configuration,
or lists a feature file or an image whose size or sha256 differs from what it recorded makes its
unit "not done": the run redoes that unit (every image's noise derives from its seed, so the redo
reproduces the same bytes) and rewrites only the files that were missing or damaged.

Files (all but the images and sheets hidden):
  .igds-job.json                 the configuration that owns the folder (``DistillConfig.fingerprint``)
  .unit-<wnid>-<chunk>.json      a finished unit: its manifest rows, file sizes, features' hash, job digest
  .unit-<wnid>-<chunk>.feats.npy its critic features (the memory of the class's later chunks)
  .igds-runs.jsonl               one line per run (started, finished, images made, repaired)
  .igds-lock                     the writer lock (``jobs/lock.py``)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..imagefolder import digest as digest  # defined below jobs so evaluation shares it; re-exported here
from ..sampling import WorkUnit
from .image_manifest import MANIFEST_SCHEMA

JOB_FILE = ".igds-job.json"
RUNS_FILE = ".igds-runs.jsonl"
RECORD_FORMAT = "igds-fast/unit-v2"
# Names a distill run writes into a class folder (what --overwrite and a new configuration may remove).
OUR_IMAGE = re.compile(r"\d{5}\.(png|jpg)")
OUR_TEMP = re.compile(r"\..+\.\d+(-\d+)?\.tmp")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> tuple[int, str] | None:
    """(size, sha256) of a file; None when it is missing or unreadable."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return len(data), sha256_bytes(data)


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it is missing, truncated or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def record_path(out: Path, unit: WorkUnit) -> Path:
    return out / f".unit-{unit.key}.json"


def feats_path(out: Path, unit: WorkUnit) -> Path:
    return out / f".unit-{unit.key}.feats.npy"


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a))
    return buf.getvalue()


@dataclass
class UnitState:
    """What is on disk for one unit. ``done``: the record and everything it lists check out."""

    unit: WorkUnit
    record: dict[str, Any] | None = None  # the parsed record when it belongs to this job
    feats: np.ndarray | None = None  # the stored features when intact
    missing: list[str] = field(default_factory=list)  # listed image files that are absent
    damaged: list[str] = field(default_factory=list)  # listed image files with the wrong size or sha256
    problem: str | None = None  # why the record or the features cannot be used (None: they can)

    @property
    def done(self) -> bool:
        return self.record is not None and self.feats is not None and not self.missing and not self.damaged

    @property
    def bad_files(self) -> list[str]:
        return self.missing + self.damaged


def read_record(out: Path, unit: WorkUnit, job: str) -> tuple[dict[str, Any] | None, str | None]:
    """The unit's record if it parses, is complete and belongs to job digest ``job``; else (None, why)."""
    path = record_path(out, unit)
    if not path.exists():
        return None, "not run yet"
    rec = read_json(path)
    if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT:
        return None, f"{path.name} is damaged or from an older version"
    if rec.get("job") != job:
        return None, f"{path.name} belongs to another configuration"
    rows, sizes, feats, where = rec.get("rows"), rec.get("sizes"), rec.get("feats"), rec.get("unit")
    columns = set(MANIFEST_SCHEMA.names)
    ok = (
        isinstance(rows, list)
        and isinstance(sizes, list)
        and len(rows) == len(sizes) == unit.count
        and all(isinstance(r, dict) and set(r) == columns for r in rows)
        and all(isinstance(r["path"], str) and isinstance(r["sha256"], str) for r in rows)
        and all(isinstance(n, int) for n in sizes)
        and isinstance(feats, dict)
        and isinstance(where, dict)
        and where.get("start") == unit.start
        and where.get("count") == unit.count
        and [r["path"].split("/")[0] for r in rows] == [unit.wnid] * unit.count
    )
    if not ok:
        return None, f"{path.name} is incomplete"
    return rec, None


def load_feats(out: Path, unit: WorkUnit, rec: dict[str, Any]) -> np.ndarray | None:
    """The stored features if their size and sha256 match the record and they load as an array."""
    path = feats_path(out, unit)
    try:
        data = path.read_bytes()
    except OSError:
        return None
    want = rec.get("feats") or {}
    if len(data) != want.get("size") or sha256_bytes(data) != want.get("sha256"):
        return None
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    return arr if arr.ndim == 3 and arr.shape[1] == unit.count else None


def check_images(out: Path, rows: list[dict[str, Any]], sizes: list[int | None]) -> tuple[list[str], list[str]]:
    """(missing, damaged) among the files the rows list: size first (cheap), then sha256."""
    missing, damaged = [], []
    for row, size in zip(rows, sizes, strict=True):
        path = out / row["path"]
        try:
            st = path.stat()
        except OSError:
            missing.append(row["path"])
            continue
        if not path.is_file() or (size is not None and st.st_size != size):
            damaged.append(row["path"])
            continue
        got = file_digest(path)
        if got is None or got[1] != row["sha256"]:
            damaged.append(row["path"])
    return missing, damaged


def unit_state(out: Path, unit: WorkUnit, job: str, check_files: bool = True) -> UnitState:
    """Everything known about a unit on disk (reads and hashes its images when ``check_files``)."""
    rec, why = read_record(out, unit, job)
    state = UnitState(unit, problem=why)
    if rec is None:
        return state
    state.record = rec
    state.feats = load_feats(out, unit, rec)
    if state.feats is None:
        state.problem = f"{feats_path(out, unit).name} is missing or damaged"
    if check_files:
        state.missing, state.damaged = check_images(out, rec["rows"], rec["sizes"])
    return state


def record_jobs(out: Path) -> set[str]:
    """Job digests of the parseable unit records in the folder ("legacy" for records written before
    records named their job: they count as committed units of whatever configuration the folder holds)."""
    jobs = set()
    for p in out.glob(".unit-*.json"):
        rec = read_json(p)
        if isinstance(rec, dict) and isinstance(rec.get("rows"), list):
            jobs.add(rec["job"] if isinstance(rec.get("job"), str) else "legacy")
    return jobs


def timestamp() -> str:
    """Local time with its offset, as the run log and ``run.json`` record starts and finishes."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def append_run(out: Path, entry: dict[str, Any]) -> None:
    """One line for this run in the run log (O_APPEND: concurrent shards never interleave a line)."""
    line = (json.dumps(entry, default=str) + "\n").encode()
    fd = os.open(out / RUNS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_runs(out: Path) -> list[dict[str, Any]]:
    """The run log's entries (a torn last line from a crash is skipped)."""
    runs = []
    with contextlib.suppress(OSError):
        for line in (out / RUNS_FILE).read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    runs.append(entry)
    return runs


def remove_our_files(out: Path, wnids: list[str]) -> None:
    """Remove what distill runs write (images by our names, records, manifest, sheets); keep anything else."""
    for wnid in wnids:
        folder = out / wnid
        if folder.is_dir():
            for p in folder.iterdir():
                if p.is_file() and (OUR_IMAGE.fullmatch(p.name) or OUR_TEMP.fullmatch(p.name)):
                    p.unlink()
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when nothing foreign is left
        (out / f"contact_{wnid}.png").unlink(missing_ok=True)
    for pattern in (".unit-*", "manifest.parquet", "run.json", RUNS_FILE, JOB_FILE, ".*.tmp"):
        for p in out.glob(pattern):
            if p.is_file():
                p.unlink()
