"""LUTs: build, resume after a crash without losing a measurement, refuse to mix devices,
report corrupt files and missing keys clearly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

import latency_models as lm
from latency_models import (
    LUT,
    CorruptLUTError,
    CostParams,
    EmulatedDevice,
    LUTMismatchError,
    LUTSum,
    MissingKeysError,
    build_lut,
)
from latency_models.measure import Measurement, Protocol
from latency_models.spec_modules import is_free
from nas.app import latency_commands
from nas.app.latency_commands import cli_build_lut
from nas.core.layers import LayerSpec
from search_spaces import NB201Space, TinySpace

SPACE = TinySpace()


class Crash(RuntimeError):
    pass


class CountingDevice(EmulatedDevice):
    """An emulated phone that counts what it measures and can crash after some batches."""

    def __init__(self, crash_after: int | None = None) -> None:
        super().__init__(lm.PROFILES["pixel3"])
        self.crash_after = crash_after
        self.batches = 0
        self.measured: list[str] = []

    def measure_layers(
        self,
        specs: Sequence[LayerSpec],
        dtype: str = "fp32",
        progress=None,  # type: ignore[no-untyped-def]
    ) -> list[Measurement]:
        if self.crash_after is not None and self.batches >= self.crash_after:
            raise Crash("power cut")
        self.batches += 1
        self.measured += [s.key for s in specs]
        return super().measure_layers(specs, dtype, progress)


def test_build_covers_every_layer_and_sums_like_the_device(tmp_path: Path) -> None:
    device = lm.get_device("pixel3-emulated")
    path = tmp_path / "lut.csv"
    lut = build_lut(SPACE, device, path, n_archs=50, seed=0)
    assert path.exists() and len(lut) > 20
    again = LUT.load(path)
    assert again.entries == lut.entries
    assert again.metadata["device"] == "pixel3-emulated" and again.metadata["spaces"] == ["tiny"]
    for key in ("runtime", "runtime_version", "threads", "dtype", "created", "host"):
        assert key in again.metadata
    arch = SPACE.sample(3)
    model = LUTSum(again, device, on_missing="measure")
    assert isinstance(model, lm.LatencyModel)
    # the emulated device's per-network cost is part of the sum: the LUT prices the whole network
    assert device.network_overhead_ms() == pytest.approx(0.04)
    assert model.network_overhead_ms == device.network_overhead_ms()
    assert model.predict_arch(SPACE, arch) == pytest.approx(device.arch_ms(SPACE, arch))
    assert LUTSum(again).predict_arch(SPACE, arch) == pytest.approx(
        device.arch_ms(SPACE, arch) - device.network_overhead_ms()
    )  # without its device a LUT knows no per-network cost


def test_resume_after_a_crash_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "lut.csv"
    crashing = CountingDevice(crash_after=2)
    with pytest.raises(Crash):
        build_lut(SPACE, crashing, path, n_archs=60, batch_layers=8)
    saved = LUT.load(path)
    assert len(saved) == 16 == len(crashing.measured)  # both finished batches are on disk
    # the crash also cut a row in half while it was being written
    with path.open("a") as f:
        f.write("conv-input:32x32x3-output:16x16x16-kernel:3-str")
    resumed_device = CountingDevice()
    lut = build_lut(SPACE, resumed_device, path, n_archs=60, batch_layers=8)
    assert not set(resumed_device.measured) & set(crashing.measured)  # nothing measured twice
    full = build_lut(SPACE, CountingDevice(), None, n_archs=60)
    assert set(lut.entries) == set(full.entries)
    assert LUT.load(path).entries == lut.entries  # the cut row was repaired away


def test_appending_after_a_cut_last_row_drops_it_instead_of_gluing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "lut.csv"
    device = CountingDevice()
    build_lut(SPACE, device, path, n_archs=5)
    whole = path.read_bytes()
    last = whole[whole.rstrip(b"\n").rfind(b"\n") + 1 :]
    cut_key = last.split(b",")[0].decode()
    cut = whole[: len(whole) - len(last) // 2]  # killed while writing the last row
    path.write_bytes(cut)
    with caplog.at_level("WARNING"):
        lut = LUT.load(path)  # reading leaves the file alone: the cut row is skipped, and said
    assert path.read_bytes() == cut and cut_key not in lut and "lut.csv" in caplog.text
    caplog.clear()
    # what the table lacks is measured and appended to the same file (a prediction with
    # on_missing="measure" does this): the cut row goes first, under the file's lock
    with caplog.at_level("WARNING"):
        measured = lm.fill_missing(
            lut, device, lm.reachable_specs(SPACE, device, "fp32", n_archs=5)
        )
    assert measured == [cut_key]
    data = path.read_bytes()
    assert data.endswith(b"\n") and data.startswith(whole[: len(whole) - len(last)])
    again = LUT.load(path)  # every row whole: the measured one not glued to the cut one
    assert again.entries == lut.entries and len(data.splitlines()) == 2 + len(again)
    assert f"dropped a partial last line ({len(cut) - len(whole) + len(last)} bytes" in caplog.text


def test_refuses_to_mix_devices(tmp_path: Path) -> None:
    path = tmp_path / "lut.csv"
    build_lut(SPACE, lm.get_device("pixel3-emulated"), path, n_archs=5)
    with pytest.raises(LUTMismatchError, match="device: table 'pixel3-emulated'"):
        build_lut(SPACE, lm.get_device("raspi4-emulated"), path, n_archs=5)
    recalibrated = EmulatedDevice(lm.PROFILES["pixel3"], CostParams(network_overhead_ms=1.0))
    with pytest.raises(LUTMismatchError, match="runtime_version"):
        build_lut(SPACE, recalibrated, path, n_archs=5)
    with pytest.raises(LUTMismatchError, match="dtype"):
        build_lut(SPACE, lm.get_device("pixel3-emulated"), path, dtype="int8", n_archs=5)
    other = build_lut(SPACE, lm.get_device("raspi4-emulated"), None, n_archs=5)
    with pytest.raises(LUTMismatchError):
        LUT.load(path).merge(other)
    with pytest.raises(LUTMismatchError):
        LUTSum(LUT.load(path), lm.get_device("raspi4-emulated"))
    with pytest.raises(LUTMismatchError):  # compiling ahead for a table the build would refuse
        lm.compile_lut(SPACE, lm.get_device("raspi4-emulated"), path, n_archs=5)


class RecipeDevice(CountingDevice):
    def layer_recipe(self, dtype: str) -> str:
        return "int8-inputs-quantized"


def test_tables_of_another_layer_recipe_refuse_to_mix(tmp_path: Path) -> None:
    """A change in how lone layers are built changes their times: a table timed the old way
    (no recipe in its header) is not topped up with rows timed the new way."""
    path = tmp_path / "lut.csv"
    build_lut(SPACE, CountingDevice(), path, n_archs=3)
    assert "layer_recipe" not in LUT.load(path).metadata  # tables before the field match ""
    build_lut(SPACE, CountingDevice(), path, n_archs=5)
    with pytest.raises(LUTMismatchError, match="layer_recipe: table '' vs device"):
        build_lut(SPACE, RecipeDevice(), path, n_archs=5)
    pytest.importorskip("onnxruntime")
    ort = lm.get_device("ort-cpu-1t")
    assert ort.metadata("int8")["layer_recipe"] == "int8-inputs-quantized"
    assert "layer_recipe" not in ort.metadata("fp32")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("key,op\n", "not an edge-nas LUT"),
        ('# edge-nas-lut/1 {"device": \n', "not valid JSON"),
        ('# edge-nas-lut/1 {"device": "x"}\nkey,op\n', "CSV header"),
        ("", "not an edge-nas LUT"),
    ],
)
def test_corrupt_files_say_what_is_wrong(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(CorruptLUTError, match=match):
        LUT.load(path)


def test_corrupt_row_gives_its_line(tmp_path: Path) -> None:
    path = tmp_path / "lut.csv"
    build_lut(SPACE, lm.get_device("pixel3-emulated"), path, n_archs=3)
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(3, "garbage,row\n")
    path.write_text("".join(lines))
    with pytest.raises(CorruptLUTError, match="line 4"):
        LUT.load(path)
    path.write_text(lines[0].replace('"device"', '"devise"') + "".join(lines[1:3]))
    with pytest.raises(CorruptLUTError, match="missing"):
        LUT.load(path)


def test_missing_keys_are_reported_together_or_measured(tmp_path: Path) -> None:
    device = lm.get_device("pixel3-emulated")
    lut = build_lut(SPACE, device, tmp_path / "lut.csv", archs=[SPACE.sample(0)])
    others = [SPACE.sample(i) for i in range(1, 30)]
    strict = LUTSum(lut, device)
    missing = {k for a in others for k in lut.missing(SPACE.layer_specs(a))}
    assert missing
    with pytest.raises(MissingKeysError) as err:
        strict.predict_many(SPACE, others)
    first_bad = next(a for a in others if lut.missing(SPACE.layer_specs(a)))
    assert set(err.value.missing) == missing and "on_missing='measure'" in str(err.value)
    with pytest.raises(MissingKeysError) as err:
        lut.latency_ms(SPACE.layer_specs(first_bad))
    assert set(err.value.missing) == set(lut.missing(SPACE.layer_specs(first_bad)))
    filling = LUTSum(lut, device, on_missing="measure")
    predicted = filling.predict_many(SPACE, others)
    assert len(predicted) == len(others) and not lut.missing(
        [s for a in others for s in SPACE.layer_specs(a)]
    )
    assert len(LUT.load(tmp_path / "lut.csv")) == len(lut)  # measured keys were appended


def test_dead_branch_device_prices_runtime_specs() -> None:
    nb = NB201Space()
    device = lm.get_device("pixel3-emulated")
    archs = [nb.from_index(i) for i in (21, 1852)]
    lut = build_lut(nb, device, None, archs=archs)
    assert not any(k.startswith("mul") for k in lut.entries)
    overhead = device.network_overhead_ms()
    # index 1852 is degenerate: no layer runs, the call still costs its per-network overhead
    assert LUTSum(lut, device).predict_many(nb, archs)[1] == pytest.approx(overhead)


def test_real_lut_path_naming(tmp_path: Path) -> None:
    assert lm.lut_path(tmp_path, "xnnpack-1t", "int8").name == "lut_xnnpack-1t_int8.csv"


def test_cli_build_lut_writes_and_resumes(tmp_path: Path) -> None:
    path = cli_build_lut(SPACE, "raspi4-emulated", tmp_path, n_archs=10, progress=False)
    assert path == tmp_path / "lut_raspi4-emulated_fp32.csv"
    first = LUT.load(path)
    again = cli_build_lut(SPACE, "raspi4-emulated", path, n_archs=20, progress=False)
    assert again == path and len(LUT.load(path)) >= len(first)
    with pytest.raises(lm.DeviceError, match="valid dtypes"):
        cli_build_lut(SPACE, "raspi4-emulated", tmp_path, dtype="fp16")


def test_compile_lut_builds_ahead_what_build_lut_then_measures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_protocol: Protocol
) -> None:
    """Only the layers a partial table lacks are compiled; the measuring build exports nothing."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("EDGE_NAS_CACHE", str(tmp_path / "cache"))
    device = lm.get_device("ort-cpu-1t", protocol=fast_protocol)
    archs = [SPACE.sample(3), SPACE.sample(4)]
    path = tmp_path / "lut.csv"
    build_lut(SPACE, device, path, archs=archs[:1])  # a table that holds the first arch
    n_first = len(LUT.load(path))
    have = set(LUT.load(path).entries)
    todo = [s for s in lm.reachable_specs(SPACE, device, "fp32", archs) if s.key not in have]
    built = [s for s in todo if not is_free(s)]
    assert built, "the second arch should need layers the first did not"
    assert lm.compile_lut(SPACE, device, path, archs=archs) == len(built)
    assert lm.compile_lut(SPACE, device, path, archs=archs) == 0
    import latency_models.runtimes.onnxrt as onnxrt

    monkeypatch.setattr(onnxrt, "onnx_model", lambda *a, **k: pytest.fail("exported again"))
    lut = build_lut(SPACE, device, path, archs=archs)
    assert len(lut) == n_first + len(todo)


