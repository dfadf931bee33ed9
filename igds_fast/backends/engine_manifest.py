"""Engine manifests: what an engine was built from, and the checks that refuse a wrong one.

``engines/NAME/manifest.json`` records the sha256 of the denoiser, VAE and critic weights, the
step configuration, the static shapes, precision, backend, library versions and the size and
sha256 of every file of the engine, and an ``id``: a digest of all of that. Reading a manifest
recomputes the id, so an edited or damaged manifest is refused; ``check_manifest`` compares it
with what a caller wants to run; ``verify_files`` catches truncated or corrupt engine files
before a backend loads them. Distilled images record the id of the engine that made them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

from ..config import complete_step
from ..errors import UserError
from ..machine import library_versions

MANIFEST = "manifest.json"
ENGINE_FORMAT = "igds-fast/engine-v1"
_CHUNK = 1 << 20

# Keys a caller may pin in ``expect``; each maps to a manifest value via ``manifest_view``.
EXPECT_KEYS = (
    "denoiser_sha256",
    "vae_sha256",
    "critic_sha256",
    "step",
    "batch_size",
    "memory_size",
    "precision",
    "backend",
)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file; for a folder, of its files' relative paths and contents in sorted order."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"'{path}' does not exist")
    h = hashlib.sha256()
    if path.is_file():
        _feed(h, path)
        return h.hexdigest()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        _feed(h, f)
    return h.hexdigest()


def _feed(h: Any, path: Path) -> None:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def optional_sha256(path: str | Path | None) -> str | None:
    """Hash of a model path; None for 'no model' (pixel space, guidance off)."""
    if path is None or str(path).lower() == "none":
        return None
    return file_sha256(path)


def describe_files(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every engine file (all files of the folder but the manifest)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in files}


def build_manifest(
    *,
    backend: str,
    precision: str,
    step_config: dict[str, Any],
    models: dict[str, str | None],
    model_paths: dict[str, str | None],
    shapes: dict[str, int],
    graphs: dict[str, str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest body; ``write_manifest`` adds the file list once every file is written."""
    return {
        "format": ENGINE_FORMAT,
        "backend": backend,
        "precision": precision,
        "step": step_config,
        "models": {k: {"sha256": models.get(k), "path": model_paths.get(k)} for k in ("denoiser", "vae", "critic")},
        "shapes": shapes,
        "graphs": graphs,
        "versions": library_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }


def engine_id(manifest: dict[str, Any]) -> str:
    """A digest of everything the manifest says (models, step, shapes, files' hashes, ...) but the id."""
    body = {k: v for k, v in manifest.items() if k != "id"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def write_engine_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    manifest = {**manifest, "files": describe_files(folder)}
    manifest["id"] = engine_id(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def is_engine_folder(path: Path) -> bool:
    """Whether ``path`` holds an igds-fast engine (what ``export --overwrite`` may replace)."""
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == ENGINE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_engine_manifest(engine_dir: str | Path) -> dict[str, Any]:
    path = Path(engine_dir) / MANIFEST
    if not Path(engine_dir).is_dir():
        raise UserError(f"engine '{engine_dir}' does not exist; build it with `igds-fast export`")
    if not path.is_file():
        raise UserError(f"'{engine_dir}' has no {MANIFEST}: not an engine, or its export did not finish")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError: bad JSON, or bytes that are not UTF-8 text
        raise UserError(f"{path}: unreadable manifest ({e}); rebuild the engine") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ENGINE_FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise UserError(f"{path}: not an igds-fast engine manifest (format '{fmt}')")
    if manifest.get("id") != engine_id(manifest):
        raise UserError(
            f"{path} was edited or damaged (its content no longer matches its id {manifest.get('id')!r}); "
            "rebuild the engine with `igds-fast export --overwrite`"
        )
    return manifest


def verify_files(engine_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Every listed file exists with its recorded size and hash (size first: cheap, catches truncation)."""
    folder = Path(engine_dir)
    for name, info in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            raise UserError(f"engine file '{path}' is missing; rebuild the engine with `igds-fast export --overwrite`")
        size = path.stat().st_size
        if size != info["size"]:
            raise UserError(f"engine file '{path}' is {size} bytes, manifest: {info['size']} (truncated?); rebuild it")
        if file_sha256(path) != info["sha256"]:
            raise UserError(f"engine file '{path}' does not match its sha256 in the manifest (corrupt?); rebuild it")


def manifest_view(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's values under the ``EXPECT_KEYS`` names."""
    models, shapes = manifest.get("models", {}), manifest.get("shapes", {})
    return {
        "denoiser_sha256": (models.get("denoiser") or {}).get("sha256"),
        "vae_sha256": (models.get("vae") or {}).get("sha256"),
        "critic_sha256": (models.get("critic") or {}).get("sha256"),
        "step": complete_step(manifest.get("step") or {}),  # exported before a field existed: its old behaviour
        "batch_size": shapes.get("batch_size"),
        "memory_size": shapes.get("memory_size"),
        "precision": manifest.get("precision"),
        "backend": manifest.get("backend"),
    }


def check_manifest(manifest: dict[str, Any], expect: dict[str, Any] | None) -> None:
    """Raise a one-line UserError naming the first field where the engine differs from ``expect``."""
    if not expect:
        return
    unknown = set(expect) - set(EXPECT_KEYS)
    if unknown:
        raise ValueError(f"unknown expect keys {sorted(unknown)}; use {EXPECT_KEYS}")
    have = manifest_view(manifest)
    for key, want in expect.items():
        got = have[key]
        if key == "step":
            for field, w in (want or {}).items():
                g = got.get(field)
                if g != w:
                    raise UserError(
                        f"engine mismatch: step.{field} is {g!r} in the engine, {w!r} was asked for; "
                        "export a new engine for this configuration"
                    )
        elif got != want:
            raise UserError(
                f"engine mismatch: {key} is {_short(got)} in the engine, {_short(want)} was asked for; "
                "export a new engine for this configuration"
            )


def _short(v: Any) -> str:
    if isinstance(v, str) and len(v) == 64:  # a sha256
        return v[:12] + "…"
    return repr(v)
