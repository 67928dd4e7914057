"""Contract tests over every registered device: a new device is tested by being registered.

Emulated devices run on several spaces; real runtimes on `tiny` only (two lowered XNNPACK
programs in this file: one batched layer program, one network; `-2t` devices reuse them from
the session's artifact cache); table devices on the shared NB201 table (skipped if missing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import latency_models as lm
from latency_models import DEVICES, Device, DeviceError, EmulatedDevice, TabularDevice
from latency_models.measure import Measurement, Protocol
from search_spaces import NB201Space, TinySpace

SPACE = TinySpace()
# the smallest tiny network: every stage one block, narrow (a real runtime lowers it fastest)
ARCH = SPACE.validate({k: c.values[0] for k, c in SPACE.dimensions().items()})
# two small layers of tiny: a stem conv and a depthwise conv
LAYERS = [s for s in SPACE.layer_specs(ARCH) if s.op == "conv"][:2]


def _make(name: str, nb201_csv: Path | None, protocol: Protocol) -> Device:
    if name.startswith("nb201-"):
        assert nb201_csv is not None
        return lm.get_device(name, table=nb201_csv, space=NB201Space())
    if DEVICES.factory(name).kind == "real":  # type: ignore[attr-defined]
        return lm.get_device(name, protocol=protocol)
    return lm.get_device(name)


@pytest.fixture(params=DEVICES.list())
def device(request, fast_protocol, artifact_cache) -> Device:  # type: ignore[no-untyped-def]
    name = request.param
    csv = None
    if name.startswith("nb201-"):
        csv = request.getfixturevalue("nb201_csv")
    dev = _make(name, csv, fast_protocol)
    if dev.kind == "real" and not dev.engine.available():  # type: ignore[attr-defined]
        pytest.skip(f"{name}: runtime not installed")
    return dev


def _check_measurement(m: Measurement, device: Device, dtype: str) -> None:
    assert isinstance(m, Measurement)
    assert m.device == device.name and m.dtype == dtype
    assert m.median_ms >= 0 and m.p10_ms <= m.median_ms <= m.p90_ms
    assert m.runtime == device.runtime


def test_identity_and_dtypes(device: Device) -> None:
    meta = device.metadata(device.dtypes[0])
    for key in lm.lut.IDENTITY:
        assert key in meta or key in lm.lut.IDENTITY_DEFAULTS
    assert meta["device"] == device.name
    assert device.kind in ("real", "emulated", "tabular")
    assert device.dtypes and isinstance(device.runtime_version, str) and device.runtime_version
    with pytest.raises(DeviceError, match="valid dtypes"):
        device.check_dtype("int4")


def test_measures_layers_and_networks(device: Device) -> None:
    dtype = device.dtypes[0]
    if isinstance(device, TabularDevice):
        with pytest.raises(DeviceError, match="cannot time layers"):
            device.measure_layers(LAYERS, dtype)
        space = device.space
        arch = device.archs()[0]
        m = device.measure_arch(space, arch, dtype)
        _check_measurement(m, device, dtype)
        assert m.median_ms == device.latencies_ms([arch])[0]
        return
    layers = [s.with_dtype(dtype) for s in LAYERS]
    ms = device.measure_layers(layers, dtype)
    assert len(ms) == len(layers)
    for m in ms:
        _check_measurement(m, device, dtype)
        assert m.median_ms > 0
    whole = device.measure_arch(SPACE, ARCH, dtype)
    _check_measurement(whole, device, dtype)
    assert whole.median_ms > 0
    if device.deterministic:
        assert whole.std_ms == 0 and whole == device.measure_arch(SPACE, ARCH, dtype)


def test_compiled_ahead_then_measured_without_building(
    device: Device, fast_protocol: Protocol, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `compile_layers` and `prepare_arch` build is what measuring times: a fresh
    instance measures with every export and lowering forbidden (no new XNNPACK lowering:
    the same two programs as above)."""
    dtype = device.dtypes[0]
    if not isinstance(device, lm.RealDevice):
        assert lm.compile_lut(SPACE, device, dtype=dtype, archs=[ARCH]) == 0  # nothing to build
        return
    layers = [s.with_dtype(dtype) for s in LAYERS]
    device.compile_layers(layers, dtype)
    prepared = device.prepare_arch(SPACE, ARCH, dtype)
    assert device.prepare_arch(SPACE, ARCH, dtype) is prepared  # the next pass reuses it
    import latency_models.runtimes.onnxrt as onnxrt
    import latency_models.runtimes.xnnpack as xnnpack

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("measuring built an artifact that was compiled ahead")

    monkeypatch.setattr(xnnpack, "lower_program", no_build)
    monkeypatch.setattr(onnxrt, "onnx_model", no_build)
    fresh = _make(device.name, None, fast_protocol)
    assert isinstance(fresh, lm.RealDevice)
    assert fresh.compile_layers(layers, dtype) == 0
    assert len(fresh.measure_layers(layers, dtype)) == len(layers)
    assert fresh.measure_arch(SPACE, ARCH, dtype).min_ms > 0


def test_emulated_devices_price_every_space() -> None:
    import search_spaces

    for name in DEVICES.list():
        if not name.endswith("-emulated"):
            continue
        device = lm.get_device(name)
        assert isinstance(device, EmulatedDevice)
        for space_name in ("tiny", "fbnet", "mobilenetv3"):
            space = search_spaces.get_space(space_name)
            arch = space.sample(1)
            ms = device.arch_ms(space, arch, device.dtypes[0])
            assert np.isfinite(ms) and ms > 0, (name, space_name)


