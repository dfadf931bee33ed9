"""The distill run: IPC images per class, written as an ImageFolder with a manifest.

Durability: each file is written to a temporary name (unique per process and thread), flushed and
renamed; a unit (class, chunk) is done only when its images, its critic features (the memory of
later chunks) and finally its record ``.unit-<wnid>-<chunk>.json`` are on disk, and the record lists
every file's size and sha256. A rerun checks all of that (``state.unit_state``): a unit whose record
is missing or damaged, whose features are damaged, or one of whose images is missing, truncated or
altered, is run again, and only the files that differ are rewritten (the same seeds give the same
bytes). The manifest, ``run.json`` and the contact sheets are assembled from the records once every
unit of the job checks out, by whichever shard or worker finishes last, and rewritten only when
their content changes.
"""

from __future__ import annotations

import errno
import io
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..config import complete_step, step_identity, step_spellings
from ..errors import UserError
from ..imageio import encode_image, labelled_sheet, to_uint8, write_atomic
from ..sampling import StepEngine, WorkUnit, class_units, run_class, shard_classes
from ..seeds import sample_seed
from ..subsets import class_info
from .events import QUIET, Events
from .image_manifest import (
    NEAR_CONSTANT_STD,
    image_name,
    image_row,
    near_constant_classes,
    read_image_manifest,
    write_image_manifest,
)
from .lock import WriterLocks, claim_lock
from .state import (
    JOB_FILE,
    OUR_TEMP,
    RECORD_FORMAT,
    UnitState,
    append_run,
    digest,
    feats_path,
    file_digest,
    npy_bytes,
    read_json,
    read_runs,
    record_jobs,
    record_path,
    remove_our_files,
    sha256_bytes,
    unit_state,
)

JOB_FORMAT = "igds-fast/job-v2"


@dataclass
class DistillConfig:
    """What defines the output; two runs with equal configs produce byte-identical sets."""

    wnids: list[str]
    labels: list[int]  # the denoiser's label of each class
    ipc: int
    batch_size: int
    seed: int
    image_format: str = "png"
    resolution: int | None = None  # resize written images (bicubic); None keeps the model's size
    step: dict[str, Any] = field(default_factory=dict)  # StepConfig.identity() of the engine
    models: dict[str, str | None] = field(default_factory=dict)  # sha256 of denoiser, vae, critics
    backend: str = "eager"
    engine_id: str | None = None
    precision: str = "fp32"  # the denoiser's precision (eager dtype, or the engine's)
    engine_key: str | None = None  # an engine from the cache: the digest of what it is built from

    def validate(self) -> DistillConfig:
        if self.ipc <= 0:
            raise UserError(f"--ipc must be >= 1, got {self.ipc}")
        if self.batch_size <= 0:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.resolution is not None and self.resolution < 8:
            raise UserError(f"--resolution must be >= 8, got {self.resolution}")
        if self.image_format not in ("png", "jpeg"):
            raise UserError(f"unknown --format '{self.image_format}': use png or jpeg")
        if not self.wnids:
            raise UserError("no classes to distill")
        return self

    def fingerprint(self) -> dict[str, Any]:
        """The fields that change images. The backend and precision may differ only by numerics, so
        they count. A cached engine counts by what it is built from (``engine_key``): re-exporting it
        after the cache was cleared gives a new manifest id (its creation time) but the same step."""
        fp = asdict(self)
        if self.engine_key is not None:
            fp.pop("engine_id")
        return fp

    @property
    def digest(self) -> str:
        return digest(self.fingerprint())

    def digests(self) -> set[str]:
        """Every digest this job's units may be recorded under: today's, and those of releases which wrote
        the step's added fields out at their old values (``step_spellings``)."""
        fp = self.fingerprint()  # its step is the identity: the first spelling, so today's digest is among them
        return {digest(fp | {"step": step}) for step in step_spellings(self.step)}

    @classmethod
    def from_fingerprint(cls, fp: dict[str, Any]) -> DistillConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in fp.items() if k in names})


def all_units(cfg: DistillConfig, wnids: list[str] | None = None) -> list[WorkUnit]:
    labels = dict(zip(cfg.wnids, cfg.labels, strict=True))
    return [u for w in (wnids or cfg.wnids) for u in class_units(w, labels[w], cfg.ipc, cfg.batch_size)]


