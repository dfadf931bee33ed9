"""Writer locks on an output folder: ``fcntl.flock`` on a lock file, held by the process.

The kernel drops a flock when its process exits or dies (kill -9 included), so a lock never
outlives its holder and there is nothing stale to clean up. The lock file stays in the folder; its
content names the last holder (pid, host, start time, command) for the error a second writer gets.

A lock file is opened without following a link (a link there is refused in one line, never written
through), and the holder's note is written only into a lock file that is empty or holds such a note
(a file of other content at a lock's name, a hard link to a user's file, is never overwritten).

An unsharded run holds the folder's lock exclusively. The shards of an array job (``--shard i/n``)
share it, so they can write one folder at once, and each also holds ``.igds-lock-<i>of<n>``
exclusively, so two copies of one shard cannot. Claiming the folder for a configuration and
assembling the manifest happen under a short exclusive ``.igds-claim`` lock (check-then-write is
never raced).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import UserError
from ..imageio import open_nofollow, read_nofollow

LOCK_FILE = ".igds-lock"
CLAIM_FILE = ".igds-claim"


def holder_info() -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv[:3])[:200],
    }


def describe_holder(path: Path) -> str:
    try:
        info = json.loads(read_nofollow(path)[:4096])
        return f"pid {info['pid']} on host {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _holds_a_note(data: bytes) -> bool:
    """Whether a lock file's content is empty or a holder's note (what a lock may overwrite)."""
    if not data.strip() or data.startswith(b'{"pid": '):  # (a note cut short by a crash is ours too)
        return True
    try:
        info = json.loads(data)
    except ValueError:
        return False
    return isinstance(info, dict) and set(info) <= {"pid", "host", "since", "command"}


class FolderLock:
    """One flock on ``path``; ``acquire`` raises a one-line UserError when another process holds it
    (or waits for it with ``wait``)."""

    def __init__(self, path: Path, shared: bool = False, note_holder: bool = True):
        self.path, self.shared, self.note_holder = path, shared, note_holder
        self.fd: int | None = None

    def acquire(self, wait: bool = False, on_wait: Callable[[str], None] | None = None, what: str = "") -> FolderLock:
        self.fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        try:
            fcntl.flock(self.fd, mode | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                self.release()
                raise UserError(f"cannot lock '{self.path}': {e.strerror or e}") from None
            holder = describe_holder(self.path)
            if not wait:
                self.release()
                raise UserError(
                    f"'{self.path.parent}' is being written by {holder}{what}; wait for it to finish, "
                    "pass --wait to queue behind it, or choose another --out"
                ) from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(self.fd, mode)
        if self.note_holder:
            self._write_holder()  # shared holders overwrite each other: the message names one of them
        return self

    def _write_holder(self) -> None:
        assert self.fd is not None
        data = json.dumps(holder_info()).encode()
        with contextlib.suppress(OSError):
            if not _holds_a_note(os.pread(self.fd, 4096, 0)):
                return  # not a lock file of ours: its content is left alone
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, data, 0)

    def try_exclusive(self) -> bool:
        """Upgrade a shared lock to exclusive without waiting; False when another process holds it.
        (flock's conversion is not atomic: on False the lock may be lost; the caller then fails.)"""
        assert self.fd is not None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        self._write_holder()
        return True

    def downgrade(self) -> None:
        if self.fd is not None and self.shared:
            fcntl.flock(self.fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class WriterLocks:
    """The locks a distill writer holds on ``out`` for its whole run (see the module docstring)."""

    def __init__(self, out: Path, shard: tuple[int, int] = (0, 1)):
        self.out, self.shard = out, shard
        sharded = shard[1] > 1
        self.folder = FolderLock(out / LOCK_FILE, shared=sharded)
        self.shard_lock = FolderLock(out / f"{LOCK_FILE}-{shard[0]}of{shard[1]}") if sharded else None

    def acquire(self, wait: bool = False, on_wait: Callable[[str], None] | None = None) -> WriterLocks:
        if self.shard_lock is not None:
            self.shard_lock.acquire(wait, on_wait, what=f" (shard {self.shard[0]}/{self.shard[1]})")
        try:
            self.folder.acquire(wait, on_wait)
        except BaseException:
            self.release()
            raise
        return self

    def alone(self) -> bool:
        """Whether no other writer holds the folder (needed to hand it to a new configuration)."""
        if not self.folder.shared:
            return True
        if not self.folder.try_exclusive():
            assert self.folder.fd is not None
            with contextlib.suppress(OSError):  # keep (or retake) our share; the caller refuses anyway
                fcntl.flock(self.folder.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        self.folder.downgrade()
        return True

    def release(self) -> None:
        self.folder.release()
        if self.shard_lock is not None:
            self.shard_lock.release()

    def __enter__(self) -> WriterLocks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def claim_lock(out: Path) -> Iterator[None]:
    """A short exclusive lock for check-then-write steps (claiming the folder, assembling the manifest)."""
    with FolderLock(out / CLAIM_FILE, note_holder=False) as lock:
        lock.acquire(wait=True)
        yield
