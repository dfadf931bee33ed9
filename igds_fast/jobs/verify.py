"""``igds-fast verify``: check a finished set file by file, and repair a distilled one.

A distilled set is checked against its unit records (every image's size and sha256, the stored
features, each record's job) and its manifest against the records; a set with only a manifest
(a random-real baseline, or a copy without the hidden records) against the manifest's sha256.
Files a distill run did not write (a README in a class folder) are listed and otherwise ignored.

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
from .assemble import manifest_rows, same_rows, sheet_ok
from .events import QUIET, Events
from .identity import DistillConfig, all_units
from .job import DistillJob, model_hashes
from .job_file import read_job_file
from .run import run_job
from .state import file_digest, read_json, unit_state


@dataclass
class Report:
    out: Path
    kind: str  # distilled | manifest (checked against manifest.parquet only)
    images: int = 0
    intact: int = 0
    missing: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    units: list[str] = field(default_factory=list)  # units to redo: damaged records or features, or bad images
    not_run: int = 0  # units never committed (an unfinished job or shard)
    manifest: str = "ok"  # ok | missing | damaged | stale (rows differ from the records)
    sheets: list[str] = field(default_factory=list)  # contact sheets missing or unreadable
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
        if self.manifest != "ok":
            out.append(f"manifest.parquet {self.manifest}")
        if self.sheets:
            out.append(f"contact sheet(s) {', '.join(self.sheets)} missing or unreadable")
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
        if (out / "manifest.parquet").exists():
            return _verify_by_manifest(out)
        if have.damaged:
            raise UserError(
                f"'{out}': its job file (.igds-job.json) is damaged and it has no manifest.parquet; "
                "rerun the distill command that made it (damaged state is redone)"
            )
        raise UserError(f"'{out}' holds no distilled set (no .igds-job.json or manifest.parquet)")
    try:
        cfg = DistillConfig.from_fingerprint(have.config)
        units = all_units(cfg)
    except (TypeError, ValueError, KeyError):
        raise UserError(f"'{out}/.igds-job.json' does not describe a distill job; rerun distill into it") from None
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
    manifest = manifest_rows(out / "manifest.parquet")
    if not (out / "manifest.parquet").exists():
        rep.manifest = "missing"
    elif manifest is None:
        rep.manifest = "damaged"
    elif complete and not same_rows(manifest, rows):
        rep.manifest = "stale"
    rep.sheets = [f"contact_{w}.png" for w in cfg.wnids if not sheet_ok(out / f"contact_{w}.png")]
    rep.run_json = _run_json_state(out)
    return rep


def _verify_by_manifest(out: Path) -> Report:
    rows = manifest_rows(out / "manifest.parquet")
    if rows is None:
        raise UserError(f"'{out}/manifest.parquet' is damaged and the set has no unit records to check against")
    rep = Report(out, "manifest", images=len(rows))
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
    rep.run_json = _run_json_state(out)
    return rep


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