# ---------------------------------------------------------------- the job file: who owns the folder


def read_job_file(out: Path) -> dict[str, Any] | None:
    """The job file as {"config", "digest", "request"}; an older plain-config file is read as one;
    None when it is missing; {"damaged": True} when it cannot be parsed.

    "config" is completed with the fields added since it was written and its step read as its
    identity (``step_identity``), so it compares equal to the same options today; "digest" stays the
    one the folder's units were recorded under."""
    path = out / JOB_FILE
    if not path.exists():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        return {"damaged": True}
    stored = None
    if data.get("format") == JOB_FORMAT and isinstance(data.get("config"), dict):
        cfg, stored = data["config"], data.get("digest")
    elif "wnids" in data and "ipc" in data:  # written by igds-fast before job-v2
        cfg = data
    else:
        return {"damaged": True}
    try:
        full = DistillConfig.from_fingerprint(cfg).fingerprint()  # fills fields added since
        full["step"] = step_identity(full["step"])
    except (TypeError, ValueError, AttributeError):
        return {"damaged": True}
    job = stored if isinstance(stored, str) else digest(full)
    return {"config": full, "digest": job, "request": data.get("request")}


def write_job_file(out: Path, cfg: DistillConfig, request: str | None, job: str | None = None) -> None:
    """The job file; ``job``: the digest units are recorded under when the folder keeps an older one."""
    body = {"format": JOB_FORMAT, "config": cfg.fingerprint(), "digest": job or cfg.digest, "request": request}
    write_atomic(out / JOB_FILE, json.dumps(body, sort_keys=True).encode())


def _differences(have: dict[str, Any], want: dict[str, Any], prefix: str = "") -> str:
    """What differs, field by field, nested records included (the step with its added fields at their
    old values where a record leaves them out): "step.clip_guard: 0.0 there, 0.5 here", "models.vae"."""
    parts = []
    for k in sorted(set(have) | set(want)):
        a, b = have.get(k), want.get(k)
        if prefix == "" and k == "step" and isinstance(a, dict) and isinstance(b, dict):
            a, b = complete_step(a), complete_step(b)
        if isinstance(a, dict) and isinstance(b, dict):
            if a != b:
                parts.append(_differences(a, b, f"{prefix}{k}."))
        elif a != b:
            simple = all(isinstance(v, (str, int, float, type(None))) for v in (a, b))
            name = prefix + k
            parts.append(f"{name}: {a!r} there, {b!r} here" if simple and len(repr(a) + repr(b)) < 60 else name)
    return "; ".join(parts)


def _foreign(out: Path) -> list[Path]:
    """What in ``out`` a distill run did not write (our hidden files and temporaries excluded)."""
    return [p for p in out.iterdir() if not p.name.startswith(".igds-") and not OUR_TEMP.fullmatch(p.name)]


def not_a_run(out: Path) -> str:
    return (
        f"--out '{out}' is not empty and holds no distill run (--overwrite replaces only a distill run); "
        "choose an empty or new folder"
    )


def holds_other_files(out: Path) -> bool:
    """Whether ``out`` is a folder of files distill did not write and no run of it (refused, even with
    --overwrite, before any lock or file is made in it)."""
    return out.is_dir() and bool(_foreign(out)) and read_job_file(out) is None and not record_jobs(out)


def _record_wnids(out: Path) -> set[str]:
    return {p.name[len(".unit-") :].rsplit("-", 1)[0] for p in out.glob(".unit-*.json")}


