"""Whole-network measurements kept on disk, so a long validation resumes across sessions.

One CSV per store; each row is one measurement of one arch on one device identity (device,
runtime, runtime version, threads, dtype) with a repeat index. Rows are appended and fsynced one
by one (`nas.core.files.append_lines`); a last line cut short by a crash is skipped when read and
dropped before the next append, under the file's lock.

The figure a store gives for an arch is the headline of :mod:`latency_models.measure`: the
minimum over the timed runs. :meth:`ArchMeasurements.measure_passes` measures a list of archs in
several passes, one arch after the other within a pass, and gives each arch's minimum over the
passes: a stretch of contention then hits one pass of an arch, not all of them. Stores written
before the ``min_ms`` column existed still load; their rows give the median, as they did then.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from latency_models.devices import Device
from latency_models.measure import Measurement
from nas.core.files import append_lines, csv_line, read_lines
from nas.core.space import SearchSpace

__all__ = ["ArchMeasurements"]

COLUMNS: tuple[str, ...] = (
    "device",
    "runtime",
    "runtime_version",
    "threads",
    "dtype",
    "space",
    "arch_key",
    "repeat",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "std_ms",
    "min_ms",
    "count",
    "converged",
    "arch_json",
    "measured_at",
)
_COLUMNS_BEFORE_MIN = tuple(c for c in COLUMNS if c != "min_ms")
"""The header of stores written before ``min_ms`` existed (still readable)."""


class ArchMeasurements:
    """A resumable store of whole-network latencies (module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._rows: dict[tuple[str, ...], dict[str, str]] = {}
        self._header: tuple[str, ...] = COLUMNS
        if self.path.exists():
            self._load()

    @staticmethod
    def _ident(device: Device, dtype: str) -> tuple[str, ...]:
        m = device.metadata(dtype)
        return (m["device"], m["runtime"], m["runtime_version"], str(m["threads"]), dtype)

    def _load(self) -> None:
        # a last line cut short is left out (said); the next append drops it, under the lock
        reader = csv.reader([ln for ln in read_lines(self.path) if ln])
        header = next(reader, None)
        if header not in (list(COLUMNS), list(_COLUMNS_BEFORE_MIN)):
            raise ValueError(
                f"{self.path} is not an arch-measurement store: its header must be "
                f"{','.join(COLUMNS)}; got {header}"
            )
        self._header = tuple(header)
        for number, row in enumerate(reader, start=2):
            if len(row) != len(self._header):
                raise ValueError(
                    f"{self.path}, line {number}: {len(row)} fields, expected {len(self._header)}"
                )
            r = dict(zip(self._header, row, strict=True))
            self._rows[self._key_of(r)] = r

    @staticmethod
    def _key_of(r: Mapping[str, str]) -> tuple[str, ...]:
        return (
            r["device"],
            r["runtime"],
            r["runtime_version"],
            r["threads"],
            r["dtype"],
            r["space"],
            r["arch_key"],
            r["repeat"],
        )

    def __len__(self) -> int:
        return len(self._rows)

    def get(
        self,
        device: Device,
        space: SearchSpace,
        arch: Mapping[str, Any],
        dtype: str,
        repeat: int = 0,
    ) -> float | None:
        """The stored headline (minimum, ms) of one measurement, or ``None`` if not measured."""
        key = (*self._ident(device, dtype), space.name, space.key(arch), str(repeat))
        row = self._rows.get(key)
        if row is None:
            return None
        return float(row.get("min_ms") or row["median_ms"])

    def passes_stored(
        self,
        device: Device,
        space: SearchSpace,
        archs: Sequence[Mapping[str, Any]],
        dtype: str,
    ) -> int:
        """How many leading passes (repeats 0, 1, ...) every one of ``archs`` has stored."""
        n = 0
        while all(self.get(device, space, a, dtype, n) is not None for a in archs):
            n += 1
        return n

    def add(
        self,
        device: Device,
        space: SearchSpace,
        arch: Mapping[str, Any],
        dtype: str,
        m: Measurement,
        repeat: int = 0,
    ) -> None:
        ident = self._ident(device, dtype)
        r = {
            "device": ident[0],
            "runtime": ident[1],
            "runtime_version": ident[2],
            "threads": ident[3],
            "dtype": dtype,
            "space": space.name,
            "arch_key": space.key(arch),
            "repeat": str(repeat),
            "median_ms": repr(m.median_ms),
            "p10_ms": repr(m.p10_ms),
            "p90_ms": repr(m.p90_ms),
            "std_ms": repr(m.std_ms),
            "min_ms": repr(m.min_ms),
            "count": str(m.count),
            "converged": str(int(m.converged)),
            "arch_json": json.dumps(dict(space.validate(arch)), sort_keys=True),
            "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        if not self.path.exists():
            self._header = COLUMNS
        # an old store keeps its own columns, so every line of one file has one shape
        row = csv_line(r[c] for c in self._header)
        append_lines(self.path, [row], header=[csv_line(COLUMNS)])
        self._rows[self._key_of(r)] = r

    def measure(
        self,
        device: Device,
        space: SearchSpace,
        archs: Sequence[Mapping[str, Any]],
        dtype: str,
        repeat: int = 0,
        progress: bool = False,
    ) -> list[float]:
        """Latency (ms, the headline minimum) of each arch: from the store, or measured now and
        stored."""
        out: list[float] = []
        iterator: Any = archs
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(archs, desc=f"{space.name} on {device.name} ({dtype}, repeat {repeat})")
        for a in iterator:
            value = self.get(device, space, a, dtype, repeat)
            if value is None:
                m = device.measure_arch(space, a, dtype)
                self.add(device, space, a, dtype, m, repeat)
                value = m.latency_ms
            out.append(value)
        return out

    def drop(self, device: Device, space: SearchSpace, dtype: str) -> int:
        """Forget every measurement of ``space`` on ``device`` in ``dtype`` (for example one
        taken while the machine was busy), rewriting the file; returns how many rows went."""
        ident = (*self._ident(device, dtype), space.name)
        gone = [k for k in self._rows if k[: len(ident)] == ident]
        if not gone:
            return 0
        for k in gone:
            del self._rows[k]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(self._header)
            for r in self._rows.values():
                writer.writerow([r.get(c, "") for c in self._header])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return len(gone)

    def measure_passes(
        self,
        device: Device,
        space: SearchSpace,
        archs: Sequence[Mapping[str, Any]],
        dtype: str,
        repeats: Sequence[int],
        progress: bool = False,
    ) -> list[float]:
        """Each arch's minimum over the passes ``repeats`` (repeat indices of the store).

        Pass after pass, every arch once per pass (module docstring): measured now where the
        store lacks a pass, so an interrupted call resumes at the measurement it stopped in.
        """
        if not repeats:
            raise ValueError("measure_passes needs at least one repeat index")
        if len(set(repeats)) != len(repeats) or any(r < 0 for r in repeats):
            raise ValueError(f"repeat indices must be distinct ints >= 0; got {list(repeats)}")
        per_pass = [self.measure(device, space, archs, dtype, r, progress) for r in repeats]
        return [min(values) for values in zip(*per_pass, strict=True)]
