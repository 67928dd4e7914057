"""The chain takes device objects: models are timed on each, artifacts on those of their runtime."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nas.backends import ARTIFACT_SUFFIXES
from nas.compress import RUNTIMES, ChainConfig, ExportConfig, run_chain
from nas.compress import export as export_step
from nas.compress.latency import _check_devices
from nas.data import ImageDataset
from search_spaces.tiny import TinySpace


def _device(name: str, runtime: str, threads: int = 1) -> SimpleNamespace:
    return SimpleNamespace(
        name=name, runtime=runtime, threads=threads, dtypes=("fp32",), measure_module=None
    )


def test_the_registered_real_devices_fit_the_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import latency_models as lm
    from latency_models.runtimes.cache import ENV_VAR

    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    devices = [lm.get_device(n) for n in ("ort-cpu-1t", "xnnpack-2t", "torch-cpu")]
    assert _check_devices(devices) == devices
    assert [d.runtime for d in devices] == ["onnxruntime", "executorch-xnnpack", "torch"]
    assert set(ARTIFACT_SUFFIXES.values()) | {"torch"} == set(RUNTIMES)


def test_a_device_lacking_the_protocol_is_refused() -> None:
    named_only = SimpleNamespace(name="old-style", measure_module=lambda *a: 1.0)
    with pytest.raises(TypeError, match="lacks runtime, threads, dtypes"):
        _check_devices([named_only])
    with pytest.raises(ValueError, match="runs 'ort'; a device's runtime is one of"):
        _check_devices([_device("typo", "ort")])
    with pytest.raises(ValueError, match="has 0 threads"):
        _check_devices([_device("none", "onnxruntime", threads=0)])


def test_an_artifact_is_timed_on_the_devices_of_its_runtime_with_their_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[int] = []

    def open_runner(path: Path, input_shape: tuple[int, ...], threads: int) -> Any:
        opened.append(threads)
        return SimpleNamespace(path=path, runtime="onnxruntime", input_shape=input_shape, n=threads)

    monkeypatch.setattr(export_step, "open_runner", open_runner)
    parity = SimpleNamespace(
        path=Path("m.onnx"), runtime="onnxruntime", input_shape=(1, 3, 8, 8), n=1
    )
    timed_with: list[tuple[int, int]] = []

    def timer(runner: Any) -> float:
        timed_with.append((runner.n, id(runner)))
        return 0.25 * runner.n

    devices = [
        _device("ort-a", "onnxruntime"),
        _device("xnnpack-1t", "executorch-xnnpack"),
        _device("ort-2t", "onnxruntime", threads=2),
        _device("ort-b", "onnxruntime"),
    ]
    chain: Any = SimpleNamespace(devices=devices, timer=timer)
    latency = export_step._time_artifact(chain, parity, 1)
    # Columns by device name, in the devices' order; the XNNPACK device does not run ONNX.
    assert list(latency.items()) == [("ort-a", 0.25), ("ort-2t", 0.5), ("ort-b", 0.25)]
    # The parity runner (1 thread) serves both 1-thread devices; 2 threads get their own runner.
    assert opened == [2]
    assert [n for n, _ in timed_with] == [1, 1, 2] and timed_with[0][1] == id(parity)
    # Opened with other threads than a device's, the parity runner serves no device.
    opened.clear()
    assert export_step._time_artifact(chain, parity, 4) == latency
    assert opened == [1, 2]


@pytest.mark.slow
def test_the_chain_times_models_and_artifacts_on_a_real_device(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    space: TinySpace,
    arch: dict[str, Any],
    data: ImageDataset,
) -> None:
    pytest.importorskip("onnxruntime")
    import latency_models as lm
    from latency_models.runtimes.cache import ENV_VAR

    monkeypatch.setenv(ENV_VAR, str(tmp_path / "cache"))
    device = lm.get_device("ort-cpu-1t")
    export = ExportConfig(formats=("onnx",), ort_int8=False, parity_images=16, calibration_images=8)
    result = run_chain(
        tmp_path, arch, space=space, data=data, steps=("export",),
        config=ChainConfig(export=export), devices=[device], timer=lambda fn: (fn(), 0.5)[1],
    )  # fmt: skip
    start, artifact = result.rows
    # One column, named by the device, for the model (measure_module) and its ONNX file.
    assert list(start.latency_ms) == ["ort-cpu-1t"] and (start.latency_ms["ort-cpu-1t"] or 0) > 0
    assert artifact.file == "input-fp32.onnx" and artifact.latency_ms == {"ort-cpu-1t": 0.5}
    assert "| ort-cpu-1t ms |" in (result.directory / "report.md").read_text()
