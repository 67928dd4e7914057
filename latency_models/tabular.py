"""A table device: whole-network latencies measured elsewhere (e.g. HW-NAS-Bench's Pixel 3
column of `nb201.csv`), read from a CSV; it can be calibrated on and validated against, never
asked for a layer."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from latency_models.devices import Device, DeviceError, ProgressFn
from latency_models.measure import Measurement
from latency_models.profiles import DeviceProfile
from nas.core.files import FileProblem, check_file
from nas.core.layers import LayerSpec
from nas.core.space import Arch, SearchSpace

__all__ = ["TabularDevice"]


class TabularDevice(Device):
    """Whole-network latencies read from a CSV (one row per arch, one column per device).

    `arch_column` holds the arch: parsed with `parse` (default: the space's `from_str` where it
    has one, else JSON of the arch mapping). Rows are keyed by `space.key(arch)`.
    """

    kind = "tabular"
    deterministic = True

    def __init__(
        self,
        path: str | Path,
        column: str,
        space: SearchSpace,
        *,
        arch_column: str = "arch_str",
        parse: Callable[[str], Mapping[str, Any]] | None = None,
        name: str | None = None,
        dtype: str = "fp32",
        profile: DeviceProfile | None = None,
    ) -> None:
        self.path = Path(path)
        self.column = column
        self.space = space
        self.name = name or f"table:{self.path.name}:{column}"
        self.runtime = f"table {self.path.name}"
        self._dtype = dtype
        self._profile = profile
        self.threads = profile.cores if profile is not None else 1
        if parse is None:
            from_str = getattr(space, "from_str", None)
            parse = from_str if callable(from_str) else _parse_json_arch
        self._table, self._archs = _read_table(self.path, arch_column, column, space, parse)

    @property
    def runtime_version(self) -> str:
        return f"{self.path.name} column {self.column}"

    @property
    def dtypes(self) -> tuple[str, ...]:
        return (self._dtype,)

    def __len__(self) -> int:
        return len(self._table)

    def archs(self) -> list[Arch]:
        """Every arch in the table, in file order."""
        return [dict(a) for a in self._archs]

    def latencies_ms(self, archs: Iterable[Mapping[str, Any]] | None = None) -> list[float]:
        """Measured latency of each arch (all rows in file order when `archs` is None)."""
        if archs is None:
            archs = self._archs
        return [self.latency_ms(self.space, a) for a in archs]

    def latency_ms(self, space: SearchSpace, arch: Mapping[str, Any]) -> float:
        if space is not self.space and space.name != self.space.name:
            raise DeviceError(
                f"table device {self.name!r} holds archs of space {self.space.name!r}, "
                f"not {space.name!r}"
            )
        key = self.space.key(arch)
        try:
            return self._table[key]
        except KeyError:
            raise DeviceError(
                f"arch {key!r} is not in {self.path} ({len(self._table)} rows): a table device "
                "only knows the archs it was measured on"
            ) from None

    def measure_layers(
        self,
        specs: Sequence[LayerSpec],
        dtype: str = "fp32",
        progress: ProgressFn | None = None,
    ) -> list[Measurement]:
        raise DeviceError(
            f"table device {self.name!r} holds whole-network latencies only and cannot time "
            "layers; calibrate an emulated device on it (latency_models.calibrate) and build "
            "LUTs on that"
        )

    def measure_arch(
        self, space: SearchSpace, arch: Mapping[str, Any], dtype: str = "fp32"
    ) -> Measurement:
        self.check_dtype(dtype)
        return self._point(self.latency_ms(space, arch), dtype)

    def prior_profile(self) -> DeviceProfile:
        if self._profile is None:
            raise DeviceError(
                f"table device {self.name!r} has no device profile to calibrate from; pass "
                "profile=PROFILES[...] when creating it"
            )
        return self._profile


def _parse_json_arch(text: str) -> Mapping[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object of dimension -> value, got {text!r}")
    return value


def _read_table(
    path: Path,
    arch_column: str,
    column: str,
    space: SearchSpace,
    parse: Callable[[str], Mapping[str, Any]],
) -> tuple[dict[str, float], list[Arch]]:
    what = "a measurement table (CSV with an arch and a latency column)"
    fix = "name the CSV of whole-network latencies you measured"
    if not (path.exists() or path.is_symlink()):  # FileNotFoundError, as callers expect
        raise FileNotFoundError(f"no measurement table at {path}; {fix}")
    text = check_file(path, what, fix).read_bytes()
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise FileProblem(path, f"is binary, not {what} (a file of another kind?)", fix) from None
    reader = csv.DictReader(io.StringIO(decoded, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in (arch_column, column) if c not in header]
    if missing:
        raise DeviceError(
            f"{path} has no column(s) {missing}; it has {header}. Pass arch_column= and "
            "column= naming the arch and the latency (ms) columns"
        )
    table: dict[str, float] = {}
    archs: list[Arch] = []
    for line, row in enumerate(reader, start=2):
        try:
            arch = space.validate(parse(row[arch_column]))
            value = float(row[column])
        except (ValueError, TypeError, KeyError) as err:
            raise DeviceError(f"{path}, line {line}: cannot read the row: {err}") from None
        if not (math.isfinite(value) and value > 0):
            raise DeviceError(
                f"{path}, line {line}: latency {column}={row[column]!r} must be a finite "
                "number > 0 (milliseconds)"
            )
        key = space.key(arch)
        if key not in table:
            archs.append(arch)
        table[key] = value
    if not table:
        raise DeviceError(f"{path} holds no rows")
    return table, archs