class WindowedDevice(CountingDevice):
    """An emulated phone whose host slows some batches 1.5x (a noisy neighbour's window), and
    which records the chunks it would compile (`compile_layers`) beside those it measures."""

    def __init__(self, slow_batches: set[int], crash_after: int | None = None) -> None:
        super().__init__(crash_after)
        self.slow_batches = slow_batches
        self.measured_chunks: list[list[str]] = []
        self.compiled_chunks: list[list[str]] = []

    def compile_layers(self, specs: Sequence[LayerSpec], dtype: str = "fp32") -> int:
        self.compiled_chunks.append([s.key for s in specs])
        return 1

    def measure_layers(
        self,
        specs: Sequence[LayerSpec],
        dtype: str = "fp32",
        progress=None,  # type: ignore[no-untyped-def]
    ) -> list[Measurement]:
        slow = self.batches in self.slow_batches
        out = super().measure_layers(specs, dtype, progress)
        self.measured_chunks.append([s.key for s in specs])
        if not slow:
            return out
        return [replace(m, median_ms=m.median_ms * 1.5, min_ms=m.min_ms * 1.5) for m in out]


def test_passes_keep_each_layers_fastest_window_and_resume(tmp_path: Path) -> None:
    """A layer measured only inside a slow window keeps it; a second pass takes it back out.
    Every pass is a row on disk, a crash in pass 2 loses nothing, and the table tops up."""
    path = tmp_path / "lut.csv"
    truth = build_lut(SPACE, CountingDevice(), None, n_archs=30)
    one = build_lut(SPACE, WindowedDevice(slow_batches={0}), None, n_archs=30, batch_layers=8)
    inflated = [k for k in one.entries if one[k].min_ms > truth[k].min_ms * 1.4]
    assert len(inflated) == 8  # the first batch, measured in the slow window
    crashing = WindowedDevice(slow_batches={0}, crash_after=-(-len(truth) // 8) + 2)
    with pytest.raises(Crash):
        build_lut(SPACE, crashing, path, n_archs=30, batch_layers=8, passes=3)
    partial = LUT.load(path)
    rows = path.read_text().splitlines()[2:]
    assert len(rows) == len(crashing.measured)  # a row per pass and layer, combined on load
    assert all(partial.passes_of(k) in (1, 2) for k in truth.entries)
    assert sum(partial.passes_of(k) == 2 for k in truth.entries) == 16  # two pass-2 batches
    resumed = WindowedDevice(slow_batches=set())
    lut = build_lut(SPACE, resumed, path, n_archs=30, batch_layers=8, passes=3)
    assert len(resumed.measured) == 3 * len(truth) - len(crashing.measured)  # nothing twice
    assert all(lut.passes_of(k) == 3 for k in truth.entries)
    for k, e in truth.entries.items():
        assert lut[k].min_ms == pytest.approx(e.min_ms)  # the slow window is gone
    assert LUT.load(path).entries == lut.entries
    # asking for fewer passes than held measures nothing
    idle = CountingDevice()
    build_lut(SPACE, idle, path, n_archs=30, passes=2)
    assert idle.measured == []
    with pytest.raises(ValueError, match="passes must be >= 1"):
        build_lut(SPACE, idle, path, n_archs=30, passes=0)


def test_compile_lut_compiles_the_chunks_every_pass_will_measure(tmp_path: Path) -> None:
    path = tmp_path / "lut.csv"
    build_lut(SPACE, CountingDevice(), path, n_archs=3, batch_layers=8)  # a partial table
    device = WindowedDevice(slow_batches=set())
    n = lm.compile_lut(SPACE, device, path, n_archs=30, batch_layers=8, passes=2)
    assert n == len(device.compiled_chunks) and device.measured_chunks == []
    compiled = [tuple(c) for c in device.compiled_chunks]
    assert len(set(compiled)) == len(compiled)  # each program once, though two passes use it
    build_lut(SPACE, device, path, n_archs=30, batch_layers=8, passes=2)
    measured = [tuple(c) for c in device.measured_chunks]
    assert set(measured) == set(compiled) and len(measured) > len(compiled)
    # the chunks are fixed slices of the space's layers: the partial table only let the build
    # skip (in pass 1) the chunks it already held whole, it did not reshape them
    specs = lm.reachable_specs(SPACE, device, "fp32", n_archs=30)
    slices = {tuple(s.key for s in specs[i : i + 8]) for i in range(0, len(specs), 8)}
    assert set(compiled) <= slices


def test_version_1_tables_are_read_and_upgraded_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "lut.csv"
    lut = build_lut(SPACE, CountingDevice(), path, archs=[SPACE.sample(0)])
    lines = path.read_text().splitlines()
    v1 = [lines[0].replace("edge-nas-lut/2", "edge-nas-lut/1"), lines[1].rsplit(",", 1)[0]]
    v1 += [row.rsplit(",", 1)[0] for row in lines[2:]]
    path.write_text("\n".join(v1) + "\n")
    old = LUT.load(path)
    assert old.entries == lut.entries and old.file_format == "edge-nas-lut/1"
    build_lut(SPACE, CountingDevice(), path, archs=[SPACE.sample(0), SPACE.sample(1)])
    assert path.read_text().startswith("# edge-nas-lut/2 ")
    upgraded = LUT.load(path)
    assert all(upgraded[k].min_ms == e.min_ms for k, e in lut.entries.items())
    assert len(upgraded) > len(lut)


def test_cli_compile_only_measures_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    device = WindowedDevice(slow_batches=set())
    monkeypatch.setattr(latency_commands, "_device", lambda *a, **k: device)
    path = cli_build_lut(
        SPACE, "pixel3-emulated", tmp_path, n_archs=10, progress=False, compile_only=True, passes=2
    )
    assert device.compiled_chunks and device.measured_chunks == [] and not path.exists()
    cli_build_lut(SPACE, "pixel3-emulated", tmp_path, n_archs=10, progress=False, passes=2)
    assert device.measured_chunks == 2 * device.compiled_chunks
    assert all(e.passes == 2 for e in LUT.load(path).entries.values())


def test_pass_plan_is_fixed_slices_measured_until_every_key_has_its_passes() -> None:
    specs = [LayerSpec("relu", (1, i + 1, 1), (1, i + 1, 1)) for i in range(5)]
    keys = [s.key for s in specs]
    plan = lm.pass_plan(specs, {}, passes=2, batch_layers=2)
    assert [[s.key for s in c] for c in plan] == [keys[0:2], keys[2:4], keys[4:5]] * 2
    held = {keys[0]: 2, keys[1]: 1, keys[2]: 2, keys[3]: 2}
    plan = lm.pass_plan(specs, held, passes=2, batch_layers=2)
    # pass 1: only the last slice lacks a pass; pass 2: the first slice, measured whole for
    # the one key with a single pass, and the last again; the complete middle slice never
    assert [[s.key for s in c] for c in plan] == [keys[4:5], keys[0:2], keys[4:5]]
    assert lm.pass_plan(specs, dict.fromkeys(keys, 3), passes=2) == []
    assert lm.pass_plan([], {}, passes=3) == []