def prepare_out(
    out: Path, cfg: DistillConfig, overwrite: bool, request: str | None = None, locks: WriterLocks | None = None
) -> str:
    """Create ``out`` or check it holds this same job; returns the job digest units are recorded under.

    Under the claim lock: a folder holding this configuration is ours; one holding another
    configuration is refused unless no unit of it was ever committed (a failed run claims nothing)
    or ``overwrite`` (which removes only files distill writes). Handing the folder over needs every
    other writer gone. A damaged job file is rewritten when the committed units are ours."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".igds-write-probe-{threading.get_native_id()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to --out '{out}': {e.strerror or e}") from None
    want = cfg.fingerprint()
    with claim_lock(out):
        have = read_job_file(out)
        if have is not None and not have.get("damaged") and have["config"] == want:
            # this job, perhaps recorded by an older igds-fast: carry on under the folder's own digest
            if have.get("request") != request and request is not None:
                write_job_file(out, cfg, request, have["digest"])
            return have["digest"]
        recorded, ours = record_jobs(out), cfg.digests()
        others = recorded - ours
        # units of this job, recorded under today's digest or an older release's spelling of it
        mine = cfg.digest if cfg.digest in recorded or not recorded & ours else min(recorded & ours)
        if have is None and not others:
            if holds_other_files(out):  # --overwrite replaces runs, never a folder of other files
                raise UserError(not_a_run(out))
            write_job_file(out, cfg, request, mine)
            return mine
        if others and not overwrite:
            if have is not None and not have.get("damaged"):
                why = f"another configuration ({_differences(have['config'], want)})"
            else:
                why = "units of another configuration (its job file is missing or damaged)"
            raise UserError(
                f"'{out}' holds a distill run with {why}; use another --out, the options it was begun "
                "with (a default may have changed since), or --overwrite to replace it"
            )
        if locks is not None and not locks.alone():
            raise UserError(
                f"'{out}' is being written by another shard of another configuration; "
                "wait for it, or choose another --out"
            )
        old = have["config"]["wnids"] if have is not None and not have.get("damaged") else []
        if others or not record_jobs(out):  # nothing of ours is committed: clear what the old runs left
            remove_our_files(out, sorted(set(old) | _record_wnids(out) | set(cfg.wnids if others else [])))
        write_job_file(out, cfg, request, mine)
        return mine


def clear_job(out: Path, job: dict[str, Any]) -> None:
    """Remove what an earlier run wrote (images by our names, records, manifest); nothing else."""
    remove_our_files(out, list(job.get("wnids", [])))


# ---------------------------------------------------------------- writing units


def resize(img: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or img.shape[0] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` unless the file already holds exactly these bytes; True when written."""
    have = file_digest(path)
    if have is not None and have == (len(data), sha256_bytes(data)):
        return False
    write_atomic(path, data)
    return True


