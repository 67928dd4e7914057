"""Files the project writes and reads back: atomic writes, digests, and the checkpoint error.

Every file a run keeps is written whole or not at all (a temporary file in the same folder,
then `os.replace`), so a kill at any moment leaves the previous version or the new one. Digests
name configurations (`json_digest`) and check that a tensor file is the one its JSON describes
(`sha256_file`).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

__all__ = [
    "CheckpointError",
    "FileProblem",
    "json_digest",
    "sha256_file",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit what it is loaded into; the message
    names the file and says what was expected."""


class FileProblem(ValueError):
    """A file we read is missing, corrupt, cut short, a folder, or of another kind: the message
    names the file, says what is wrong and what to do (delete it to redo the stage, or resume).
    The command line treats it as bad input (exit 2, no traceback)."""

    def __init__(self, path: str | os.PathLike[str], problem: str, remedy: str) -> None:
        self.path = Path(path)
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"{path}: {problem}; {remedy}")


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
