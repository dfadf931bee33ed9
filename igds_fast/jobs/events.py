"""Machine-readable job events: one JSON object a line, on stdout or in a file.

Events: ``start``, ``unit_done``, ``class_done``, ``repaired``, ``damaged`` (verify), ``warning``
(a class with near-constant images), ``finished``, ``error``; each has ``event``, ``time`` (UTC,
ISO 8601) and the job's ``out``. Progress bars are a separate matter: they go to stderr, and only
on a terminal or when asked for (``--progress``). On a terminal stdout and stderr share the screen:
an event line is written above the bar (the bar is cleared, the line written, the bar redrawn),
never onto the bar's line.

Exit codes of ``distill`` and ``verify`` (``EXIT_*``): 0 the set is complete (verify: intact or
repaired), 3 incomplete (this shard is done but other shards' classes are not; verify: damage
left), 2 a user error (one line on stderr, an ``error`` event), 1 a bug (a traceback). An array
job's shard may ask for 0 once its own classes are done (``exit_code``): schedulers count 3 as a
failed task.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sys
import threading
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from ..errors import UserError

EXIT_COMPLETE = 0
EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_INCOMPLETE = 3


def exit_code(summary: dict[str, Any], zero_when_shard_done: bool = False) -> int:
    """distill's exit code for a run's summary: 0 when the set is complete, or (``zero_when_shard_done``:
    ``--exit-zero-when-shard-done``) when this shard's classes are; else 3."""
    if summary.get("complete") or (zero_when_shard_done and summary.get("shard_complete")):
        return EXIT_COMPLETE
    return EXIT_INCOMPLETE


def is_stdout(path: Path | str | None) -> bool:
    """Whether ``--log-json PATH`` means stdout: ``-``, or the very file stdout is (``/dev/stdout``,
    ``/proc/self/fd/1``, the file stdout is redirected to): its events are written there once, by
    one stream, never by two descriptors overwriting each other."""
    if path is None:
        return False
    if str(path) == "-":
        return True
    try:
        there = os.stat(path)
    except (OSError, ValueError):
        return False
    for fd in {1, _fileno(sys.stdout)} - {None}:
        with contextlib.suppress(OSError):
            here = os.fstat(fd)  # type: ignore[arg-type]
            if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
                return True
    return False


def _fileno(stream: IO[str] | None) -> int | None:
    try:
        return stream.fileno() if stream is not None else None
    except (OSError, ValueError, AttributeError):  # a StringIO, a closed stream
        return None


def _stdout_gone() -> None:
    """stdout's reader has gone (``| head -1``): later writes, and Python's flush at exit, go to
    /dev/null instead of failing."""
    fd = _fileno(sys.stdout)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


class Events:
    """Where a job's events go. ``path`` None (or ``is_stdout``): stdout; ``quiet``: nowhere (library use).

    A closed stdout (its reader gone: ``| head -1``) never stops the job: events stop being written
    and the work goes on. A log file that cannot be written (a full disk) stops it with one line."""

    def __init__(self, path: Path | None = None, quiet: bool = False, out: Path | None = None):
        self.path, self.quiet, self.out = (None if is_stdout(path) else path), quiet, out
        self._file: IO[str] | None = None
        self._lock = threading.Lock()  # the image writer's threads emit too
        self._gone = False  # the events' reader has gone (or their file failed): nothing more is written

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        rec = {"event": event, "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")}
        if self.out is not None:
            rec["out"] = str(self.out)
        rec.update(fields)
        if self.quiet:
            return rec
        line = json.dumps(rec, default=str)
        with self._lock:
            if self._gone:
                return rec
            try:
                stream = self._stream()
                if self.path is None:  # above any progress bar on the screen
                    tqdm.write(line, file=stream)
                else:
                    stream.write(line + "\n")
                stream.flush()
            except BrokenPipeError:  # nobody reads the events any more: the job goes on without them
                self._gone = True
                if self.path is None:
                    _stdout_gone()
            except OSError as e:
                self._gone = True
                raise UserError(f"cannot write the events to '{self.path or 'stdout'}': {e.strerror or e}") from None
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


class Progress:
    """A job's progress bar on stderr, in images: it moves at every denoising step (a batch of k images
    advances k / steps per step) and is set to the exact count as each chunk is written.

    ``on_step`` has the signature of ``sampling.run_group``'s ``on_step``; ``images_done`` that of
    ``distill_group``'s ``on_images``."""

    def __init__(
        self, total: int, steps: int, enabled: bool = True, desc: str = "distill", file: IO[str] | None = None
    ):
        self.steps = max(int(steps), 1)
        self.done = 0
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit="img",
            disable=not enabled or total == 0,
            smoothing=0.1,
            file=file,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total_fmt} img [{elapsed}<{remaining}, {rate_fmt}]",
        )

    def on_step(self, images: int, i: int, x: Any) -> None:
        self.bar.update(images / self.steps)

    def images_done(self, count: int) -> None:
        self.done += count
        self.bar.n = self.done
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
