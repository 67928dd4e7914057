"""Kernel tables: the kernels a runtime's optimiser makes of whole networks, each timed once.

A LUT of lone layers (`latency_models.lut`) prices what a space's code says; a runtime runs
what its optimiser made of the whole network, glue included. Where the two differ a lot (ONNX
Runtime on NAS-Bench-201: NCHWc reorders at layout boundaries, int8 islands joined by quantize
and dequantize nodes, ReLUs shared between branches), a table of the optimised graph's kernels
predicts better. `KernelSum` (in `latency_models.predictors`) sums it.

Building one needs whole networks: the kernels of an arch are found by optimising its network
(`RealDevice.prepare_arch`, then the runtime's `network_kernels`: about a second an arch on
ONNX Runtime), so a table covers the archs it was built from (every arch of a small space, or
a seeded sample) and a predictor measures the kernels of a new arch on the spot if asked.

The table is a LUT file (same format, crash-safe appends, passes, identity checks) whose layer
recipe names the kernel recipe, so a kernel table and a layer table of one device never mix.
Only runtimes that can name their kernels support it (`supports_kernels`): `ort-cpu-*` today.

The kernels found for each arch are kept beside a table's file (`ArchKernelCache`), so asking
again for an arch seen before (a resumed build, a second predictor, the next validation) costs
a file read instead of an optimised session.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from latency_models.devices import Device, RealDevice
from latency_models.lut import LUT, LUTEntry
from latency_models.lut_build import (
    _Appender,
    _archs_for,
    _check_build_args,
    open_table,
    pass_plan,
)
from latency_models.runtimes.ort_kernels import COPIES, KernelSpec
from nas.core.files import append_lines, json_digest, whole_lines
from nas.core.space import SearchSpace

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_KERNEL_ARCHS",
    "KERNEL_RECIPE",
    "ArchKernelCache",
    "arch_kernels",
    "build_kernel_lut",
    "check_kernel_lut",
    "fill_missing_kernels",
    "kernel_lut_path",
    "kernel_metadata",
    "open_arch_cache",
    "supports_kernels",
]

KERNEL_RECIPE = f"optimised-graph-kernels/2;copies={COPIES};private-weights"
DEFAULT_KERNEL_ARCHS = 100
"""Archs sampled for a kernel table of a space too large to enumerate (each costs an
optimisation of its whole network)."""


def supports_kernels(device: Device) -> bool:
    """Whether `device` can name the kernels its runtime runs for a network."""
    return isinstance(device, RealDevice) and hasattr(device.engine, "network_kernels")


def _checked(device: Device) -> RealDevice:
    if not supports_kernels(device):
        raise ValueError(
            f"device {device.name!r} cannot name the kernels its runtime runs: kernel tables "
            "need a real runtime that exposes its optimised graph (ort-cpu-1t, ort-cpu-2t); "
            "use a layer LUT (build_lut) for the others"
        )
    assert isinstance(device, RealDevice)
    return device


def kernel_metadata(device: Device, dtype: str) -> dict[str, Any]:
    """A kernel table's identity: the device's, with the kernel recipe in its layer recipe."""
    meta = device.metadata(dtype)
    meta["layer_recipe"] = ";".join(r for r in (meta.get("layer_recipe", ""), KERNEL_RECIPE) if r)
    return meta


def kernel_lut_path(directory: str | Path, device: Device | str, dtype: str) -> Path:
    """The conventional file of a device's kernel table in a folder."""
    name = device if isinstance(device, str) else device.name
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Path(directory) / f"kernels_{safe}_{dtype}.csv"


def check_kernel_lut(lut: LUT, device: Device) -> None:
    """Raise `LUTMismatchError` unless `lut` is a kernel table of `device`."""
    lut.check_identity(kernel_metadata(device, lut.dtype), f"device {device.name!r} (kernels)")


_CPU_FIELDS = ("model name", "flags", "Features", "CPU implementer", "CPU part", "CPU variant")


