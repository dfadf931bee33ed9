"""A distill folder's state on disk, read defensively: unit records, stored features, the image
files they list, and the run log (the job file is read by ``job_file.py``).

Nothing here follows a link. A file of the folder's state that is a symbolic link (or anything but
a regular file) reads as missing; before a run writes, ``refuse_links`` refuses a link among the
names it writes (a class folder, a record, the run log, ``run.json``...) in one line; removing a run
(``remove_our_files``, ``--overwrite``) deletes only the images its unit records list, with their
sha256, in real class folders, and never through a link.

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
  .igds-pending-<wnid>-<chunk>.json  a unit's image names and sha256 while they are written
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..imagefolder import digest as digest  # defined below jobs so evaluation shares it; re-exported here
from ..imageio import LinkRefused, open_nofollow, read_nofollow, write_limit
from ..sampling import WorkUnit
from .image_manifest import MANIFEST_SCHEMA

JOB_FILE = ".igds-job.json"
RUNS_FILE = ".igds-runs.jsonl"
RECORD_FORMAT = "igds-fast/unit-v2"
# Names a distill run writes into a class folder (what --overwrite and a new configuration may remove).
OUR_IMAGE = re.compile(r"\d{5}\.(png|jpg)")
OUR_TEMP = re.compile(r"\..+\.\d+(-\d+)?\.tmp")
# What a run writes at the folder's root besides records, features and hidden files.
OUR_ROOT_FILES = ("run.json", "metadata.parquet", "manifest.parquet", "README.md")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> tuple[int, str] | None:
    """(size, sha256) of a file; None when it is missing, unreadable, a link or not a regular file."""
    try:
        data = read_nofollow(path)
    except OSError:
        return None
    return len(data), sha256_bytes(data)


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it is missing, truncated, not JSON or a link."""
    try:
        return json.loads(read_nofollow(path))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def set_member(rel: object) -> bool:
    """Whether ``rel`` names a file of a set as its records and manifests do: ``<class>/<file>``,
    relative, neither part empty, hidden, ``.`` or ``..`` (nothing outside the set's folder)."""
    if not isinstance(rel, str) or "\\" in rel or "\0" in rel:
        return False
    parts = rel.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") for p in parts)


def inside_set(out: Path, rel: object) -> bool:
    """Whether ``rel`` is a ``set_member`` that stays inside ``out`` once links are resolved."""
    if not set_member(rel):
        return False
    root = os.path.realpath(out)
    return os.path.realpath(os.path.join(root, str(rel))).startswith(root + os.sep)


def refuse_links(out: Path, wnids: list[str]) -> None:
    """Refuse, in one line, a symbolic link where a run writes: a class folder of ``wnids`` or one of
    the run's files at the root (records, features, job file, run log, locks, ``run.json``, metadata,
    contact sheets). A class folder's name taken by a file is refused too."""
    for wnid in wnids:
        folder = out / wnid
        if folder.is_symlink():
            raise LinkRefused(folder, f"class folder '{folder}'")
        if folder.exists() and not folder.is_dir():
            raise UserError(f"'{folder}' is a file where class {wnid}'s folder goes; remove it")
    with contextlib.suppress(OSError):
        for entry in os.scandir(out):
            ours = entry.name.startswith((".igds-", ".unit-")) or entry.name in OUR_ROOT_FILES
            if ours and entry.is_symlink():
                raise LinkRefused(out / entry.name)


def remove_stale_temps(out: Path, wnids: list[str]) -> list[str]:
    """Remove the half-written files (``OUR_TEMP``) a killed run left in the class folders of ``wnids``;
    the caller holds the writer lock of the shard those classes belong to, so no live writer owns one.
    Returns what was removed, relative to ``out``."""
    gone = []
    for wnid in wnids:
        folder = out / wnid
        if folder.is_symlink() or not folder.is_dir():
            continue
        for p in folder.iterdir():
            if OUR_TEMP.fullmatch(p.name) and p.is_file() and not p.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    gone.append(f"{wnid}/{p.name}")
    return gone


def class_folder(out: Path, wnid: str) -> Path:
    """``out/<wnid>``, created; a link there is refused (images are never written through one)."""
    folder = out / wnid
    with contextlib.suppress(FileExistsError):
        folder.mkdir()
    if folder.is_symlink():
        raise LinkRefused(folder, f"class folder '{folder}'")
    return folder


