"""Engine manifests: what an engine was built from, who made it, and the checks that refuse a wrong one.

``engines/NAME/manifest.json`` records the sha256 of the denoiser, VAE and critic weights, the
step configuration, the static shapes, precision, backend, library versions and the size and
sha256 of every file of the engine, an ``id`` (a digest of all of that: catches damage) and a
``mac``: HMAC-SHA256 of all of it under the engine key (``trust.py``), which no folder holds, so a
manifest rebuilt by anyone else is refused. ``read_engine_manifest`` checks id, signature and
file names (every name stays inside the folder; every graph a loader opens is listed);
``verify_files`` checks every listed file's size and hash; ``registry.load_engine`` runs both
before a backend opens anything. ``check_manifest`` compares an engine with what a caller wants to
run; ``replaceable_files`` says what ``export --overwrite`` may delete. Distilled images record the
id of the engine that made them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from ..config import complete_step
from ..errors import UserError
from ..machine import library_versions
from .trust import KEY_ENV, MAC_ALG, TRUST_ENV, engine_key, key_id, manifest_mac, signed_by, trust_unsigned

MANIFEST = "manifest.json"
ENGINE_FORMAT = "igds-fast/engine-v1"
_CHUNK = 1 << 20
_MAX_MANIFEST_BYTES = 16 << 20
# Written into an engine folder by a runtime, not by export (ONNX Runtime's TensorRT EP cache):
# ``export --overwrite`` removes them with the engine.
RUNTIME_DIRS = ("ort_trt_cache",)

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
    """Size and sha256 of every engine file (all files of the folder but the manifest); an engine
    holds only regular files and folders (a symbolic link is refused: it could point anywhere)."""
    out = {}
    for name in sorted(_walk(folder)):
        if name != MANIFEST:
            out[name] = {"size": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)}
    return out


def _walk(folder: Path) -> Iterator[str]:
    for root, dirs, files in os.walk(folder, followlinks=False):
        for entry in [*dirs, *files]:
            path = Path(root, entry)
            mode = path.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UserError(f"'{path}' is not a regular file or folder (a link?): an engine holds none")
        for f in files:
            yield Path(root, f).relative_to(folder).as_posix()


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
    """A digest of everything the manifest says (models, step, shapes, files' hashes, ...) but the
    id and the signature: the same engine has the same id under any key."""
    body = {k: v for k, v in manifest.items() if k not in ("id", "mac")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def sign_manifest(manifest: dict[str, Any], key: bytes | None = None) -> dict[str, Any]:
    """The manifest with its id and its signature under ``key`` (default: this user's engine key,
    created on first use)."""
    key = key if key is not None else engine_key(create=True)
    assert key is not None
    manifest = {k: v for k, v in manifest.items() if k != "mac"}
    manifest["id"] = engine_id(manifest)
    manifest["mac"] = {"alg": MAC_ALG, "key_id": key_id(key), "value": manifest_mac(manifest, key)}
    return manifest


def write_engine_manifest(folder: Path, manifest: dict[str, Any], key: bytes | None = None) -> dict[str, Any]:
    """List every file of ``folder`` in the manifest, sign it and write it."""
    manifest = sign_manifest({**manifest, "files": describe_files(folder)}, key)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def _load_manifest(engine_dir: str | Path) -> dict[str, Any]:
    """The manifest's JSON, its format and id checked (no signature): a regular file, not a link."""
    folder = Path(engine_dir)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise UserError(f"engine '{engine_dir}' does not exist; build it with `igds-fast export`")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise UserError(f"'{engine_dir}' has no {MANIFEST}: not an engine, or its export did not finish") from None
    except OSError as e:  # ELOOP: a symbolic link
        what = "a symbolic link" if path.is_symlink() else f"unreadable ({e.strerror or e})"
        raise UserError(f"{path} is {what}: not an engine manifest") from None
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise UserError(f"{path} is not a regular file: not an engine manifest")
            data = f.read(_MAX_MANIFEST_BYTES + 1)
        if len(data) > _MAX_MANIFEST_BYTES:
            raise UserError(f"{path} is larger than any engine manifest: not one")
        manifest = json.loads(data.decode())
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


def _trust_hint() -> str:
    return f"or set {TRUST_ENV}=1 to load it anyway (an engine is code: only one you trust)"


def check_signature(engine_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Refuse, in one line, a manifest not signed with this machine's engine key."""
    key = engine_key()
    if signed_by(manifest, key):
        return
    mac = manifest.get("mac")
    if not isinstance(mac, dict):
        raise UserError(
            f"engine '{engine_dir}' is not signed (exported by an earlier release, or its manifest was "
            f"rewritten): re-export it with `igds-fast export --overwrite`, {_trust_hint()}"
        )
    if key is not None and mac.get("key_id") == key_id(key):
        raise UserError(
            f"{Path(engine_dir) / MANIFEST} was edited or damaged (its signature does not match); "
            "rebuild the engine with `igds-fast export --overwrite`"
        )
    raise UserError(
        f"engine '{engine_dir}' was signed with another engine key (exported by another user or machine): "
        f"to share engines set {KEY_ENV} to the same secret where they are exported and where they run, "
        f"or re-export it here with `igds-fast export --overwrite`, {_trust_hint()}"
    )


def inside_name(name: Any, what: str) -> str:
    """A file name of the manifest that stays inside the engine folder: relative, no '..', no '.',
    no empty part. Refused by the name alone (nothing outside the folder is looked at)."""
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise UserError(f"{what} {str(name)[:200]!r} is not a file name; refused")
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise UserError(f"{what} {name[:200]!r} is outside the engine folder (absolute or '..'); refused")
    return name


def graph_names(graphs: Any, where: str = "graphs") -> Iterator[tuple[str, str]]:
    """(manifest key, file name) of every graph a loader may open; None entries are absent graphs."""
    if isinstance(graphs, dict):
        for k, v in graphs.items():
            yield from graph_names(v, f"{where}.{k}")
    elif graphs is not None:
        yield where, graphs


def check_names(engine_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Every file name stays inside the folder, every listed file has a size and a sha256, and every
    graph a loader opens is a listed file (so its hash is checked before it is opened)."""
    path = Path(engine_dir) / MANIFEST
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise UserError(f"{path} lists no files; rebuild the engine with `igds-fast export --overwrite`")
    for name, info in files.items():
        inside_name(name, f"{path}: file")
        ok = isinstance(info, dict) and isinstance(info.get("size"), int) and isinstance(info.get("sha256"), str)
        if not ok or info["size"] < 0 or name == MANIFEST:
            raise UserError(f"{path}: the entry of file {name[:200]!r} is malformed; rebuild the engine")
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict) or not isinstance(graphs.get("step"), str):
        raise UserError(f"{path} names no step graph; rebuild the engine with `igds-fast export --overwrite`")
    for where, name in graph_names(graphs):
        inside_name(name, f"{path}: {where}")
        if name not in files:
            raise UserError(
                f"{path}: {where} {name[:200]!r} is not among its listed files (its hash would not be checked); refused"
            )


def read_engine_manifest(engine_dir: str | Path, trust: bool | None = None) -> dict[str, Any]:
    """The engine's manifest: its id, its signature under the engine key (unless ``trust``; None:
    ``$IGDS_TRUST_ENGINES``) and its file names checked. Files are checked by ``verify_files``."""
    manifest = _load_manifest(engine_dir)
    if not (trust_unsigned() if trust is None else trust):
        check_signature(engine_dir, manifest)
    check_names(engine_dir, manifest)
    return manifest


def engine_file(folder: Path, name: str) -> Path:
    """``folder/name`` after checking that no part of it is a symbolic link and that it is a regular
    file inside the folder's real path (``name`` was checked by ``inside_name``)."""
    path = folder
    parts = name.split("/")
    for k, part in enumerate(parts):
        path = path / part
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            raise UserError(
                f"engine file '{folder / name}' is missing; rebuild the engine with `igds-fast export --overwrite`"
            ) from None
        if stat.S_ISLNK(mode):
            raise UserError(f"engine file '{folder / name}' is (inside) a symbolic link; refused")
        last = k == len(parts) - 1
        if (last and not stat.S_ISREG(mode)) or (not last and not stat.S_ISDIR(mode)):
            raise UserError(f"engine file '{folder / name}' is not a regular file; rebuild the engine")
    if not path.resolve().is_relative_to(folder.resolve()):
        raise UserError(f"engine file '{folder / name}' is outside the engine folder; refused")
    return path


def verify_files(engine_dir: str | Path, manifest: dict[str, Any], hashes: bool = True) -> None:
    """Every listed file is a regular file inside the folder with its recorded size and (``hashes``)
    sha256: size first (cheap, catches truncation). Names are checked first (``check_names``)."""
    folder = Path(engine_dir)
    check_names(folder, manifest)
    for name, info in manifest["files"].items():
        path = engine_file(folder, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as e:
            raise UserError(f"cannot read engine file '{path}': {e.strerror or e}") from None
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != info["size"]:
                raise UserError(
                    f"engine file '{path}' is {size} bytes, manifest: {info['size']} (truncated?); rebuild it"
                )
            if not hashes:
                continue
            h = hashlib.sha256()
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        if h.hexdigest() != info["sha256"]:
            raise UserError(f"engine file '{path}' does not match its sha256 in the manifest (corrupt?); rebuild it")


def replaceable_files(folder: Path) -> list[str]:
    """What ``export --overwrite`` may delete in ``folder`` (names relative to it): the files its
    manifest lists, runtime caches (``RUNTIME_DIRS``) and, last, the manifest. Refuses, naming it,
    anything else in the folder, and a folder whose manifest does not check. A manifest not signed
    with this machine's key (another key, or an earlier release) is accepted only when every listed
    file still has its recorded size and hash: then they are that engine's files."""
    if folder.is_symlink():
        raise UserError(f"--out '{folder}' is a symbolic link; give the engine folder itself")
    key = engine_key()
    try:
        manifest = _load_manifest(folder)
        check_names(folder, manifest)
        if not signed_by(manifest, key):
            verify_files(folder, manifest)
    except UserError as e:
        raise UserError(
            f"--overwrite replaces only an intact engine folder, and '{folder}' is not one ({e}); "
            "choose another --out, or remove the folder yourself"
        ) from None
    listed = set(manifest["files"])
    parents = {p.as_posix() for n in listed for p in PurePosixPath(n).parents if p.parts}
    runtime = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        rel = PurePosixPath(Path(root).relative_to(folder).as_posix())
        for entry in [*dirs, *files]:
            name = (rel / entry).as_posix()
            mode = (folder / name).lstat().st_mode
            if stat.S_ISDIR(mode) and name in RUNTIME_DIRS:
                runtime.append(name)
                dirs.remove(entry)  # a runtime cache goes as a whole
                continue
            ok = (stat.S_ISREG(mode) and (name in listed or name == MANIFEST)) or (
                stat.S_ISDIR(mode) and name in parents
            )
            if not ok:
                raise UserError(
                    f"--overwrite replaces only an engine's own files, and '{folder / name}' is not one of them "
                    "(not in its manifest); move it away or choose another --out"
                )
    return sorted(n for n in listed if (folder / n).is_file()) + sorted(runtime) + [MANIFEST]


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
