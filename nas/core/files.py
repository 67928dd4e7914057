"""Files the project writes and reads back: atomic writes, append-only files, digests, checked
reads, and the errors.

Every file a run keeps is written whole or not at all (a temporary file in the same folder,
then `os.replace`), so a kill at any moment leaves the previous version or the new one. Digests
name configurations (`json_digest`) and check that a tensor file is the one its JSON describes
(`sha256_file`).

Append-only files (caches and measurement stores, one record a line) grow by `append_lines`,
the one way to append; a record is a line ending in a newline, and nothing else counts:

- A kill while writing leaves a partial last line. The next `append_lines` truncates it away
  (a warning names the file and the bytes dropped; that record is lost and its stage computes
  it again), then appends, so a cut record is never glued to the next one.
- Locking rule: every append holds an exclusive `fcntl.flock` on the file from before it looks
  at the last line until its write is done, and the truncation happens only under that lock.
  A partial last line seen under the lock therefore belongs to a writer that died, never to one
  still writing, so several writers (two predictors sharing a kernel cache, two processes) can
  append to one file and truncate safely. The lock is the OS's: it goes with the process.
- Each append is one `write` of whole lines, then fsync by default: every such file here caches
  work that costs far more than an fsync (a measured table row, a recalibrated subnet), and a
  record the OS lost in a power cut would be recomputed silently but slowly.
- Readers take no lock and never write: `read_lines` (or `whole_lines` for a file read in
  pieces) gives the whole lines and skips a partial last line with a warning, since it may be
  a crash's leftover or a line another process is writing this moment.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if sys.platform != "win32":
    import fcntl

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "FileProblem",
    "append_lines",
    "check_file",
    "csv_line",
    "json_digest",
    "read_json",
    "read_lines",
    "sha256_file",
    "whole_lines",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


class FileProblem(ValueError):
    """A file we read is missing, corrupt, cut short, a folder, or of another kind: the message
    names the file, says what is wrong and what to do (delete it to redo the stage, or resume).
    The command line treats it as bad input (exit 2, no traceback)."""

    def __init__(self, path: str | os.PathLike[str], problem: str, remedy: str) -> None:
        self.path = Path(path)
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"{path}: {problem}; {remedy}")


class CheckpointError(FileProblem):
    """A checkpoint is missing, corrupt, or does not fit what it is loaded into: a
    `FileProblem` (the file, what is wrong, what to do), so one `except FileProblem` catches
    every bad file; its own name stays for callers that treat checkpoints apart."""


def check_file(
    path: str | os.PathLike[str], what: str, remedy: str, *, error: type[FileProblem] = FileProblem
) -> Path:
    """`path` as a Path when it names a file with bytes in it; else `error` (a `FileProblem`)
    saying whether it is missing, a folder or empty. `what` names the kind of file expected
    ("a results JSON"); `remedy` says what to do (delete it to redo the stage, or resume)."""
    path = Path(path)
    if path.is_dir():
        raise error(path, f"is a folder, not {what}", remedy)
    if not path.exists():
        raise error(path, f"is missing (expected {what})", remedy)
    if path.stat().st_size == 0:
        raise error(path, f"is empty (0 bytes), not {what}", remedy)
    return path


def read_json(
    path: str | os.PathLike[str],
    what: str,
    remedy: str,
    *,
    expect: type = dict,
    error: type[FileProblem] = FileProblem,
) -> Any:
    """The JSON in `path`, checked to be an `expect` (an object by default), or `error` naming
    the file when it is missing, a folder, empty, binary, cut short or not JSON."""
    path = check_file(path, what, remedy, error=error)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise error(path, f"is binary, not {what} (a file of another kind?)", remedy) from None
    except json.JSONDecodeError as err:
        raise error(
            path, f"is not valid JSON (cut short, or another kind of file): {err}", remedy
        ) from None
    if not isinstance(data, expect):
        kind = f"a JSON {expect.__name__}"
        raise error(path, f"holds a JSON {type(data).__name__}, not {what} ({kind})", remedy)
    return data


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` whole or not at all (a temporary file beside it, then a rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    # os.open with 0o666 lets the umask decide the mode, as a plain write would (mkstemp's
    # files are 0600, which would hide a user's artifacts from their group)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """`write_bytes_atomic` for UTF-8 text."""
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(
    path: str | os.PathLike[str], obj: Any, *, indent: int | None = 1, sort_keys: bool = True
) -> Path:
    """`obj` as JSON, written atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def json_digest(data: Any, length: int = 12) -> str:
    """A short SHA-256 of `data` as canonical JSON: names a configuration in a file or a key."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:length]


# -- append-only files ------------------------------------------------------------------------

_O_BINARY: int = getattr(os, "O_BINARY", 0)  # Windows: no newline translation


@contextmanager
def _locked_for_append(path: Path) -> Iterator[int]:
    """A read-write, append-mode descriptor of the file `path` names, created if absent, held
    under an exclusive `flock` until the block ends (closing it releases the lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _O_BINARY, 0o666)
        try:
            if sys.platform != "win32":  # Windows has no flock: appends there are unlocked
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                current = False
        except BaseException:
            os.close(fd)
            raise
        if current:
            break
        # replaced (an atomic rewrite) or deleted while we waited for the lock: appending to
        # the old file would lose the lines, so open the file the path names now
        os.close(fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _drop_partial_line(fd: int, path: Path) -> int:
    """Truncate the bytes after the file's last newline (call under the lock); how many."""
    size = os.fstat(fd).st_size
    keep, end = 0, size
    while end > 0:
        start = max(0, end - (1 << 16))
        os.lseek(fd, start, os.SEEK_SET)  # (no pread: Windows lacks it)
        newline = os.read(fd, end - start).rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        end = start
    if keep < size:
        os.ftruncate(fd, keep)
        log.warning(
            "%s: dropped a partial last line (%d bytes of a record cut short by a crash "
            "while writing); that record is lost and is computed again",
            path,
            size - keep,
        )
    return size - keep


def append_lines(
    path: str | os.PathLike[str],
    lines: Iterable[str],
    *,
    header: Sequence[str] = (),
    fsync: bool = True,
) -> int:
    """Append `lines` (each without its newline) to `path` as whole lines, under the file's
    lock, after truncating a partial last line a crash left (module docstring). `header`
    lines are written first when the file is new or empty. Returns the bytes of a cut record
    dropped (0 almost always). With no lines and no header it only repairs the file (an
    absent one is created empty).
    """
    path = Path(path)
    body = [*header, *lines]
    for line in body:
        if "\n" in line or "\r" in line:
            raise ValueError(f"{path}: a record must be one line, got {line[:80]!r}")
    with _locked_for_append(path) as fd:
        dropped = _drop_partial_line(fd, path)
        if os.fstat(fd).st_size > 0:
            body = body[len(header) :]
        data = "".join(line + "\n" for line in body).encode()
        view = memoryview(data)
        while view:  # one call for a regular file; the loop only guards a short write
            view = view[os.write(fd, view) :]
        if data and fsync:
            os.fsync(fd)
    return dropped


def whole_lines(data: bytes, path: str | os.PathLike[str], *, warn: bool = True) -> list[str]:
    """The whole lines of `data` (read from `path`), without their newlines; a partial last
    line is left out, with a warning naming the file if `warn`."""
    end = data.rfind(b"\n") + 1
    if warn and end < len(data):
        log.warning(
            "%s: skipping a partial last line (%d bytes): cut short by a crash, or being "
            "written by another process right now; the next append drops a cut one",
            path,
            len(data) - end,
        )
    return data[:end].decode("utf-8", errors="replace").split("\n")[:-1]


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """The whole lines of an append-only file (`whole_lines`), without taking its lock."""
    return whole_lines(Path(path).read_bytes(), path)


def csv_line(cells: Iterable[Any]) -> str:
    """One CSV record as a line for `append_lines` (quoted as `csv.writer` quotes)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()[:-1]
