"""The whole-network measurement store: headline figure, interleaved passes, resume, old files."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import latency_models as lm
from latency_models.measure import Measurement
from latency_models.measurements import _COLUMNS_BEFORE_MIN, COLUMNS, ArchMeasurements
from nas.core.space import SearchSpace
from search_spaces import get_space


class _Contended(lm.EmulatedDevice):
    """The emulated Pixel 3 with a neighbour: every other call is twice as slow (median and
    minimum both), and it counts its calls."""

    def __init__(self) -> None:
        base = lm.get_device("pixel3-emulated")
        assert isinstance(base, lm.EmulatedDevice)
        super().__init__(base.profile, base.params, name="contended")
        self.calls = 0

    def measure_arch(
        self, space: SearchSpace, arch: Mapping[str, Any], dtype: str = "fp32"
    ) -> Measurement:
        m = super().measure_arch(space, arch, dtype)
        slow = 2.0 if self.calls % 2 else 1.0
        self.calls += 1
        return dataclasses.replace(m, median_ms=m.median_ms * slow * 1.5, min_ms=m.min_ms * slow)


def test_passes_give_the_minimum_over_passes_measured_in_turn(tmp_path: Path) -> None:
    space = get_space("tiny")
    archs = [space.sample(i) for i in range(3)]
    device = _Contended()
    truth = [device.arch_ms(space, a) for a in archs]
    store = ArchMeasurements(tmp_path / "m.csv")
    # calls 0..5: pass 0 gets calls 0, 1, 2 and pass 1 calls 3, 4, 5, so every arch is slowed
    # in exactly one pass and the minimum over both is its quiet figure
    got = store.measure_passes(device, space, archs, "fp32", [0, 1])
    assert got == pytest.approx(truth)
    assert device.calls == 6
    # the headline is the minimum, not the median
    assert store.get(device, space, archs[0], "fp32", 0) == pytest.approx(truth[0])
    # a new store on the same file resumes: nothing is measured again
    again = ArchMeasurements(tmp_path / "m.csv")
    assert again.measure_passes(device, space, archs, "fp32", [0, 1]) == pytest.approx(truth)
    assert device.calls == 6
    with pytest.raises(ValueError, match="distinct ints >= 0"):
        store.measure_passes(device, space, archs, "fp32", [1, 1])
    assert store.passes_stored(device, space, archs, "fp32") == 2
    store.measure(device, space, archs[:1], "fp32", repeat=2)
    assert store.passes_stored(device, space, archs[:1], "fp32") == 3
    assert store.passes_stored(device, space, archs, "fp32") == 2  # the others lack pass 2
    assert store.passes_stored(device, space, archs, "int8") == 0


def test_a_store_written_before_min_ms_still_loads_and_grows(tmp_path: Path) -> None:
    space = get_space("tiny")
    arch = space.sample(0)
    device = lm.get_device("pixel3-emulated")
    new = ArchMeasurements(tmp_path / "new.csv")
    new.measure(device, space, [arch], "fp32")
    header, row = (tmp_path / "new.csv").read_text().splitlines()
    assert header.split(",") == list(COLUMNS)
    # the same row as an old store wrote it: no min_ms column
    cells = dict(zip(COLUMNS, next(csv.reader([row])), strict=True))
    old_path = tmp_path / "old.csv"
    with old_path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(_COLUMNS_BEFORE_MIN)
        w.writerow([cells[c] for c in _COLUMNS_BEFORE_MIN])
    old = ArchMeasurements(old_path)
    assert old.get(device, space, arch, "fp32") == pytest.approx(float(cells["median_ms"]))
    old.measure(device, space, [space.sample(1)], "fp32")  # appended in the old shape
    lines = old_path.read_text().splitlines()
    assert len(lines) == 3 and all(len(ln.split(",")) >= len(_COLUMNS_BEFORE_MIN) for ln in lines)
    assert len(ArchMeasurements(old_path)) == 2


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("arch,latency\nx,1.0\n")
    with pytest.raises(ValueError, match="not an arch-measurement store"):
        ArchMeasurements(path)


def test_drop_forgets_one_case_and_keeps_the_rest(tmp_path: Path) -> None:
    tiny, nb201 = get_space("tiny"), get_space("nb201")
    device = lm.get_device("pixel3-emulated")
    store = ArchMeasurements(tmp_path / "m.csv")
    store.measure(device, tiny, [tiny.sample(0), tiny.sample(1)], "fp32")
    store.measure(device, nb201, [nb201.sample(0)], "fp32")
    assert store.drop(device, tiny, "fp32") == 2
    assert store.drop(device, tiny, "fp32") == 0
    again = ArchMeasurements(tmp_path / "m.csv")
    assert len(again) == 1 and again.get(device, nb201, nb201.sample(0), "fp32") is not None
    assert again.get(device, tiny, tiny.sample(0), "fp32") is None


def test_a_row_cut_by_a_crash_is_dropped_before_the_next_append(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    space = get_space("tiny")
    archs = [space.sample(i) for i in range(3)]
    device = lm.get_device("pixel3-emulated")
    path = tmp_path / "m.csv"
    store = ArchMeasurements(path)
    store.measure(device, space, archs[:1], "fp32")
    whole = path.read_bytes()
    # another process, sharing the file, is killed halfway through writing its row
    ArchMeasurements(path).measure(device, space, archs[1:2], "fp32")
    cut = path.read_bytes()[: len(whole) + 40]
    path.write_bytes(cut)
    with caplog.at_level("WARNING"):
        store.measure(device, space, archs[2:], "fp32")  # this store opened before the cut
    data = path.read_bytes()  # the new row on a line of its own, not glued to the cut one
    assert data.startswith(whole) and data.endswith(b"\n") and len(data.splitlines()) == 3
    again = ArchMeasurements(path)
    assert len(again) == 2 and again.get(device, space, archs[1], "fp32") is None
    assert "dropped a partial last line (40 bytes" in caplog.text
    assert again.measure(device, space, archs, "fp32") == pytest.approx(
        store.measure(device, space, archs, "fp32")
    )
    # opening a store reads only (another process may be writing that line right now): a
    # partial last line is skipped with a warning and the file left alone
    caplog.clear()
    data = path.read_bytes()
    path.write_bytes(data + b"pixel3-emulated,tflite")
    with caplog.at_level("WARNING"):
        reader = ArchMeasurements(path)
    assert len(reader) == 3 and "m.csv" in caplog.text and "partial last line" in caplog.text
    assert path.read_bytes() == data + b"pixel3-emulated,tflite"
