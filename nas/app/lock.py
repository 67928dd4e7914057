"""One process per run folder: an OS file lock (`fcntl.flock` on `RUN/.lock`).

The operating system releases the lock when the process ends, however it ends (a kill -9, a
machine that loses power and reboots), so a folder is never left locked by a dead run. The
holder writes its pid, command and start time into the file, so a second command on the same
folder exits 2 naming the process that holds it. Workers on a shared study storage take no
lock on the study: they share it by design.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from nas.app.errors import InputError

__all__ = ["LOCK_FILE", "FolderLocked", "folder_lock", "lock_holder"]

LOCK_FILE = ".lock"

try:  # POSIX; elsewhere a run folder is not locked (and the docs say so)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


class FolderLocked(InputError):
    """Another live process holds the run folder (exit 2, naming it)."""


def lock_holder(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """What the holder of `folder`'s lock wrote about itself ({} when nothing readable)."""
    try:
        data = json.loads((Path(folder) / LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(folder: Path, holder: dict[str, Any]) -> str:
    if not holder:
        return f"{folder} is in use by another process (it has not said which yet)"
    return (
        f"{folder} is in use by process {holder.get('pid')} on {holder.get('host')} "
        f"(`{holder.get('command')}`, started {holder.get('started')})"
    )


def _acquire(handle: TextIO, folder: Path, wait_s: float | None) -> None:
    if fcntl is None:  # pragma: no cover
        return
    deadline = None if wait_s is None else time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
        if deadline is None or time.monotonic() >= deadline:
            raise FolderLocked(
                _describe(folder, lock_holder(folder))
                + "; wait for it to finish (or stop it: a stopped run resumes), or use "
                "another folder"
            )
        time.sleep(0.2)


@contextmanager
def folder_lock(
    folder: str | os.PathLike[str],
    command: Sequence[str] | str | None = None,
    *,
    wait_s: float | None = None,
) -> Iterator[Path]:
    """Hold `folder`'s lock (creating the folder) for the duration of the block.

    Another holder makes it raise `FolderLocked` at once, or after waiting up to `wait_s`
    seconds for the lock to be released. The lock file stays behind, emptied: holding it is
    what counts, not its existence."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} is a file; a run folder is a folder (give another path)")
    path.mkdir(parents=True, exist_ok=True)
    handle = (path / LOCK_FILE).open("a+")
    try:
        _acquire(handle, path, wait_s)
        argv = command if command is not None else ["nas", *sys.argv[1:]]
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": argv if isinstance(argv, str) else " ".join(argv),
            "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(info))
        handle.flush()
        try:
            yield path
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
    finally:
        handle.close()  # closing the descriptor releases the lock