def test_emulated_dtypes_and_dead_branches() -> None:
    phone = lm.get_device("pixel3-emulated")
    assert isinstance(phone, EmulatedDevice)
    assert phone.arch_ms(SPACE, ARCH, "int8") < phone.arch_ms(SPACE, ARCH, "fp32")
    tpu = lm.get_device("edgetpu-emulated")
    assert tpu.dtypes == ("int8",)
    with pytest.raises(DeviceError, match="does not run dtype 'fp32'"):
        tpu.measure_arch(SPACE, ARCH, "fp32")
    nb = NB201Space()
    arch = nb.from_index(21)  # has `none` edges
    kept = phone.with_params(lm.CostParams(removes_dead_branches=False))
    assert phone.arch_ms(nb, arch) < kept.arch_ms(nb, arch)


def test_unknown_device_lists_close_matches() -> None:
    with pytest.raises(KeyError) as err:
        lm.get_device("pixle3-emulated")
    assert "pixel3-emulated" in str(err.value)


def test_table_device_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "arch_str,latency\n|skip_connect~0|+|none~0|none~1|+|none~0|none~1|none~2|,1.0\n"
    )
    with pytest.raises(DeviceError, match=r"no column\(s\) \['pixel3_ms'\]"):
        TabularDevice(bad, "pixel3_ms", NB201Space())
    with pytest.raises(FileNotFoundError):
        TabularDevice(tmp_path / "missing.csv", "pixel3_ms", NB201Space())
    neg = tmp_path / "neg.csv"
    neg.write_text("arch_str,ms\n|skip_connect~0|+|none~0|none~1|+|none~0|none~1|none~2|,-1\n")
    with pytest.raises(DeviceError, match="line 2"):
        TabularDevice(neg, "ms", NB201Space())
    ok = tmp_path / "ok.csv"
    ok.write_text("arch_str,ms\n|skip_connect~0|+|none~0|none~1|+|none~0|none~1|none~2|,2.5\n")
    table = TabularDevice(ok, "ms", NB201Space())
    with pytest.raises(DeviceError, match="not in"):
        table.latency_ms(NB201Space(), NB201Space().from_index(3))
    with pytest.raises(DeviceError, match="no device profile"):
        table.prior_profile()


def test_every_device_factory_takes_the_same_keywords() -> None:
    import inspect

    for name in DEVICES:
        params = inspect.signature(DEVICES.factory(name)).parameters
        for option in lm.DEVICE_OPTIONS:
            assert params[option].kind is inspect.Parameter.KEYWORD_ONLY, (name, option)
            assert params[option].default is None, (name, option)


def test_a_wrong_device_option_names_what_the_kind_takes() -> None:
    with pytest.raises(
        DeviceError, match=r"'nb201-pixel3' \(table\) does not take path=; it takes table="
    ):
        lm.get_device("nb201-pixel3", path="nb201.csv")
    with pytest.raises(DeviceError, match=r"'nb201-pixel3' \(table\) needs table=, space="):
        lm.get_device("nb201-pixel3")
    with pytest.raises(
        DeviceError, match=r"'xnnpack-1t' \(real\) does not take params=; it takes protocol="
    ):
        lm.get_device("xnnpack-1t", params=lm.CostParams())
    with pytest.raises(DeviceError, match=r"\(emulated\) does not take space=; it takes params="):
        lm.get_device("pixel3-emulated", space=SPACE)
    slow = lm.get_device("pixel3-emulated", params=lm.CostParams(network_overhead_ms=5.0))
    assert (
        slow.measure_arch(SPACE, ARCH).min_ms
        > lm.get_device("pixel3-emulated").measure_arch(SPACE, ARCH).min_ms
    )


def test_real_devices_are_registered_devices() -> None:
    """Successor of `runtimes.REAL_DEVICES` / `real_device()`: the real devices are entries of
    DEVICES, with what the compression chain needs of a device."""
    real = [n for n in DEVICES if DEVICES.describe(n).startswith("real:")]
    assert set(real) >= {"torch-cpu", "ort-cpu-1t", "xnnpack-1t"}
    xnn, ort, torch_cpu = (lm.get_device(n) for n in ("xnnpack-1t", "ort-cpu-2t", "torch-cpu"))
    assert all(isinstance(d, lm.RealDevice) for d in (xnn, ort, torch_cpu))
    assert (xnn.threads, ort.threads, torch_cpu.threads) == (1, 2, 1)
    assert (xnn.runtime, ort.runtime, torch_cpu.runtime) == (
        "executorch-xnnpack",
        "onnxruntime",
        "torch",
    )
    assert xnn.dtypes == ("fp32", "int8")
    with pytest.raises(KeyError, match=r"Did you mean .*'xnnpack-1t'"):
        lm.get_device("xnnpak-1t")


def test_a_real_device_times_any_module(fast_protocol: Protocol) -> None:
    from torch import nn

    device = lm.get_device("torch-cpu", protocol=fast_protocol)
    assert isinstance(device, lm.RealDevice)
    m = device.measure_module(nn.Conv2d(3, 8, 3), (1, 3, 16, 16), "fp32")
    assert isinstance(m, Measurement) and m.latency_ms > 0
    assert (m.device, m.runtime, m.dtype, m.threads) == ("torch-cpu", "torch", "fp32", 1)
    with pytest.raises(DeviceError, match="valid dtypes"):
        device.measure_module(nn.ReLU(), (1, 4), "int4")