class UnitWriter:
    """Encodes and writes a unit's images on worker threads while the device runs the next unit.

    Only files whose bytes differ from what is on disk are written, so redoing a unit to repair one
    image leaves its other files (and their times) untouched."""

    def __init__(self, out: Path, cfg: DistillConfig, job: str, events: Events = QUIET, workers: int = 2):
        self.out, self.cfg, self.job, self.events = out, cfg, job, events
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.pending: list[Future] = []
        self.max_pending = 2
        self.repaired: list[str] = []
        self.changed: list[str] = []  # regenerated images whose bytes differ from their record
        self._lock = threading.Lock()

    def submit(self, res: Any, images: np.ndarray, seconds: float, before: UnitState) -> None:
        while len(self.pending) >= self.max_pending:  # bound memory: wait for the oldest unit
            self.pending.pop(0).result()
        self.pending.append(self.pool.submit(self._write, res, images, seconds, before))

    def _write(self, res: Any, images: np.ndarray, seconds: float, before: UnitState) -> None:
        unit: WorkUnit = res.unit
        cfg, out = self.cfg, self.out
        ext = "png" if cfg.image_format == "png" else "jpg"
        old = {r["path"]: r["sha256"] for r in before.record["rows"]} if before.record else {}
        rows, sizes, written = [], [], []
        try:
            (out / unit.wnid).mkdir(exist_ok=True)
            for k, idx in enumerate(unit.indices):
                pixels = resize(images[k], cfg.resolution)
                data = encode_image(pixels, cfg.image_format)
                rel = f"{unit.wnid}/{image_name(idx, ext)}"
                if _write_if_changed(out / rel, data):
                    written.append(rel)
                    if rel in old and old[rel] != sha256_bytes(data):
                        with self._lock:
                            self.changed.append(rel)
                rows.append(
                    image_row(
                        unit.wnid,
                        class_info(unit.wnid).imagenet_index,
                        idx,
                        sample_seed(cfg.seed, unit.label, idx),
                        rel,
                        data,
                        cfg.backend,
                        cfg.engine_id,
                        float(res.log_q[k]),
                        float(res.h2[k]),
                        pixels,
                    )
                )
                sizes.append(len(data))
            feats = npy_bytes(res.feats)
            if _write_if_changed(feats_path(out, unit), feats):
                written.append(feats_path(out, unit).name)
            record = {
                "format": RECORD_FORMAT,
                "job": self.job,
                "unit": asdict(unit),
                "rows": rows,
                "sizes": sizes,
                "feats": {"size": len(feats), "sha256": sha256_bytes(feats)},
                "seconds": seconds,
            }
            same = before.record is not None and {k: v for k, v in before.record.items() if k != "seconds"} == {
                k: v for k, v in record.items() if k != "seconds"
            }
            if not same:  # the commit point
                write_atomic(record_path(out, unit), json.dumps(record).encode())
                written.append(record_path(out, unit).name)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise UserError(
                    f"disk full while writing class {unit.wnid}: free space and rerun; finished units are kept"
                ) from None
            raise UserError(f"cannot write class {unit.wnid} under '{out}': {e.strerror or e}") from None
        first_run = before.problem == "not run yet"
        if first_run:
            self.events.emit(
                "unit_done", wnid=unit.wnid, chunk=unit.chunk, images=unit.count, seconds=round(seconds, 3)
            )
        else:
            files = [w for w in written if not w.startswith(".unit-")] or written
            with self._lock:
                self.repaired += files
            self.events.emit(
                "repaired",
                wnid=unit.wnid,
                chunk=unit.chunk,
                why=before.problem or "damaged images",
                files=files,
                identical=not any(f in self.changed for f in files),
            )

    def drain(self) -> None:
        try:
            for f in self.pending:
                f.result()
        finally:
            self.pending.clear()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def distill_class(
    engine: StepEngine,
    cfg: DistillConfig,
    out: Path,
    wnid: str,
    label: int,
    writer: UnitWriter,
    states: dict[str, UnitState],
    on_images: Callable[[int], None] | None = None,
) -> int:
    """Run the class's units that are not done, in chunk order; returns how many images were sampled."""
    made = 0
    t0 = time.perf_counter()

    def done(unit: WorkUnit) -> np.ndarray | None:  # a finished chunk: its stored features join the memory
        st = states[unit.key]
        return st.feats if st.done else None

    for res in run_class(engine, cfg.seed, class_units(wnid, label, cfg.ipc, cfg.batch_size), done=done):
        images = to_uint8(engine.decode(res.x0)).cpu().numpy()
        writer.submit(res, images, time.perf_counter() - t0, states[res.unit.key])
        made += res.unit.count
        if on_images is not None:
            on_images(res.unit.count)
        t0 = time.perf_counter()
    return made


# ---------------------------------------------------------------- assembling the set


