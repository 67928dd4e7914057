"""Building a LUT: the unique layers of a space measured on a device, in passes, resumable.

A build appends its rows to the table's file as they are measured, fsynced per batch
(`open_table`), so a crash loses at most the batch in flight and the next build resumes; a row
the crash cut short is dropped before the next append (`nas.core.files.append_lines`).

A layer may be measured in several passes (`build_lut(passes=N)`): every layer once, then
every layer again, so the passes of one layer lie minutes apart. The host of a shared machine
slows everything for minutes at a time, and a layer measured only inside such a window keeps an
inflated time that no number of rounds within the window removes (on `xnnpack-1t`, a batch of
mobilenetv3 layers measured during one came out about 1.4x slow). Each pass appends its own
row to the table (`latency_models.lut`), whose entry of a key keeps the pass with the lowest
minimum.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from latency_models.devices import Device
from latency_models.lut import COLUMNS, FORMAT, LUT, LUTEntry, LUTError
from latency_models.spec_modules import is_free
from nas.core.files import append_lines, csv_line
from nas.core.layers import LayerSpec
from nas.core.space import SearchSpace, as_rng

log = logging.getLogger(__name__)

__all__ = [
    "build_lut",
    "compile_lut",
    "fill_missing",
    "open_table",
    "pass_plan",
    "reachable_specs",
]


def _first_line(path: Path) -> str:
    with path.open(encoding="utf-8", errors="replace") as f:
        return f.readline()


class _Appender:
    """Appends rows to a LUT file, a batch at a time (`nas.core.files.append_lines`: under the
    file's lock, after dropping a row a crash cut short, fsynced)."""

    def __init__(self, lut: LUT, path: Path) -> None:
        self.lut = lut
        self.path = path
        if path.exists() and not _first_line(path).startswith(f"# {FORMAT} "):
            if lut.path is None or Path(lut.path).resolve() != path.resolve():
                raise LUTError(
                    f"{path} is not a {FORMAT} table of its own: load it with LUT.load and "
                    "append through that table (older formats are rewritten first)"
                )
            lut.save(path)  # an older format: rewritten whole (atomically) before appending
        if not path.exists():
            self._append([])  # the header now: a build that measures nothing leaves a table

    def _append(self, entries: Sequence[LUTEntry]) -> None:
        header = [self.lut.header_line().rstrip("\n"), csv_line(COLUMNS)]
        append_lines(self.path, [csv_line(e.row()) for e in entries], header=header)

    def append(self, entries: Sequence[LUTEntry]) -> None:
        self._append(entries)
        for e in entries:
            self.lut.add(e)


def open_table(
    fresh: LUT, path: str | Path | None, what: str, unit: str = "layers"
) -> tuple[LUT, _Appender | None]:
    """The table a build appends to: the file at `path` resumed (after checking it has the
    identity of `fresh`, which `what` names in the error), or `fresh`, to be written there;
    without a path, `fresh` in memory and no appender."""
    if path is None:
        return fresh, None
    path = Path(path)
    if path.exists():
        lut = LUT.load(path)  # a cut last row is dropped by the first append
        lut.check_identity(fresh.metadata, what)
        log.info("resuming %s: %d %s already measured", path, len(lut), unit)
    else:
        lut = fresh
        lut.path = path
    return lut, _Appender(lut, path)


#: Spaces with at most this many genotypes are enumerated for their reachable specs.
ENUMERATE_LIMIT = 2_000
DEFAULT_SAMPLE_ARCHS = 1_000


def _archs_for(
    space: SearchSpace,
    archs: Sequence[Mapping[str, Any]] | None,
    n_archs: int | None,
    seed: int,
) -> list[dict[str, Any]]:
    if archs is not None:
        return [dict(space.validate(a)) for a in archs]
    if n_archs is None and space.n_genotypes <= ENUMERATE_LIMIT:
        return [dict(a) for a in space.enumerate()]
    rng = as_rng(seed)
    return [dict(space.sample(rng)) for _ in range(n_archs or DEFAULT_SAMPLE_ARCHS)]


def reachable_specs(
    space: SearchSpace,
    device: Device,
    dtype: str,
    archs: Sequence[Mapping[str, Any]] | None = None,
    n_archs: int | None = None,
    seed: int = 0,
) -> list[LayerSpec]:
    """Unique specs (first seen first, free ops left out) of the archs a LUT should cover:
    `archs` if given, else every arch of a small space, else `n_archs` seeded samples."""
    unique: dict[str, LayerSpec] = {}
    for a in _archs_for(space, archs, n_archs, seed):
        for s in device.layer_specs(space, a, dtype):
            if not is_free(s):
                unique.setdefault(s.key, s)
    return list(unique.values())


def compile_lut(
    space: SearchSpace,
    device: Device,
    path: str | Path | None = None,
    *,
    dtype: str | None = None,
    archs: Sequence[Mapping[str, Any]] | None = None,
    n_archs: int | None = None,
    seed: int = 0,
    batch_layers: int = 32,
    passes: int = 1,
) -> int:
    """Compile into the artifact cache what `build_lut` with the same arguments will measure,
    timing nothing; returns how many programs were built now (0 for devices that compile
    nothing). Lowering is slow but needs no quiet machine: run this on other cores first, and
    the measuring `build_lut` finds its programs compiled. Programs are fixed chunks of the
    reachable layers (`pass_plan`), so they do not depend on what the table holds; the table
    only decides which chunks still need measuring (and compiling)."""
    dtype = device.check_dtype(dtype or device.dtypes[0])
    _check_build_args(batch_layers, passes)
    held: dict[str, int] = {}
    if path is not None and Path(path).exists():
        table = LUT.load(path)
        table.check_device(device, dtype)  # as build_lut would refuse it, before any lowering
        held = table.pass_counts()
    compile_layers = getattr(device, "compile_layers", None)
    if compile_layers is None:
        return 0
    specs = reachable_specs(space, device, dtype, archs, n_archs, seed)
    unique = {tuple(s.key for s in c): c for c in pass_plan(specs, held, passes, batch_layers)}
    return sum(compile_layers(chunk, dtype) for chunk in unique.values())


class _Keyed(Protocol):
    @property
    def key(self) -> str: ...


KeyedT = TypeVar("KeyedT", bound=_Keyed)


def pass_plan(
    specs: Sequence[KeyedT],
    held: Mapping[str, int],
    passes: int,
    batch_layers: int = 32,
) -> list[list[KeyedT]]:
    """The chunks a build measures, in order, given the passes a table holds per key.

    Chunks are fixed slices of `specs` (`batch_layers` each), whatever the table holds, so a
    chunk is always the same program (compiled once, found in the cache by every pass, by a
    resumed build and by `compile_lut`). Pass p measures every chunk holding a key with fewer
    than p passes, whole: a key already held gets one more pass, which costs a few
    milliseconds, where a program of another composition would cost a lowering.
    """
    count = {s.key: held.get(s.key, 0) for s in specs}
    chunks = [list(specs[i : i + batch_layers]) for i in range(0, len(specs), batch_layers)]
    plan = []
    for p in range(1, passes + 1):
        for chunk in chunks:
            if any(count[s.key] < p for s in chunk):
                plan.append(chunk)
                for s in chunk:
                    count[s.key] += 1
    return plan


def _check_build_args(batch_layers: int, passes: int) -> None:
    if batch_layers < 1:
        raise ValueError(f"batch_layers must be >= 1, got {batch_layers}")
    if passes < 1:
        raise ValueError(
            f"passes must be >= 1 (how many separate passes measure each layer), got {passes}"
        )


def build_lut(
    space: SearchSpace,
    device: Device,
    path: str | Path | None = None,
    *,
    dtype: str | None = None,
    archs: Sequence[Mapping[str, Any]] | None = None,
    n_archs: int | None = None,
    seed: int = 0,
    batch_layers: int = 32,
    progress: bool = False,
    passes: int = 1,
) -> LUT:
    """Measure every unique layer of `space` (module docstring) on `device`; resumable.

    With `path`, rows go to that CSV as they are measured and an existing file is resumed
    (after checking it belongs to the same device, runtime, threads and dtype); without it,
    the table stays in memory. `passes` > 1 measures every layer again in each further pass
    (module docstring) until every key holds at least `passes` (a fixed chunk holding a key
    that already has them times it once more: `pass_plan`); a table holding fewer for some
    keys is topped up. `progress` shows a tqdm bar.
    """
    dtype = device.check_dtype(dtype or device.dtypes[0])
    _check_build_args(batch_layers, passes)
    lut, appender = open_table(
        LUT.for_device(device, dtype), path, f"device {device.name!r}", "layers"
    )
    specs = reachable_specs(space, device, dtype, archs, n_archs, seed)
    plan = pass_plan(specs, lut.pass_counts(), passes, batch_layers)
    log.info(
        "%s on %s (%s): %d unique layers, %d to measure in %d chunk(s) (%d passes)",
        space.name,
        device.name,
        dtype,
        len(specs),
        sum(map(len, plan)),
        len(plan),
        passes,
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = sum(map(len, plan))
        bar = tqdm(total=total, desc=f"LUT {space.name} on {device.name}", unit="layer")
    try:
        for chunk in plan:
            measured = device.measure_layers(chunk, dtype)
            entries = [
                LUTEntry.from_measurement(s, m) for s, m in zip(chunk, measured, strict=True)
            ]
            if appender is not None:
                appender.append(entries)
            else:
                for e in entries:
                    lut.add(e)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    spaces = set(lut.metadata.get("spaces", []))
    if space.name not in spaces:
        lut.metadata["spaces"] = sorted(spaces | {space.name})
        # the space list is informational; rewriting the header is safe once all rows are in
        if path is not None:
            lut.save(path)
    return lut


def fill_missing(
    lut: LUT,
    device: Device,
    specs: Sequence[LayerSpec],
    path: str | Path | None = None,
) -> list[str]:
    """Measure the keys of `specs` the table lacks on `device` (same identity), in place;
    appended to `path` (default: the table's own file). Returns the keys measured."""
    lut.check_device(device)
    unique: dict[str, LayerSpec] = {}
    for s in specs:
        if not is_free(s) and s.key not in lut:
            unique.setdefault(s.key, s)
    if not unique:
        return []
    todo = list(unique.values())
    measured = device.measure_layers(todo, lut.dtype)
    entries = [LUTEntry.from_measurement(s, m) for s, m in zip(todo, measured, strict=True)]
    target = Path(path) if path is not None else lut.path
    if target is not None:
        _Appender(lut, target).append(entries)
    else:
        for e in entries:
            lut.add(e)
    log.info("measured %d missing layers on %s", len(entries), device.name)
    return [e.key for e in entries]
