"""Machine-readable job events: one JSON object a line, on stdout or in a file.

Events: ``start``, ``unit_done``, ``class_done``, ``repaired``, ``damaged`` (verify), ``warning``
(a class with near-constant images), ``finished``, ``error``; each has ``event``, ``time`` (UTC,
ISO 8601) and the job's ``out``. Progress bars are a separate matter: they go to stderr, and only
on a terminal or when asked for (``--progress``), so an event line is never glued onto a progress
line.

Exit codes of ``distill`` and ``verify`` (``EXIT_*``): 0 the set is complete (verify: intact or
repaired), 3 incomplete (this shard is done but other shards' classes are not; verify: damage
left), 2 a user error (one line on stderr, an ``error`` event), 1 a bug (a traceback).
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import threading
from pathlib import Path
from typing import IO, Any

from ..errors import UserError

EXIT_COMPLETE = 0
EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_INCOMPLETE = 3


class Events:
    """Where a job's events go. ``path`` None: stdout; ``quiet``: nowhere (library use)."""

    def __init__(self, path: Path | None = None, quiet: bool = False, out: Path | None = None):
        self.path, self.quiet, self.out = path, quiet, out
        self._file: IO[str] | None = None
        self._lock = threading.Lock()  # the image writer's threads emit too

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        rec = {"event": event, "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")}
        if self.out is not None:
            rec["out"] = str(self.out)
        rec.update(fields)
        if self.quiet:
            return rec
        line = json.dumps(rec, default=str) + "\n"
        with self._lock:
            stream = self._stream()
            stream.write(line)
            stream.flush()
        return rec

    def _stream(self) -> IO[str]:
        if self.path is None:
            return sys.stdout
        if self._file is None:
            self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 (closed in close())
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


QUIET = Events(quiet=True)


def check_log_path(path: Path | None) -> None:
    """``--log-json FILE`` must name a file (appended to) in an existing folder."""
    if path is None:
        return
    if path.is_dir():
        raise UserError(f"--log-json '{path}' is a folder; give a file name, e.g. events.jsonl")
    if not path.parent.is_dir():
        raise UserError(f"--log-json '{path}': its folder '{path.parent}' does not exist")


def show_progress(progress: bool | None) -> bool:
    """Progress bars: as asked, else only when stderr is a terminal."""
    if progress is not None:
        return progress
    return sys.stderr.isatty()
