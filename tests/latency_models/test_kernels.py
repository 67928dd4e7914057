"""Kernel tables on ONNX Runtime: the kernels its optimiser makes of a network, rebuilt and
timed alone; tables resume after a crash, never mix with layer tables; `KernelSum` predicts
from them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import latency_models as lm
from latency_models import LUT, KernelSum, LUTMismatchError, LUTSum, MissingKeysError
from latency_models.kernels import (
    KERNEL_RECIPE,
    ArchKernelCache,
    arch_kernels,
    build_kernel_lut,
)
from latency_models.measure import Measurement
from latency_models.runtimes.cache import ArtifactCache
from latency_models.runtimes.ort_kernels import KernelSpec, kernel_model, per_copy
from nas.app.latency_commands import cli_build_lut
from search_spaces import TinySpace

from .conftest import FAST

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SPACE = TinySpace()
# two archs of different widths (so each has kernels the other lacks) and a third
ARCHS = [dict(SPACE.sample(np.random.default_rng(s))) for s in (0, 1, 2)]


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> lm.RealDevice:
    from latency_models.runtimes.onnxrt import OrtCPURuntime

    cache = ArtifactCache(tmp_path_factory.mktemp("edge-nas-cache"))
    return lm.RealDevice(OrtCPURuntime(cache=cache), protocol=FAST)


@pytest.fixture(scope="module")
def kernels(device: lm.RealDevice) -> dict[tuple[int, str], list[KernelSpec]]:
    return {
        (i, dtype): arch_kernels(device, SPACE, a, dtype)
        for i, a in enumerate(ARCHS)
        for dtype in ("fp32", "int8")
    }


def _keys(ks: Sequence[KernelSpec]) -> set[str]:
    return {k.key for k in ks}


def test_kernels_are_the_nodes_of_the_optimised_graph(
    device: lm.RealDevice, kernels: dict[tuple[int, str], list[KernelSpec]]
) -> None:
    prepared = device.prepare_arch(SPACE, ARCHS[0], "fp32")
    ops = device.engine.optimized_graph_ops(prepared)  # type: ignore[attr-defined]
    found = kernels[0, "fp32"]
    assert Counter(k.spec["op"] for k in found) == Counter(ops)
    for k in found:
        spec = k.spec
        assert spec["outputs"] and all(d > 0 for o in spec["outputs"] for d in o["shape"])
        for item in spec["inputs"]:
            if item is not None and "const" in item:
                # int64 constants (shapes, axes) by value, weights and scales by shape only
                assert (item["const"] is not None) == (item["t"] == "int64")
    assert any(k.spec["domain"] != "ai.onnx" for k in found), "no NCHWc kernel on this CPU?"
    int8 = {k.spec["op"] for k in kernels[0, "int8"]}
    assert "QuantizeLinear" in int8 and any(op.startswith("QLinear") for op in int8)
    # a different width brings kernels of its own; shared shapes share their keys
    assert _keys(kernels[1, "fp32"]) - _keys(found)


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_every_kernel_rebuilds_alone_with_its_recorded_outputs(
    dtype: str, kernels: dict[tuple[int, str], list[KernelSpec]]
) -> None:
    unique = {k.key: k for k in kernels[0, dtype]}.values()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for k in unique:
        model, feeds = kernel_model(k, copies=3)
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        outs = session.run(None, feeds)
        expected = [tuple(o["shape"]) for o in k.spec["outputs"]] * 3
        assert [tuple(np.shape(o)) for o in outs] == expected, k.op
        assert len(session.get_inputs()) == len(feeds)


def test_per_copy_divides_every_time() -> None:
    m = Measurement(8.0, 4.0, 16.0, 8.0, 2.0, 3.2, 50, 3, 4, True, "d", "r", "v", 1, "fp32")
    one = per_copy(m, 8)
    assert (one.median_ms, one.p10_ms, one.p90_ms, one.min_ms) == (1.0, 0.5, 2.0, 0.4)
    assert (one.count, one.std_ms, one.mean_ms) == (50, 0.25, 1.0)


def test_kernel_table_resumes_after_a_crash_and_tops_up_passes(
    device: lm.RealDevice,
    kernels: dict[tuple[int, str], list[KernelSpec]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime: Any = device.engine
    real = runtime.measure_kernels
    measured: list[list[str]] = []
    crash_after: list[int | None] = [1]

    def counting(ks: Sequence[KernelSpec], *args: Any, **kwargs: Any) -> list[Measurement]:
        if crash_after[0] is not None and len(measured) >= crash_after[0]:
            raise Crash("power cut")
        measured.append([k.key for k in ks])
        result: list[Measurement] = real(ks, *args, **kwargs)
        return result

    monkeypatch.setattr(runtime, "measure_kernels", counting)
    path = tmp_path / "kernels.csv"
    unique = _keys(kernels[0, "fp32"]) | _keys(kernels[1, "fp32"])
    assert len(unique) > 4
    with pytest.raises(Crash):
        build_kernel_lut(SPACE, device, path, archs=ARCHS[:2], batch_kernels=4)
    assert len(LUT.load(path)) == 4  # the chunk measured before the crash is on disk
    crash_after[0] = None
    table = build_kernel_lut(SPACE, device, path, archs=ARCHS[:2], batch_kernels=4)
    first_pass = [k for chunk in measured for k in chunk]
    assert set(table.entries) == unique and sorted(first_pass) == sorted(unique)
    assert table.metadata["layer_recipe"].endswith(KERNEL_RECIPE)
    measured.clear()
    table = build_kernel_lut(SPACE, device, path, archs=ARCHS[:2], batch_kernels=4, passes=2)
    assert sorted(k for chunk in measured for k in chunk) == sorted(unique)
    assert set(LUT.load(path).pass_counts().values()) == {2}


def test_the_kernels_of_each_arch_are_kept_beside_the_table(
    device: lm.RealDevice,
    kernels: dict[tuple[int, str], list[KernelSpec]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    table_path = tmp_path / "kernels.csv"
    table = build_kernel_lut(SPACE, device, table_path, archs=ARCHS[:2])
    cache_path = ArchKernelCache.path_for(table_path, ArchKernelCache.identity_for(device, "fp32"))
    assert cache_path.parent == tmp_path and cache_path.name.startswith("kernels.archs-")
    # another dtype (or runtime version, or CPU) is another file: never a stale answer
    assert (
        ArchKernelCache.path_for(table_path, ArchKernelCache.identity_for(device, "int8"))
        != cache_path
    )

    def no_optimising(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an arch held in the cache was optimised again")

    monkeypatch.setattr(device.engine, "network_kernels", no_optimising)
    # a fresh predictor (another process, say) reads both archs' kernels from the file
    predictor = KernelSum(LUT.load(table_path), device)
    for i in (0, 1):
        assert predictor.kernels(SPACE, ARCHS[i]) == kernels[i, "fp32"]
    assert predictor.predict_arch(SPACE, ARCHS[0]) == pytest.approx(
        sum(table[k.key].min_ms for k in kernels[0, "fp32"])
    )
    with pytest.raises(AssertionError, match="optimised again"):
        predictor.kernels(SPACE, ARCHS[2])
    monkeypatch.undo()
    # cache_archs=False keeps the kernels in memory only; by default a new arch is written
    in_memory = KernelSum(LUT.load(table_path), device, cache_archs=False)
    assert in_memory.kernels(SPACE, ARCHS[2]) == kernels[2, "fp32"]
    assert len(ArchKernelCache.beside(table_path, device, "fp32")) == 2
    KernelSum(LUT.load(table_path), device).kernels(SPACE, ARCHS[2])
    assert len(ArchKernelCache.beside(table_path, device, "fp32")) == 3

    # a crash halfway through writing a line loses that arch only: the next writer drops the
    # broken line (under the file's lock) before appending its own, so none is left unreadable
    good = cache_path.read_text()
    cache_path.write_text(good + '{"space": "tiny", "arch": "s0.dep')
    cut = ArchKernelCache.beside(table_path, device, "fp32")
    assert len(cut) == 3 and cut.get(SPACE, ARCHS[1]) == kernels[1, "fp32"]
    other = [dict(SPACE.sample(np.random.default_rng(s))) for s in range(3, 20)]
    new = next(a for a in other if SPACE.key(a) not in {SPACE.key(b) for b in ARCHS})
    caplog.clear()
    with caplog.at_level("WARNING"):
        found = arch_kernels(device, SPACE, new, "fp32", cut)
        again = ArchKernelCache.beside(table_path, device, "fp32")
    assert len(again) == 4 and again.get(SPACE, new) == found
    assert "dropped a partial last line (33 bytes" in caplog.text
    assert "unreadable" not in caplog.text
    assert cache_path.read_text().startswith(good) and cache_path.read_text().endswith("}\n")
    # an unreadable line anywhere is skipped (it is a cache), and said
    caplog.clear()
    lines = good.splitlines()
    cache_path.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    with caplog.at_level("WARNING", logger="latency_models.kernels"):
        assert len(ArchKernelCache.beside(table_path, device, "fp32")) == 3
    assert "skipped 1 unreadable line(s)" in caplog.text
    # a file that is not a cache at all is refused, with what to do; a predictor goes on
    # without it (a cache must never stop a prediction)
    cache_path.write_text("a,b,c\n")
    with pytest.raises(ValueError, match=r"not an arch-kernel cache.*delete it"):
        ArchKernelCache.beside(table_path, device, "fp32")
    fallback = KernelSum(LUT.load(table_path), device)
    assert fallback.kernels(SPACE, ARCHS[0]) == kernels[0, "fp32"]
    assert cache_path.read_text() == "a,b,c\n"


def test_two_writers_of_one_arch_cache_keep_each_others_archs(
    device: lm.RealDevice, kernels: dict[tuple[int, str], list[KernelSpec]], tmp_path: Path
) -> None:
    # two predictors (or processes) open the file before either writes: both append
    first = ArchKernelCache.beside(tmp_path / "k.csv", device, "fp32")
    second = ArchKernelCache.beside(tmp_path / "k.csv", device, "fp32")
    first.put(SPACE, ARCHS[0], kernels[0, "fp32"])
    second.put(SPACE, ARCHS[1], kernels[1, "fp32"])  # shares kernels with arch 0, writes them too
    first.put(SPACE, ARCHS[2], kernels[2, "fp32"])
    # each sees what the other appended before finding an arch again
    assert first.get(SPACE, ARCHS[1]) == kernels[1, "fp32"]
    assert second.get(SPACE, ARCHS[2]) == kernels[2, "fp32"]
    both = ArchKernelCache.beside(tmp_path / "k.csv", device, "fp32")
    assert len(both) == 3
    for i in range(3):
        assert both.get(SPACE, ARCHS[i]) == kernels[i, "fp32"]
    # the file deleted under a writer (as the error messages advise): its next arch starts a
    # whole new file, header and every kernel it names included
    both.path.unlink()
    first.put(SPACE, ARCHS[1], kernels[1, "fp32"])
    fresh = ArchKernelCache.beside(tmp_path / "k.csv", device, "fp32")
    assert len(fresh) == 1 and fresh.get(SPACE, ARCHS[1]) == kernels[1, "fp32"]


def test_the_arch_cache_is_named_by_the_cpu_and_how_networks_are_made(
    device: lm.RealDevice,
) -> None:
    identity = ArchKernelCache.identity_for(device, "int8")
    assert identity["cpu"] and identity["arch"]
    network = identity["network"]
    assert {"onnx", "torch", "recipe", "reduce_range", "seed"} <= set(network)
    # an upgrade of the exporter is another file, never a stale kernel list
    upgraded = {**identity, "network": {**network, "torch": "99.0"}}
    assert ArchKernelCache.path_for("k.csv", upgraded) != ArchKernelCache.path_for(
        "k.csv", identity
    )


def test_kernel_and_layer_tables_never_mix(
    device: lm.RealDevice, kernels: dict[tuple[int, str], list[KernelSpec]], tmp_path: Path
) -> None:
    path = tmp_path / "kernels.csv"
    table = build_kernel_lut(SPACE, device, path, archs=ARCHS[:1])
    with pytest.raises(LUTMismatchError, match="layer_recipe"):
        LUTSum(table, device)
    with pytest.raises(LUTMismatchError, match="layer_recipe"):
        KernelSum(LUT.for_device(device, "fp32"), device)
    with pytest.raises(LUTMismatchError):
        lm.build_lut(SPACE, device, path, archs=ARCHS[:1])
    with pytest.raises(LUTMismatchError, match="dtype"):
        build_kernel_lut(SPACE, device, path, dtype="int8", archs=ARCHS[:1])


def test_kernel_sum_sums_measures_missing_kernels_and_fits_a_line(
    device: lm.RealDevice, kernels: dict[tuple[int, str], list[KernelSpec]], tmp_path: Path
) -> None:
    path = tmp_path / "kernels.csv"
    table = build_kernel_lut(SPACE, device, path, archs=ARCHS[:1])
    strict = KernelSum(table, device)
    new = _keys(kernels[1, "fp32"]) - set(table.entries)
    with pytest.raises(MissingKeysError) as err:
        strict.predict_arch(SPACE, ARCHS[1])
    assert set(err.value.missing) == new
    eager = KernelSum(table, device, on_missing="measure")
    total = eager.predict_arch(SPACE, ARCHS[1])  # unfitted: the plain sum
    assert set(LUT.load(path).entries) >= new  # measured on the spot, appended to the file
    assert total == pytest.approx(sum(table[k.key].min_ms for k in kernels[1, "fp32"]))
    sums = np.array([eager.kernel_sum(SPACE, a) for a in ARCHS])
    fitted = KernelSum(LUT.load(path), device, on_missing="measure").fit(
        SPACE, ARCHS, 2.0 * sums + 0.5
    )
    assert fitted.coef_ == pytest.approx((2.0, 0.5), rel=1e-6)
    assert fitted.predict_many(SPACE, ARCHS) == pytest.approx(2.0 * sums + 0.5)


def test_devices_that_cannot_name_their_kernels_say_so(tmp_path: Path) -> None:
    emulated = lm.get_device("pixel3-emulated")
    assert not lm.supports_kernels(emulated)
    with pytest.raises(ValueError, match="cannot name the kernels"):
        build_kernel_lut(SPACE, emulated, tmp_path / "k.csv", archs=ARCHS[:1])
    with pytest.raises(ValueError, match="--compile-only applies to layer LUTs"):
        cli_build_lut(SPACE, emulated, tmp_path, kernels=True, compile_only=True)


def test_cli_build_writes_the_kernel_table_beside_layer_tables(
    device: lm.RealDevice, tmp_path: Path
) -> None:
    path = cli_build_lut(SPACE, device, tmp_path, n_archs=1, kernels=True, progress=False)
    assert path == tmp_path / "kernels_ort-cpu-1t_fp32.csv"
    table = LUT.load(path)
    assert len(table) > 0 and table.metadata["layer_recipe"].endswith(KERNEL_RECIPE)
    assert table.metadata["spaces"] == ["tiny"]
