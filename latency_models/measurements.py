"""Whole-network measurements kept on disk, so a long validation resumes across sessions.

One CSV per store; each row is one measurement of one arch on one device identity (device,
runtime, runtime version, threads, dtype) with a repeat index (0 = first measurement, 1 = the
re-measurement used for test-retest agreement). Rows are appended and flushed one by one; a
last line cut short by a crash is ignored.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from latency_models.devices import Device
from latency_models.measure import Measurement
from nas.space import SearchSpace

log = logging.getLogger(__name__)

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
    "count",
    "converged",
    "arch_json",
    "measured_at",
)


class ArchMeasurements:
    """A resumable store of whole-network latencies (module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._rows: dict[tuple[str, ...], dict[str, str]] = {}
        if self.path.exists():
            self._load()

    @staticmethod
    def _ident(device: Device, dtype: str) -> tuple[str, ...]:
        m = device.metadata(dtype)
        return (m["device"], m["runtime"], m["runtime_version"], str(m["threads"]), dtype)

    def _load(self) -> None:
        text = self.path.read_text()
        lines = text.split("\n")
        if not text.endswith("\n") and lines:
            log.warning("%s: ignoring a last line cut short by a crash", self.path)
            lines.pop()
            with self.path.open("r+b") as f:
                f.truncate(len(text.encode()) - len(text.rsplit("\n", 1)[-1].encode()))
        reader = csv.reader([ln for ln in lines if ln])
        header = next(reader, None)
        if header != list(COLUMNS):
            raise ValueError(
                f"{self.path} is not an arch-measurement store: its header must be "
                f"{','.join(COLUMNS)}; got {header}"
            )
        for number, row in enumerate(reader, start=2):
            if len(row) != len(COLUMNS):
                raise ValueError(
                    f"{self.path}, line {number}: {len(row)} fields, expected {len(COLUMNS)}"
                )
            r = dict(zip(COLUMNS, row, strict=True))
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
        key = (*self._ident(device, dtype), space.name, space.key(arch), str(repeat))
        row = self._rows.get(key)
        return float(row["median_ms"]) if row is not None else None

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
            "count": str(m.count),
            "converged": str(int(m.converged)),
            "arch_json": json.dumps(dict(space.validate(arch)), sort_keys=True),
            "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            if new:
                writer.writerow(COLUMNS)
            writer.writerow([r[c] for c in COLUMNS])
            f.flush()
            os.fsync(f.fileno())
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
        """Median latency (ms) of each arch: from the store, or measured now and stored."""
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
                value = m.median_ms
            out.append(value)
        return out
