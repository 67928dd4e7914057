"""Latency lookup tables: one device and dtype's measured layers, and their CSV file format.

File format (`edge-nas-lut/2`): a first line `# edge-nas-lut/2 {json metadata}` naming the
device, its kind, runtime, runtime version, threads, dtype, creation date and host; then a CSV
header and rows of layer key, the measurement's statistics, when it was taken and how many
passes it stands for. Rows are appended and flushed (with fsync) after every batch, so a crash
loses at most the batch in flight; opening the file again resumes where it stopped, and drops a
last line the crash cut short. `edge-nas-lut/1` files (no `passes` column: one pass per row)
are read too, and rewritten as `/2` before a build appends to them.

A layer may be measured in several passes (`latency_models.lut_build`): each pass appends its
own row; a key's rows combine into one entry: the pass with the lowest minimum (the headline,
as for whole networks in `latency_models.measure`), with the pass count summed.

A table refuses to be resumed, merged or read by a device whose identity differs (device,
runtime, runtime version, threads, dtype, layer recipe): measurements of two devices never mix.

Keys are the specs' keys (`LayerSpec.key`), which do not name the space: one table per device
and dtype serves every space whose layers it holds.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from latency_models.devices import Device
from latency_models.measure import Measurement
from latency_models.spec_modules import is_free
from nas.core.files import FileProblem, append_lines
from nas.core.layers import LayerSpec

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "IDENTITY",
    "LUT",
    "CorruptLUTError",
    "LUTError",
    "LUTMismatchError",
    "MissingKeysError",
    "lut_path",
]

FORMAT = "edge-nas-lut/2"
READABLE_FORMATS = ("edge-nas-lut/1", FORMAT)
IDENTITY: tuple[str, ...] = (
    "device",
    "device_kind",
    "runtime",
    "runtime_version",
    "threads",
    "dtype",
    "layer_recipe",
)
IDENTITY_DEFAULTS: dict[str, Any] = {"layer_recipe": ""}
"""Identity fields a table may lack (written before they existed): their value then."""
COLUMNS: tuple[str, ...] = (
    "key",
    "op",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "mean_ms",
    "std_ms",
    "min_ms",
    "count",
    "warmup",
    "rounds",
    "converged",
    "measured_at",
    "passes",
)
_COLUMNS_V1 = COLUMNS[:-1]
"""`edge-nas-lut/1` rows: one pass each."""


class LUTError(ValueError):
    """A LUT file or lookup problem; the message says what must hold."""


class LUTMismatchError(LUTError):
    """Two tables (or a table and a device) of different device, runtime, threads or dtype."""


class CorruptLUTError(LUTError, FileProblem):
    """A LUT file that cannot be read: a `FileProblem` (the file, what is wrong with which line,
    what to do), so the command line treats it as any bad file."""


_REMEASURE = "delete it to measure the table again (nas latency build), or restore it from a copy"


class MissingKeysError(LUTError):
    """Layer keys a LUT does not hold, all listed at once (`.missing`)."""

    def __init__(self, missing: Sequence[str], lut: LUT) -> None:
        self.missing = list(missing)
        shown = "\n  ".join(self.missing[:20])
        more = f"\n  ... and {len(self.missing) - 20} more" if len(self.missing) > 20 else ""
        super().__init__(
            f"{len(self.missing)} layer key(s) missing from the LUT of {lut.device!r} "
            f"({lut.path or 'in memory'}, {len(lut)} entries):\n  {shown}{more}\n"
            "Build the LUT on these archs (build_lut(..., archs=...)) or pass "
            "on_missing='measure' to measure them on the spot"
        )


@dataclass(frozen=True)
class LUTEntry:
    key: str
    op: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    count: int
    warmup: int
    rounds: int
    converged: bool
    measured_at: str
    passes: int = 1
    """Passes (separate time windows) this entry stands for; its statistics are those of the
    pass with the lowest minimum."""

    def combine(self, other: LUTEntry) -> LUTEntry:
        """This entry and another pass of the same key: the lower minimum's statistics, the
        passes of both."""
        if other.key != self.key:
            raise ValueError(f"cannot combine LUT entries of {self.key!r} and {other.key!r}")
        best = other if other.min_ms < self.min_ms else self
        return replace(best, passes=self.passes + other.passes)

    @classmethod
    def from_measurement(cls, spec: LayerSpec, m: Measurement) -> LUTEntry:
        return cls.of(spec.key, spec.op, m)

    @classmethod
    def of(cls, key: str, op: str, m: Measurement) -> LUTEntry:
        """The entry of a measurement of anything keyed (a layer, a runtime's kernel)."""
        return cls(
            key=key,
            op=op,
            median_ms=m.median_ms,
            p10_ms=m.p10_ms,
            p90_ms=m.p90_ms,
            mean_ms=m.mean_ms,
            std_ms=m.std_ms,
            min_ms=m.min_ms,
            count=m.count,
            warmup=m.warmup,
            rounds=m.rounds,
            converged=m.converged,
            measured_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )

    def row(self) -> list[str]:
        return [
            self.key,
            self.op,
            repr(self.median_ms),
            repr(self.p10_ms),
            repr(self.p90_ms),
            repr(self.mean_ms),
            repr(self.std_ms),
            repr(self.min_ms),
            str(self.count),
            str(self.warmup),
            str(self.rounds),
            str(int(self.converged)),
            self.measured_at,
            str(self.passes),
        ]

    @classmethod
    def parse(cls, row: Sequence[str], columns: Sequence[str] = COLUMNS) -> LUTEntry:
        values = dict(zip(columns, row, strict=True))
        entry = cls(
            key=values["key"],
            op=values["op"],
            median_ms=float(values["median_ms"]),
            p10_ms=float(values["p10_ms"]),
            p90_ms=float(values["p90_ms"]),
            mean_ms=float(values["mean_ms"]),
            std_ms=float(values["std_ms"]),
            min_ms=float(values["min_ms"]),
            count=int(values["count"]),
            warmup=int(values["warmup"]),
            rounds=int(values["rounds"]),
            converged=values["converged"] in ("1", "True", "true"),
            measured_at=values["measured_at"],
            passes=int(values.get("passes", 1)),
        )
        if not entry.key or not np.isfinite(entry.median_ms) or entry.median_ms < 0:
            raise ValueError(f"a row needs a key and a finite median_ms >= 0, got {row}")
        if entry.passes < 1:
            raise ValueError(f"passes must be >= 1, got {entry.passes}")
        return entry


def _identity(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {k: metadata.get(k, IDENTITY_DEFAULTS.get(k)) for k in IDENTITY}


class LUT:
    """Layer key -> measured statistics of one device and dtype (module docstring)."""

    def __init__(
        self,
        metadata: Mapping[str, Any],
        entries: Iterable[LUTEntry] = (),
        path: Path | None = None,
    ) -> None:
        missing = [k for k in IDENTITY if k not in metadata and k not in IDENTITY_DEFAULTS]
        if missing:
            raise LUTError(f"LUT metadata needs the fields {list(IDENTITY)}; missing {missing}")
        self.metadata: dict[str, Any] = dict(metadata)
        self.entries: dict[str, LUTEntry] = {}
        self.path = path
        self.file_format = FORMAT
        """The format of the file it was read from (older ones are rewritten before appending)."""
        for e in entries:
            self.add(e)

    @classmethod
    def for_device(cls, device: Device, dtype: str) -> LUT:
        """An empty table with the metadata of `device` in `dtype`."""
        import torch

        meta = {
            "format": FORMAT,
            **device.metadata(dtype),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "spaces": [],
        }
        return cls(meta)

    # -- identity ----------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return str(self.metadata["device"])

    @property
    def dtype(self) -> str:
        return str(self.metadata["dtype"])

    def check_identity(self, other: Mapping[str, Any], what: str = "device") -> None:
        """Raise `LUTMismatchError` unless `other` (metadata) has the same identity."""
        mine, theirs = _identity(self.metadata), _identity(other)
        diff = {k: (mine[k], theirs[k]) for k in IDENTITY if mine[k] != theirs[k]}
        if diff:
            lines = ", ".join(f"{k}: table {a!r} vs {what} {b!r}" for k, (a, b) in diff.items())
            raise LUTMismatchError(
                f"the LUT at {self.path or '(in memory)'} belongs to another device or runtime "
                f"({lines}); tables of different devices, runtimes, threads, dtypes or layer "
                "recipes never mix: use another path (or delete this file) to build a new one"
            )

    def check_device(self, device: Device, dtype: str | None = None) -> None:
        self.check_identity(device.metadata(dtype or self.dtype), f"device {device.name!r}")

    # -- lookups -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __getitem__(self, key: str) -> LUTEntry:
        try:
            return self.entries[key]
        except KeyError:
            raise MissingKeysError([key], self) from None

    def add(self, entry: LUTEntry) -> None:
        """Add a measurement: a new key, or one more pass of a key the table holds."""
        held = self.entries.get(entry.key)
        self.entries[entry.key] = entry if held is None else held.combine(entry)

    def pass_counts(self) -> dict[str, int]:
        """Passes held per key (what `pass_plan` plans from)."""
        return {k: e.passes for k, e in self.entries.items()}

    def passes_of(self, key: str) -> int:
        """How many passes the table holds for `key` (0 if none)."""
        entry = self.entries.get(key)
        return 0 if entry is None else entry.passes

    def missing(self, specs: Iterable[LayerSpec]) -> list[str]:
        """Keys of `specs` (unique, in order; free ops excluded) the table does not hold."""
        seen: dict[str, None] = {}
        for s in specs:
            if not is_free(s) and s.key not in self.entries:
                seen.setdefault(s.key)
        return list(seen)

    def latency_ms(self, specs: Sequence[LayerSpec], stat: str = "min_ms") -> float:
        """Sum of `stat` over `specs` (default the headline minimum, as whole networks are
        measured: `latency_models.measure`); raises `MissingKeysError` listing every missing
        key."""
        missing = self.missing(specs)
        if missing:
            raise MissingKeysError(missing, self)
        return float(sum(getattr(self.entries[s.key], stat) for s in specs if not is_free(s)))

    def per_op_ms(self, specs: Sequence[LayerSpec]) -> dict[str, float]:
        """Summed headline (minimum) per op kind (features for learned corrections)."""
        out: dict[str, float] = {}
        for s in specs:
            if not is_free(s):
                out[s.op] = out.get(s.op, 0.0) + self[s.key].min_ms
        return out

    def merge(self, other: LUT) -> LUT:
        """A table with the entries of both (this one wins on shared keys); same device only."""
        self.check_identity(other.metadata, "other table")
        merged = LUT(self.metadata, self.entries.values())
        for e in other.entries.values():
            merged.entries.setdefault(e.key, e)
        spaces = sorted({*self.metadata.get("spaces", []), *other.metadata.get("spaces", [])})
        merged.metadata["spaces"] = spaces
        return merged

    # -- files -------------------------------------------------------------------------------
    def header_line(self) -> str:
        return f"# {FORMAT} {json.dumps(self.metadata, sort_keys=True)}\n"

    def save(self, path: str | Path) -> Path:
        """Write the whole table atomically (temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        buf.write(self.header_line())
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for e in self.entries.values():
            writer.writerow(e.row())
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(buf.getvalue())
        os.replace(tmp, path)
        self.path = path
        self.file_format = FORMAT
        return path

    @classmethod
    def load(cls, path: str | Path, *, repair: bool = False) -> LUT:
        """Read a table. A last line cut short by a crash is dropped (and, with `repair`,
        truncated from the file so appending resumes cleanly); any other bad line is an error.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no LUT file at {path}")
        raw = path.read_bytes()
        text = raw.decode("utf-8", errors="replace")
        lines = text.split("\n")
        complete = text.endswith("\n")
        if not complete:
            cut = lines.pop()  # written without its newline: the crash hit mid-row
            log.warning("%s: dropping a last line cut short by a crash: %r", path, cut[:80])
        elif lines and lines[-1] == "":
            lines.pop()
        fmt = next((f for f in READABLE_FORMATS if lines and lines[0].startswith(f"# {f} ")), None)
        if fmt is None:
            first = lines[0][:80] if lines else ""
            raise CorruptLUTError(
                path,
                f"is not an edge-nas LUT: its first line must start with '# {FORMAT} ' followed "
                f"by JSON metadata, got {first!r}",
                _REMEASURE,
            )
        try:
            metadata = json.loads(lines[0][len(f"# {fmt} ") :])
        except json.JSONDecodeError as err:
            raise CorruptLUTError(
                path, f"line 1: metadata is not valid JSON: {err}", _REMEASURE
            ) from None
        if not isinstance(metadata, dict):
            raise CorruptLUTError(path, "line 1: metadata must be a JSON object", _REMEASURE)
        columns = COLUMNS if fmt == FORMAT else _COLUMNS_V1
        if len(lines) < 2 or next(csv.reader([lines[1]])) != list(columns):
            got = lines[1] if len(lines) > 1 else "(nothing)"
            raise CorruptLUTError(
                path, f"line 2: the CSV header must be {','.join(columns)}; got {got!r}", _REMEASURE
            )
        entries = []
        for number, row in enumerate(csv.reader(lines[2:]), start=3):
            try:
                entries.append(LUTEntry.parse(row, columns))
            except (ValueError, TypeError) as err:
                raise CorruptLUTError(
                    path,
                    f"line {number}: not a LUT row ({len(row)} fields, expected "
                    f"{len(columns)}: {', '.join(columns)}): {err}",
                    _REMEASURE,
                ) from None
        try:
            lut = cls(metadata, entries, path)
        except LUTError as err:
            raise CorruptLUTError(path, str(err), _REMEASURE) from None
        lut.file_format = fmt
        if repair and not complete:
            # Only once the file has proved to be a LUT: a foreign file is never truncated.
            # Under the file's lock, as every append drops a cut line.
            append_lines(path, [])
        return lut


def lut_path(directory: str | Path, device: Device | str, dtype: str) -> Path:
    """The conventional file of a device's table in a cache directory."""
    name = device if isinstance(device, str) else device.name
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Path(directory) / f"lut_{safe}_{dtype}.csv"