KEY_DIGEST = 16
"""Hex digits of a kernel key's digest in an arch-kernel cache (64 bits: no two of a file's
thousands of kernels collide)."""


def cpu_signature() -> dict[str, Any]:
    """What an optimiser may look at on this CPU: its model and feature flags (ONNX Runtime's
    NCHWc blocks follow the vector width, its int8 kernels the dot-product instructions), from
    the first processor of /proc/cpuinfo (x86 and Arm name them differently)."""
    from nas.backends import cpu_info

    info = cpu_info()
    fields: dict[str, Any] = {
        name: sorted(info[name].split()) if name in ("flags", "Features") else info[name]
        for name in _CPU_FIELDS
        if name in info
    }
    return {"cpu": fields or platform.processor() or platform.machine(), "arch": platform.machine()}


class ArchKernelCache:
    """The kernels found for each arch of a device and dtype, in a JSON-lines file.

    Finding an arch's kernels optimises its whole network (about a second on ONNX Runtime);
    the answer depends only on the arch, the runtime and its version, how a module becomes a
    model (exporter, quantizer), the dtype, the kernel recipe and the CPU, all of which name
    the file (`path_for`), so a cache moved to another machine or runtime is simply not found
    there, and two machines sharing a folder keep a file each. A kernel is written once per
    writer as `{"k": digest of its key, "key": ..., "op": ...}`, an arch as the digests of its
    kernels in order (`{"space": ..., "arch": key, "kernels": [...]}`), each arch's lines in one
    append (`nas.core.files.append_lines`, under the file's lock). Digests rather than counters,
    so several writers (two predictors, two processes) can append to one file: a kernel written
    twice is the same line twice, and a writer looks at what others appended before finding an
    arch itself. It is a cache: a line cut short by a crash is dropped by the next append, an
    unreadable line is skipped with a warning, and their archs are found again; a file deleted
    under a writer is started again.

    Keyed by the space's name and arch key, as whole-network measurements are: a space whose
    code changes what an arch builds needs its caches (and measurements) cleared.
    """

    FORMAT = "edge-nas arch kernels/2"

    def __init__(self, path: str | Path, identity: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.identity = dict(identity)
        self._forget()
        self._refresh()

    def _forget(self) -> None:
        self._kernels: dict[str, KernelSpec] = {}  # digest -> kernel
        self._archs: dict[tuple[str, str], list[str]] = {}
        self._offset = 0  # bytes of the file read so far
        self._file_id: tuple[int, int] | None = None  # (device, inode) of the file read

    @staticmethod
    def identity_for(device: Device, dtype: str) -> dict[str, Any]:
        """The device's table identity, how its runtime turns a module into a model (exporter
        and quantizer versions and settings), and the CPU."""
        identity = {**kernel_metadata(device, dtype), **cpu_signature()}
        recipe = getattr(getattr(device, "engine", None), "network_recipe", None)
        if callable(recipe):
            identity["network"] = recipe(dtype)
        return identity

    @classmethod
    def path_for(cls, table_path: str | Path, identity: Mapping[str, Any]) -> Path:
        """`kernels_D_T.csv` -> `kernels_D_T.archs-<digest of format and identity>.jsonl`
        beside it (a cache of an older format is another file, left unread)."""
        table_path = Path(table_path)
        digest = json_digest({"format": cls.FORMAT, **identity})
        return table_path.with_name(f"{table_path.stem}.archs-{digest}.jsonl")

    @classmethod
    def beside(cls, table_path: str | Path, device: Device, dtype: str) -> ArchKernelCache:
        identity = cls.identity_for(device, dtype)
        return cls(cls.path_for(table_path, identity), identity)

    def _header(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "identity": self.identity}

    def _refresh(self) -> None:
        """Read the whole lines appended since the last read (by this writer or another)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self._file_id is not None:
                self._forget()  # deleted under us: what it held is gone with it
            return
        file_id = (stat.st_dev, stat.st_ino)
        if self._file_id is not None and (file_id != self._file_id or stat.st_size < self._offset):
            self._forget()  # replaced or cut: read the new file from its start
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        # a line still being written (or cut short) waits; said once, when the file is opened
        lines = whole_lines(data, self.path, warn=self._offset == 0)
        end = data.rfind(b"\n") + 1
        if end == 0:
            return
        if self._offset == 0:
            self._check_header(lines[0])
            lines = lines[1:]
        self._offset += end
        self._file_id = file_id
        skipped = 0
        for line in lines:
            try:
                row = json.loads(line)
                if "k" in row:
                    kernel = KernelSpec(str(row["key"]), str(row["op"]))
                    if json_digest(kernel.key, KEY_DIGEST) != row["k"]:
                        raise ValueError("digest does not match the key")
                    self._kernels[row["k"]] = kernel
                elif "arch" in row:
                    digests = [str(d) for d in row["kernels"]]
                    if not all(d in self._kernels for d in digests):
                        raise ValueError("names a kernel not written before it")
                    self._archs[str(row["space"]), str(row["arch"])] = digests
                elif row != self._header():  # a second writer's header: harmless
                    raise ValueError("neither a kernel, an arch nor this file's header")
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                skipped += 1
        if skipped:
            log.warning(
                "%s: skipped %d unreadable line(s) (a crash while writing?): their archs are "
                "found again when asked for; delete the file to drop the lines",
                self.path,
                skipped,
            )

    def _check_header(self, line: str) -> None:
        try:
            header = json.loads(line)
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("format") != self.FORMAT:
            raise ValueError(
                f"{self.path} is not an arch-kernel cache ({self.FORMAT!r} header expected): "
                "delete it (it is rebuilt as kernels are found)"
            )
        if header.get("identity") != self.identity:
            raise ValueError(
                f"{self.path} holds the kernels of another device, runtime or CPU than its "
                "name says: delete it (it is rebuilt as kernels are found)"
            )

    def __len__(self) -> int:
        return len(self._archs)

    def get(self, space: SearchSpace, arch: Mapping[str, Any]) -> list[KernelSpec] | None:
        """The arch's kernels if this file holds them (looking again at what other writers
        appended since the last read before saying no)."""
        memo = (space.name, space.key(arch))
        if memo not in self._archs:
            self._refresh()
        digests = self._archs.get(memo)
        return None if digests is None else [self._kernels[d] for d in digests]

    def put(
        self, space: SearchSpace, arch: Mapping[str, Any], kernels: Sequence[KernelSpec]
    ) -> None:
        self._refresh()  # a file deleted or replaced since: start again, as a new writer
        rows: list[dict[str, Any]] = []
        digests = []
        for k in kernels:
            d = json_digest(k.key, KEY_DIGEST)
            if d not in self._kernels:
                self._kernels[d] = k
                rows.append({"k": d, "key": k.key, "op": k.op})
            digests.append(d)
        arch_key = space.key(arch)
        rows.append({"space": space.name, "arch": arch_key, "kernels": digests})
        self._archs[space.name, arch_key] = digests
        # one locked write of whole lines (the header first in a new file): writers sharing the
        # file never split a line, and a line a crash cut short is dropped first
        append_lines(
            self.path,
            [json.dumps(r, sort_keys=True) for r in rows],
            header=[json.dumps(self._header(), sort_keys=True)],
        )


def open_arch_cache(table_path: str | Path, device: Device, dtype: str) -> ArchKernelCache | None:
    """The arch-kernel cache beside a kernel table, or None (with a warning saying why) where
    it cannot be read: a cache must never stop a prediction."""
    try:
        return ArchKernelCache.beside(table_path, device, dtype)
    except (OSError, ValueError) as err:
        log.warning("arch-kernel cache not used (kernels are found afresh): %s", err)
        return None


def arch_kernels(
    device: Device,
    space: SearchSpace,
    arch: Mapping[str, Any],
    dtype: str,
    cache: ArchKernelCache | None = None,
) -> list[KernelSpec]:
    """The kernels, in order, `device`'s runtime runs for `arch`'s network (from `cache` if it
    holds them; found and added to it otherwise)."""
    real = _checked(device)
    if cache is not None:
        held = cache.get(space, arch)
        if held is not None:
            return held
    prepared = real.prepare_arch(space, arch, dtype)
    kernels: list[KernelSpec] = real.engine.network_kernels(prepared)  # type: ignore[attr-defined]
    if cache is not None:
        try:
            cache.put(space, arch, kernels)
        except (OSError, ValueError) as err:  # a cache must never stop a prediction
            log.warning("arch-kernel cache %s not written: %s", cache.path, err)
    return kernels


def _measure(
    lut: LUT, device: RealDevice, kernels: Sequence[KernelSpec], appender: _Appender | None
) -> None:
    measured = device.engine.measure_kernels(  # type: ignore[attr-defined]
        kernels, lut.dtype, device.protocol
    )
    entries = [LUTEntry.of(k.key, k.op, m) for k, m in zip(kernels, measured, strict=True)]
    if appender is not None:
        appender.append(entries)
    else:
        for e in entries:
            lut.add(e)


def build_kernel_lut(
    space: SearchSpace,
    device: Device,
    path: str | Path | None = None,
    *,
    dtype: str | None = None,
    archs: Sequence[Mapping[str, Any]] | None = None,
    n_archs: int | None = None,
    seed: int = 0,
    batch_kernels: int = 32,
    passes: int = 1,
    progress: bool = False,
) -> LUT:
    """Time every unique kernel of `archs` (default: every arch of a small space, else
    `n_archs` seeded samples, `DEFAULT_KERNEL_ARCHS` if not given) on `device`, in `passes`
    passes (as `build_lut`); rows go to `path` as measured and a table there is resumed."""
    real = _checked(device)
    dtype = real.check_dtype(dtype or real.dtypes[0])
    _check_build_args(batch_kernels, passes)
    if archs is None and n_archs is None and space.n_genotypes > DEFAULT_KERNEL_ARCHS:
        n_archs = DEFAULT_KERNEL_ARCHS
    fresh = LUT.for_device(real, dtype)
    fresh.metadata.update(kernel_metadata(real, dtype))
    lut, appender = open_table(fresh, path, f"device {real.name!r} (kernels)", "kernels")
    chosen = _archs_for(space, archs, n_archs, seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(chosen), desc=f"kernels of {space.name} archs", unit="arch")
    cache = open_arch_cache(path, real, dtype) if path is not None else None
    unique: dict[str, KernelSpec] = {}
    for a in chosen:
        for k in arch_kernels(real, space, a, dtype, cache):
            unique.setdefault(k.key, k)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    plan = pass_plan(list(unique.values()), lut.pass_counts(), passes, batch_kernels)
    log.info(
        "%s on %s (%s): %d archs, %d unique kernels, %d kernel timings to do (%d passes)",
        space.name,
        real.name,
        dtype,
        len(chosen),
        len(unique),
        sum(map(len, plan)),
        passes,
    )
    for chunk in plan:
        _measure(lut, real, chunk, appender)
    spaces = set(lut.metadata.get("spaces", []))
    if space.name not in spaces:
        lut.metadata["spaces"] = sorted(spaces | {space.name})
        if path is not None:
            lut.save(path)
    return lut


def fill_missing_kernels(lut: LUT, device: Device, kernels: Sequence[KernelSpec]) -> list[str]:
    """Measure the kernels the table lacks (one pass), appended to its file if it has one."""
    real = _checked(device)
    check_kernel_lut(lut, real)
    todo = list({k.key: k for k in kernels if k.key not in lut}.values())
    if todo:
        appender = _Appender(lut, lut.path) if lut.path is not None else None
        _measure(lut, real, todo, appender)
        log.info("measured %d missing kernels on %s", len(todo), real.name)
    return [k.key for k in todo]