def record_path(out: Path, unit: WorkUnit) -> Path:
    return out / f".unit-{unit.key}.json"


def feats_path(out: Path, unit: WorkUnit) -> Path:
    return out / f".unit-{unit.key}.feats.npy"


def pending_path(out: Path, unit: WorkUnit) -> Path:
    """The names and sha256 of a unit's images while they are written (before its record)."""
    return out / f".igds-pending-{unit.key}.json"


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
        and all(set_member(r["path"]) and isinstance(r["sha256"], str) for r in rows)
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
        data = read_nofollow(path)
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
            st = path.lstat()
        except OSError:
            missing.append(row["path"])
            continue
        if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):  # a link is damage
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
    """One line for this run in the run log (O_APPEND: concurrent shards never interleave a line).

    Never through a link, nor into a file with other hard links (refused in one line). A line cut
    short (a crash, a full disk) is ended before the next is written, so it costs only itself."""
    path = out / RUNS_FILE
    line = (json.dumps(entry, default=str) + "\n").encode()
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        st = os.fstat(fd)
        if st.st_nlink > 1:
            raise UserError(f"'{path}' has other hard links: igds-fast never writes into a shared file; remove it")
        if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
            line = b"\n" + line
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as e:
        raise write_limit(path, e) from None
    finally:
        os.close(fd)


def read_runs(out: Path) -> list[dict[str, Any]]:
    """The run log's entries (a torn line from a crash is skipped)."""
    runs = []
    with contextlib.suppress(OSError):
        for line in read_nofollow(out / RUNS_FILE).decode(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    runs.append(entry)
    return runs


def listed_images(out: Path) -> dict[str, set[str]]:
    """{path: sha256s} of every image the folder's parseable unit records (any job's) and pending
    lists name, by the names records use (``set_member``)."""
    listed: dict[str, set[str]] = {}
    for p in out.glob(".unit-*.json"):
        rec = read_json(p)
        rows = rec.get("rows") if isinstance(rec, dict) else None
        for r in rows if isinstance(rows, list) else []:
            if isinstance(r, dict) and set_member(r.get("path")) and isinstance(r.get("sha256"), str):
                listed.setdefault(r["path"], set()).add(r["sha256"])
    for p in out.glob(".igds-pending-*.json"):  # units interrupted before their record
        pending = read_json(p)
        images = pending.get("images") if isinstance(pending, dict) else None
        for rel, sha in images.items() if isinstance(images, dict) else []:
            if set_member(rel) and isinstance(sha, str):
                listed.setdefault(rel, set()).add(sha)
    return listed


def _remove(path: Path) -> None:
    """Remove the name ``path`` when it is a regular file or a link (never what a link points to)."""
    with contextlib.suppress(FileNotFoundError):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            path.unlink()


def remove_our_files(out: Path, wnids: list[str]) -> None:
    """Remove what distill runs wrote; keep anything else.

    Images: only those the folder's unit records (or a cut-short unit's pending list) name, holding
    the bytes recorded (sha256), in real class folders (a link to a folder is never entered); with
    them our temporary files. At the root: records, features, pending lists, the job file, run log,
    metadata and ``run.json``, the classes' contact sheets. A class folder left empty is removed."""
    listed = listed_images(out)
    for wnid in wnids:
        folder = out / wnid
        if not set_member(f"{wnid}/x") or folder.is_symlink() or not folder.is_dir():
            continue
        for p in folder.iterdir():
            rel = f"{wnid}/{p.name}"
            st = p.lstat()
            if not stat.S_ISREG(st.st_mode):
                continue
            if OUR_TEMP.fullmatch(p.name):
                p.unlink()
            elif rel in listed:
                got = file_digest(p)
                if got is not None and got[1] in listed[rel]:
                    p.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when nothing foreign is left
    for wnid in wnids:
        if set_member(f"{wnid}/x"):
            _remove(out / f"contact_{wnid}.png")
            _remove(out / f".igds-contact-{wnid}.png")
    patterns = (".unit-*", ".igds-pending-*", "metadata.parquet", "manifest.parquet", "run.json", RUNS_FILE, JOB_FILE)
    for pattern in (*patterns, ".*.tmp"):
        for p in out.glob(pattern):
            _remove(p)
