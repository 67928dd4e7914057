"""On-disk cache of compiled runtime artifacts (``.pte``, ``.onnx``), keyed by content hash.

Layout: ``<root>/artifacts/<runtime>/<key[:2]>/<key><suffix>`` plus ``<key>.json`` beside it with
what was built and how long it took. ``root`` is ``$EDGE_NAS_CACHE`` or ``~/.cache/edge-nas``.
Artifacts are the runtimes' own formats (flatbuffer, protobuf), never pickles. Writes go to a
temporary file first and are renamed into place, so a crash never leaves a half-written entry
and concurrent writers of the same key are harmless (the content is the same).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nas.core.files import FileProblem, write_bytes_atomic

__all__ = [
    "ENV_VAR",
    "ArtifactCache",
    "default_cache_root",
]

log = logging.getLogger(__name__)

ENV_VAR = "EDGE_NAS_CACHE"


def default_cache_root() -> Path:
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edge-nas"


class ArtifactCache:
    """Compiled artifacts by (runtime, content key)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_root()

    def __repr__(self) -> str:
        return f"ArtifactCache({str(self.root)!r})"

    def path(self, runtime: str, key: str, suffix: str) -> Path:
        if not key or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"cache keys are lowercase hex digests; got {key!r}")
        return self.root / "artifacts" / runtime / key[:2] / f"{key}{suffix}"

    def load(self, runtime: str, key: str, suffix: str) -> bytes | None:
        """The cached bytes, or None for a miss. An entry that is empty or does not match the
        checksum recorded beside it (a disk or hand edit; writes are atomic) is a miss too,
        with a warning: it is built again and replaced."""
        path = self.path(runtime, key, suffix)
        if path.is_dir():
            raise FileProblem(path, "is a folder, not a cached artifact", "delete it")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        recorded = (self.load_meta(runtime, key, suffix) or {}).get("sha256")
        if not data or (recorded is not None and hashlib.sha256(data).hexdigest() != recorded):
            log.warning("%s: a damaged cache entry (empty or checksum mismatch); rebuilding", path)
            return None
        return data

    def load_meta(self, runtime: str, key: str, suffix: str) -> dict[str, Any] | None:
        path = self.path(runtime, key, suffix).with_suffix(".json")
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):  # missing, a folder, not JSON, binary: no description
            return None
        return meta if isinstance(meta, dict) else None

    def store(
        self, runtime: str, key: str, suffix: str, data: bytes, meta: Mapping[str, Any]
    ) -> Path:
        path = self.path(runtime, key, suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)
        meta = {**meta, "sha256": hashlib.sha256(data).hexdigest()}
        write_bytes_atomic(path.with_suffix(".json"), json.dumps(dict(meta), indent=1).encode())
        log.debug("cached %s (%d bytes)", path, len(data))
        return path