def _sheet_ok(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # any decoder error: missing, truncated, not an image
        return False


def _manifest_rows(path: Path) -> list[dict[str, Any]] | None:
    try:
        return read_image_manifest(path)
    except (UserError, OSError, ValueError):
        return None


def _same_rows(a: list[dict[str, Any]] | None, b: list[dict[str, Any]]) -> bool:
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
    _write_if_changed(out / f"contact_{wnid}.png", buf.getvalue())  # the same sheet is not rewritten


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
        "manifest": not _same_rows(_manifest_rows(out / "manifest.parquet"), rows),
        "sheets": [w for w in cfg.wnids if not _sheet_ok(out / f"contact_{w}.png")],
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
            run_entry = {"finished": _now(), "images_made": 0, "repaired": [], "rebuilt": rebuilt or ["run.json"]}
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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


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


# ---------------------------------------------------------------- one run


def shard_states(out: Path, cfg: DistillConfig, job: str, shard: tuple[int, int]) -> dict[str, UnitState]:
    """The state of every unit of this shard's classes (every recorded file is checked)."""
    mine = shard_classes(cfg.wnids, *shard)
    return {u.key: unit_state(out, u, job) for u in all_units(cfg, mine)}


def run_distill(
    engine: StepEngine,
    cfg: DistillConfig,
    out: Path,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: bool = False,
    events: Events = QUIET,
    run_info: dict[str, Any] | None = None,
    prepared: str | None = None,
    request: str | None = None,
    wait: bool = False,
    locks: WriterLocks | None = None,
) -> dict[str, Any]:
    """Distill this shard's classes; returns a summary (images made, files repaired, seconds, img/s,
    complete).

    ``locks``: the writer locks the caller holds on ``out`` (else they are taken here, waiting with
    ``wait``); ``prepared``: the job digest ``prepare_out`` returned to the caller (a Ray driver), which holds the
    locks and has claimed ``out``."""
    cfg.validate()
    own_locks = None
    if not prepared and locks is None:
        if out.exists() and not out.is_dir():
            raise UserError(f"--out '{out}' is a file; choose a folder")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot write to --out '{out}': {e.strerror or e}") from None
        own_locks = locks = WriterLocks(out, shard).acquire(wait=wait)
    try:
        job = prepared or prepare_out(out, cfg, overwrite, request, locks)
        return _run_units(engine, cfg, out, job, shard, progress, events, run_info or {}, request)
    finally:
        if own_locks is not None:
            own_locks.release()


def _run_units(
    engine: StepEngine,
    cfg: DistillConfig,
    out: Path,
    job: str,
    shard: tuple[int, int],
    progress: bool,
    events: Events,
    run_info: dict[str, Any],
    request: str | None,
) -> dict[str, Any]:
    from tqdm import tqdm

    started = _now()
    labels = dict(zip(cfg.wnids, cfg.labels, strict=True))
    mine = shard_classes(cfg.wnids, *shard)
    states = shard_states(out, cfg, job, shard)
    for st in states.values():
        if not st.done and st.problem != "not run yet":
            events.emit(
                "damaged",
                wnid=st.unit.wnid,
                chunk=st.unit.chunk,
                missing=st.missing,
                damaged=st.damaged,
                problem=st.problem,
            )
    todo = sum(st.unit.count for st in states.values() if not st.done)
    bar = tqdm(total=todo, desc="distill", unit="img", disable=not progress or todo == 0, smoothing=0.1)
    writer = UnitWriter(out, cfg, job, events)
    t0 = time.perf_counter()
    made = sampled = 0
    changed: set[str] = set()
    try:
        for wnid in mine:
            tc = time.perf_counter()
            fresh = sum(st.unit.count for st in states.values() if st.unit.wnid == wnid and st.problem == "not run yet")
            n = distill_class(engine, cfg, out, wnid, labels[wnid], writer, states, on_images=bar.update)
            sampled += n
            if n:
                writer.drain()
                made += fresh
                changed.add(wnid)
                events.emit("class_done", wnid=wnid, images=fresh, seconds=round(time.perf_counter() - tc, 3))
        writer.drain()
    finally:
        writer.close()
        bar.close()
    seconds = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "images_made": made,
        "repaired": sorted(writer.repaired),
        "seconds": seconds,
        "img_per_s": sampled / seconds if sampled else None,
    }
    if writer.changed:
        summary["changed"] = sorted(writer.changed)  # regenerated with other bytes than recorded
    entry = None
    if sampled:
        entry = {
            "started": started,
            "finished": _now(),
            "shard": f"{shard[0]}/{shard[1]}",
            "images_made": made,
            "repaired": summary["repaired"],
            "seconds": round(seconds, 3),
            "img_per_s": summary["img_per_s"],
            "backend": cfg.backend,
            "precision": cfg.precision,
            "engine_id": cfg.engine_id,
        } | run_info
    # units that checked out before this run are not hashed again; the ones just written are
    unchanged = {k: st for k, st in states.items() if st.done}
    summary["complete"] = finalize(out, cfg, job, entry, changed, request, unchanged, events)
    return summary


def is_finished(
    out: Path, request: str, shard: tuple[int, int]
) -> tuple[DistillConfig, str, dict[str, UnitState]] | None:
    """(config, job digest, unit states) when ``out`` holds the job of this ``request`` key with every unit of
    this shard checking out: the run has nothing to sample, so no weights need loading."""
    have = read_job_file(out) if out.is_dir() else None
    if have is None or have.get("damaged") or have.get("request") != request:
        return None
    cfg = DistillConfig.from_fingerprint(have["config"])
    try:
        states = shard_states(out, cfg, have["digest"], shard)
    except (KeyError, TypeError, ValueError):
        return None
    if not all(st.done for st in states.values()):
        return None
    return cfg, have["digest"], states
