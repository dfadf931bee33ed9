"""Who owns a distill folder: its job file (``.igds-job.json``: the configuration, the digest its
units are recorded under, the request key) and the claim that checks a run may write there.

A run reads the job file once before it loads any weights (``read_job_file``: the backend to continue
with, whether the job is already finished) and once more under the claim lock (``prepare_out``), since
another writer may have claimed the folder in between.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import complete_step, step_identity
from ..errors import UserError
from ..imageio import write_atomic
from .identity import DistillConfig
from .lock import WriterLocks, claim_lock
from .state import JOB_FILE, OUR_TEMP, digest, read_json, record_jobs, refuse_links, remove_our_files

JOB_FORMAT = "igds-fast/job-v2"


@dataclass(frozen=True)
class JobFile:
    """What a folder's job file says. ``config`` is None when there is no readable one (``found``
    tells a missing file from a damaged one); ``digest`` is the one the folder's units were recorded
    under, which an older release may have spelled differently from ``DistillConfig.digest``."""

    found: bool = False
    config: dict[str, Any] | None = None
    digest: str = ""
    request: str | None = None

    @property
    def damaged(self) -> bool:
        return self.found and self.config is None


def read_job_file(out: Path) -> JobFile:
    """The job file; an older plain-config file is read as one.

    Its config is completed with the fields added since it was written and its step read as its
    identity (``step_identity``), so it compares equal to the same options today."""
    path = out / JOB_FILE
    if not path.exists():
        return JobFile()
    data = read_json(path)
    if not isinstance(data, dict):
        return JobFile(found=True)
    stored = None
    if data.get("format") == JOB_FORMAT and isinstance(data.get("config"), dict):
        cfg, stored = data["config"], data.get("digest")
    elif "wnids" in data and "ipc" in data:  # written by igds-fast before job-v2
        cfg = data
    else:
        return JobFile(found=True)
    try:
        full = DistillConfig.from_fingerprint(cfg).fingerprint()  # fills fields added since
        full["step"] = step_identity(full["step"])
    except (TypeError, ValueError, AttributeError):
        return JobFile(found=True)
    job = stored if isinstance(stored, str) else digest(full)
    return JobFile(found=True, config=full, digest=job, request=data.get("request"))


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
    --overwrite, before any lock or file is made in it). A job file counts as a run even when damaged,
    so only its presence is checked."""
    return out.is_dir() and bool(_foreign(out)) and not (out / JOB_FILE).exists() and not record_jobs(out)


def _record_wnids(out: Path) -> set[str]:
    return {p.name[len(".unit-") :].rsplit("-", 1)[0] for p in out.glob(".unit-*.json")}


def prepare_out(
    out: Path, cfg: DistillConfig, overwrite: bool, request: str | None = None, locks: WriterLocks | None = None
) -> str:
    """Check the folder ``out`` holds this same job, or claim it; returns the job digest units are
    recorded under. ``out`` exists: the caller made it (``outdir.make_out_folder``) to take its locks.

    Under the claim lock: a folder holding this configuration is ours; one holding another
    configuration is refused unless no unit of it was ever committed (a failed run claims nothing)
    or ``overwrite`` (which removes only files distill writes). Handing the folder over needs every
    other writer gone. A damaged job file is rewritten when the committed units are ours."""
    want = cfg.fingerprint()
    with claim_lock(out):
        have = read_job_file(out)
        old = [w for w in (have.config or {}).get("wnids", []) if isinstance(w, str)]
        refuse_links(out, sorted(set(cfg.wnids) | set(old)))
        if have.config == want:
            # this job, perhaps recorded by an older igds-fast: carry on under the folder's own digest
            if have.request != request and request is not None:
                write_job_file(out, cfg, request, have.digest)
            return have.digest
        recorded, ours = record_jobs(out), cfg.digests()
        others = recorded - ours
        # units of this job, recorded under today's digest or an older release's spelling of it
        mine = cfg.digest if cfg.digest in recorded or not recorded & ours else min(recorded & ours)
        if not have.found and not others:
            if holds_other_files(out):  # --overwrite replaces runs, never a folder of other files
                raise UserError(not_a_run(out))
            write_job_file(out, cfg, request, mine)
            return mine
        if others and not overwrite:
            if have.config is not None:
                why = f"another configuration ({_differences(have.config, want)})"
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
        if others or not record_jobs(out):  # nothing of ours is committed: clear what the old runs left
            remove_our_files(out, sorted(set(old) | _record_wnids(out) | set(cfg.wnids if others else [])))
        write_job_file(out, cfg, request, mine)
        return mine
