"""``igds-fast verify``: check a finished set file by file, and repair a distilled one.

A distilled set is checked against its unit records (every image's size and sha256, the stored
features, each record's job), its ``metadata.parquet`` and dataset card against the records; a set
with only a metadata file (a random-real baseline, or a copy without the hidden records) against the
file's sha256. Files a distill run did not write (a README in a class folder) are listed and
otherwise ignored. A set of the previous layout (``manifest.parquet``, contact sheets at the root)
is checked as well and reported as such: the next distill run, or ``--repair``, moves it to this one.

Repairing runs the recorded job again (``run.run_job``): the units with a damaged or missing file
are sampled again from their seeds and only the damaged files are rewritten, byte-identical when the
same models and backend are used. It needs the models the set was made with (the embedded ones by
default; their sha256 must match the record) and, for a set made by an exported engine, that
engine (from the cache, or ``--engines``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import StepConfig
from ..errors import UserError
from ..models.embedded import resolve_models
from ..subsets import class_info
from .assemble import (
    card_bytes,
    card_state,
    manifest_rows,
    metadata_current,
    previous_layout,
    sheet_name,
    sheet_ok,
)
from .baseline import baseline_identity
from .dataset_card import CARD_FILE, random_real_card
from .events import QUIET, Events
from .identity import DistillConfig, all_units
from .image_manifest import METADATA_FILE, PREVIOUS_MANIFEST, set_manifest_path
from .job import DistillJob, model_hashes
from .job_file import read_job_file
from .run import run_job
from .state import file_digest, inside_set, read_json, refuse_links, unit_state


@dataclass
class Report:
    out: Path
    kind: str  # distilled | manifest (checked against metadata.parquet only)
    images: int = 0
    intact: int = 0
    missing: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    units: list[str] = field(default_factory=list)  # units to redo: damaged records or features, or bad images
    not_run: int = 0  # units never committed (an unfinished job or shard)
    manifest: str = "ok"  # ok | missing | damaged | stale (rows or schema differ) | previous layout
    sheets: list[str] = field(default_factory=list)  # contact sheets missing or unreadable
    card: str = "ok"  # ok | missing | stale (README.md differs from the card the set should have)
    previous: list[str] = field(default_factory=list)  # the previous layout's files still at the root
    run_json: str = "ok"  # ok | missing | incomplete
    foreign: list[str] = field(default_factory=list)  # files in class folders no run wrote (ignored)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.missing
            and not self.damaged
            and not self.units
            and not self.not_run
            and self.manifest == "ok"
            and not self.sheets
            and self.card == "ok"
            and not self.previous
            and self.run_json == "ok"
        )

    def problems(self) -> list[str]:
        """What is wrong, in words (empty when ``ok``)."""
        out = []
        if self.missing or self.damaged:
            out.append(f"{len(self.missing)} missing, {len(self.damaged)} damaged of {self.images} images")
        if self.units and not (self.missing or self.damaged):  # units with bad images are counted above
            out.append(f"{len(self.units)} unit record(s) or stored features damaged")
        if self.not_run:
            out.append(f"{self.not_run} unit(s) never made (an unfinished run or shard)")
        if self.previous:
            out.append(
                f"the previous layout ({', '.join(self.previous)} at the root, which dataset loaders misread): "
                "rerun the command that made the set to move it"
            )
        if self.manifest not in ("ok", "previous layout"):
            out.append(f"{METADATA_FILE} {self.manifest}")
        if self.sheets and not self.previous:
            out.append(f"contact sheet(s) {', '.join(self.sheets)} missing or unreadable")
        if self.card != "ok" and not self.previous:
            out.append(f"dataset card {CARD_FILE} {self.card}")
        if self.run_json != "ok":
            out.append(f"run.json {self.run_json}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "kind": self.kind,
            "ok": self.ok,
            "images": self.images,
            "intact": self.intact,
            "missing": self.missing,
            "damaged": self.damaged,
            "units_to_redo": self.units,
            "units_not_run": self.not_run,
            "manifest": self.manifest,
            "contact_sheets_bad": self.sheets,
            "card": self.card,
            "previous_layout": self.previous,
            "run_json": self.run_json,
            "foreign_files": self.foreign,
            "repaired": self.repaired,
        }


def _foreign_files(out: Path, wnids: list[str], listed: set[str]) -> list[str]:
    found = []
    for w in wnids:
        folder = out / w
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                rel = f"{w}/{p.name}"
                if rel not in listed and not p.name.startswith("."):
                    found.append(rel)
    return found


def _run_json_state(out: Path) -> str:
    run = read_json(out / "run.json")
    if run is None:
        return "missing"
    return "ok" if isinstance(run, dict) and run.get("complete") is True else "incomplete"


def verify_set(out: Path) -> Report:
    """Check every file of the set at ``out`` (reads and hashes each image)."""
    if not out.is_dir():
        raise UserError(f"'{out}' does not exist or is not a folder; give the folder of a distilled set")
    have = read_job_file(out)
    if have.config is None:
        if set_manifest_path(out).exists():
            return _verify_by_manifest(out)
        if have.damaged:
            raise UserError(
                f"'{out}': its job file (.igds-job.json) is damaged and it has no {METADATA_FILE}; "
                "rerun the distill command that made it (damaged state is redone)"
            )
        raise UserError(f"'{out}' holds no distilled set (no .igds-job.json or {METADATA_FILE})")
    try:
        cfg = DistillConfig.from_fingerprint(have.config)
        units = all_units(cfg)
    except (TypeError, ValueError, KeyError):
        raise UserError(f"'{out}/.igds-job.json' does not describe a distill job; rerun distill into it") from None
    refuse_links(out, cfg.wnids)  # a set read through a link is not this folder's set
    rep = Report(out, "distilled")
    rows: list[dict[str, Any]] = []
    complete = True
    for u in units:
        st = unit_state(out, u, have.digest)
        if st.problem == "not run yet":
            rep.not_run += 1
            complete = False
            continue
        if st.record is None:
            rep.units.append(u.key)
            complete = False
            continue
        rep.images += len(st.record["rows"])
        rep.missing += st.missing
        rep.damaged += st.damaged
        rep.intact += len(st.record["rows"]) - len(st.missing) - len(st.damaged)
        rows += st.record["rows"]
        if not st.done:
            rep.units.append(u.key)
            complete = complete and st.feats is not None
    listed = {r["path"] for r in rows}
    rep.foreign = _foreign_files(out, cfg.wnids, listed)
    rep.previous = previous_layout(out, cfg.wnids)
    metadata = out / METADATA_FILE
    if not metadata.exists():
        rep.manifest = "previous layout" if PREVIOUS_MANIFEST in rep.previous else "missing"
    elif manifest_rows(metadata) is None:
        rep.manifest = "damaged"
    elif complete and not metadata_current(out, rows):
        rep.manifest = "stale"
    rep.sheets = [sheet_name(w) for w in cfg.wnids if not sheet_ok(out / sheet_name(w))]
    if complete:
        rep.card = card_state(out, card_bytes(out, cfg, rows))
    elif not (out / CARD_FILE).exists():
        rep.card = "missing"
    rep.run_json = _run_json_state(out)
    return rep


def _verify_by_manifest(out: Path) -> Report:
    path = set_manifest_path(out)
    rows = manifest_rows(path)
    if rows is None:
        raise UserError(f"'{path}' is damaged and the set has no unit records to check against")
    outside = next((r["path"] for r in rows if not inside_set(out, r["path"])), None)
    if outside is not None:  # never read (or vouch for) a file outside the set
        raise UserError(f"'{path}' lists '{outside}', which is not a file inside the set (<class>/<file>)")
    rep = Report(out, "manifest", images=len(rows))
    if path.name == PREVIOUS_MANIFEST:
        rep.manifest = "previous layout"
    for r in rows:
        got = file_digest(out / r["path"])
        if got is None:
            rep.missing.append(r["path"])
        elif got[1] != r["sha256"]:
            rep.damaged.append(r["path"])
        else:
            rep.intact += 1
    wnids = sorted({r["wnid"] for r in rows})
    listed = {r["path"] for r in rows}
    rep.foreign = _foreign_files(out, wnids, listed)
    rep.previous = previous_layout(out, wnids)
    rep.run_json = _run_json_state(out)
    rep.card = _card_by_manifest(out, rows)
    return rep


def _card_by_manifest(out: Path, rows: list[dict[str, Any]]) -> str:
    """The card of a set without unit records: present, and for a random-real baseline the one its
    run gives."""
    if not (out / CARD_FILE).exists():
        return "missing"
    identity = baseline_identity(read_json(out / "run.json"))
    return "ok" if identity is None else card_state(out, random_real_card(identity, rows))


def repair_job(
    out: Path,
    denoiser: Path | None = None,
    vae: str | None = None,
    critics: Path | None = None,
    engines: Path | None = None,
    engine_cache: Path | None = None,
    device: str = "cpu",
    wait: bool = False,
) -> DistillJob:
    """The distill job that made ``out``, rebuilt from its job file, with these models; refuses
    models or an engine other than the recorded ones."""
    have = read_job_file(out)
    if have.config is None:
        raise UserError(
            f"'{out}' has no readable job file (.igds-job.json): only a distilled set can be repaired; "
            "a random-real baseline is rebuilt with `igds-fast baseline random-real`"
        )
    cfg = DistillConfig.from_fingerprint(have.config)
    try:
        step = StepConfig.from_record(cfg.step)
    except TypeError:
        raise UserError(
            f"'{out}' was made by another igds-fast version (its step settings are {sorted(cfg.step)}); "
            "repair it with that version"
        ) from None
    models = resolve_models(denoiser, vae, critics, step.guidance)
    got = model_hashes(models, step.guidance)
    for name, option in (("denoiser", "--denoiser"), ("vae", "--vae"), ("critics", "--critics")):
        want = cfg.models.get(name)
        if got.get(name) != want:
            raise UserError(
                f"the set was made with another {name} (sha256 {str(want)[:12]}…, given {str(got.get(name))[:12]}…); "
                f"pass {option} PATH to the one it was made with"
            )
    backend, dtype = cfg.backend, cfg.precision
    if engines is not None:  # the given engine fixes backend and precision (its id is checked)
        backend, dtype = "auto", None
    elif backend != "eager" and cfg.engine_key is None:
        raise UserError(f"the set was made with engine {cfg.engine_id}; pass --engines DIR to that engine folder")
    return DistillJob(
        out=out,
        classes=[class_info(w) for w in cfg.wnids],
        ipc=cfg.ipc,
        step=step,
        models=models,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        engines=engines,  # None and an exported backend: the cache entry of the recorded key
        device=device,
        dtype=dtype,
        image_format=cfg.image_format,
        resolution=cfg.resolution,
        backend=backend,
        engine_cache=engine_cache,
        wait=wait,
    )


def repair_set(out: Path, events: Events = QUIET, **options: Any) -> tuple[Report, dict[str, Any]]:
    """Redo the damaged units of the set at ``out``; returns the report after repairing and the run's summary."""
    job = repair_job(out, **options)
    summary = run_job(job, events)
    rep = verify_set(out)
    rep.repaired = list(summary.get("repaired", []))
    return rep, summary
