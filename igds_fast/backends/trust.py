"""The engine key: the secret that signs engine manifests, kept outside every engine folder.

Compiled (AOTInductor) and TensorRT engines are executable code, and any engine decides which
images a run makes, so loading one must not depend on what the folder says about itself. Export
signs the manifest with HMAC-SHA256 under this key (the manifest lists the size and sha256 of every
engine file, so the signature covers them too); loading checks it before anything in the folder
is opened.

Where the key comes from:

- ``$IGDS_ENGINE_KEY`` when set: hex (decoded) or any other string (its UTF-8 bytes), at least
  16 bytes; set the same value where engines are exported and where they run to share them;
- else the per-user key file ``$XDG_CONFIG_HOME/igds-fast/engine.key`` (default
  ``~/.config/igds-fast/engine.key``): 32 random bytes in hex, mode 0600, created atomically by the
  first export.

``IGDS_TRUST_ENGINES=1`` loads engines without a valid signature (made by an earlier release or
under another key); their files are still checked against the manifest.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from ..errors import UserError

KEY_ENV = "IGDS_ENGINE_KEY"
TRUST_ENV = "IGDS_TRUST_ENGINES"
MIN_KEY_BYTES = 16
MAC_ALG = "hmac-sha256"
_KEY_ID_MESSAGE = b"igds-fast engine key id"


def key_path() -> Path:
    """The per-user key file (``$XDG_CONFIG_HOME`` honoured)."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):  # unset, empty or relative: the XDG default
        base = str(Path.home() / ".config")
    return Path(base) / "igds-fast" / "engine.key"


def trust_unsigned() -> bool:
    """Whether ``IGDS_TRUST_ENGINES`` asks to load engines without a valid signature."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def _parse_key(text: str, where: str) -> bytes:
    text = text.strip()
    try:
        key = bytes.fromhex(text) if text and len(text) % 2 == 0 else text.encode()
    except ValueError:  # not hex: the string's own bytes
        key = text.encode()
    if len(key) < MIN_KEY_BYTES:
        raise UserError(
            f"{where} is too short ({len(key)} bytes, at least {MIN_KEY_BYTES}); "
            "make one with `python -c 'import secrets; print(secrets.token_hex(32))'`"
        )
    return key


def engine_key(create: bool = False) -> bytes | None:
    """The key: ``$IGDS_ENGINE_KEY``, else the key file; with ``create``, a new key file when there is
    none (exporting); without, None when there is none (nothing made here can be checked)."""
    env = os.environ.get(KEY_ENV)
    if env is not None and env.strip():
        return _parse_key(env, KEY_ENV)
    path = key_path()
    key = _read_key_file(path)
    if key is None and create:
        key = _create_key_file(path)
    return key


def _read_key_file(path: Path) -> bytes | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UserError(f"cannot read the engine key '{path}': {e.strerror or e}; or set {KEY_ENV}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"the engine key '{path}' is not a regular file; remove it (export makes one) or set {KEY_ENV}")
    if st.st_mode & 0o077:
        raise UserError(
            f"the engine key '{path}' can be read or written by other users (mode {stat.S_IMODE(st.st_mode):04o}): "
            f"run `chmod 600 {path}`"
        )
    try:
        return _parse_key(path.read_text(), f"the engine key '{path}'")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the engine key '{path}': {e}; or set {KEY_ENV}") from None


def _create_key_file(path: Path) -> bytes:
    """Write a new random key with mode 0600 under a temporary name and link it into place: never
    a partly written key, and of two processes creating it at once, both end with the same key."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process made the key first: theirs is kept
            pass
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            if not path.exists():  # a file system without hard links
                os.rename(tmp, path)
    except OSError as e:
        raise UserError(
            f"cannot create the engine key '{path}': {e.strerror or e}; set {KEY_ENV} (or $XDG_CONFIG_HOME)"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    key = _read_key_file(path)
    assert key is not None
    return key


def key_id(key: bytes) -> str:
    """A short public name of a key (tells 'another key' from 'edited'; reveals nothing of the key)."""
    return hmac.new(key, _KEY_ID_MESSAGE, hashlib.sha256).hexdigest()[:16]


def canonical(manifest: dict[str, Any]) -> bytes:
    """The manifest's signed bytes: canonical JSON of everything but the ``mac`` field."""
    body = {k: v for k, v in manifest.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def manifest_mac(manifest: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, canonical(manifest), hashlib.sha256).hexdigest()


def signed_by(manifest: dict[str, Any], key: bytes | None) -> bool:
    """Whether ``manifest`` carries a valid signature under ``key``."""
    mac = manifest.get("mac")
    if key is None or not isinstance(mac, dict) or mac.get("alg") != MAC_ALG or not isinstance(mac.get("value"), str):
        return False
    try:
        return hmac.compare_digest(mac["value"], manifest_mac(manifest, key))
    except (ValueError, TypeError):  # NaN in the manifest; a non-ASCII value
        return False
