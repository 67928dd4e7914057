"""The measurement protocol and the real-runtime devices (torch eager, ONNX Runtime, XNNPACK).

Protocol tests run on a fake clock, so their statistics are exact. Runtime tests use a tiny
CNN; XNNPACK lowers three programs in the whole file (fp32, int8, one batched LUT program),
shared through module-scoped fixtures and one temporary artifact cache.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from latency_models.measure import (
    Measurement,
    Protocol,
    RunInfo,
    measure,
    measure_rounds,
    summarize,
)
from latency_models.runtimes import (
    ArtifactCache,
    OrtCPURuntime,
    Prepared,
    Runtime,
    RuntimeUnavailableError,
    TorchRuntime,
    XnnpackRuntime,
)
from latency_models.runtimes.cache import ENV_VAR, default_cache_root

# ---------------------------------------------------------------- protocol, on a fake clock


class FakeClock:
    """A nanosecond clock that only moves when a fake workload says so."""

    def __init__(self) -> None:
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns

    def workload(self, durations_ms: Callable[[int], float]) -> Callable[[], None]:
        calls = [0]

        def fn() -> None:
            self.now_ns += round(durations_ms(calls[0]) * 1e6)
            calls[0] += 1

        return fn


FAST = Protocol(warmup_runs=2, warmup_s=0.0, round_s=0.005, min_round_runs=5, min_rounds=2,
                max_runs=200, max_s=0.5)  # fmt: skip


def test_protocol_converges_on_a_steady_workload() -> None:
    clock = FakeClock()
    info = RunInfo(device="fake", runtime="none", runtime_version="0", threads=1, dtype="fp32")
    m = measure(clock.workload(lambda i: 2.0), Protocol(warmup_s=0.0), info=info, clock=clock)
    assert m.converged
    assert m.median_ms == pytest.approx(2.0)
    assert m.p10_ms == m.p90_ms == m.min_ms == pytest.approx(2.0)
    assert m.std_ms == pytest.approx(0.0, abs=1e-9)
    assert m.warmup == 3
    assert m.rounds == 3  # min_rounds
    # Rounds hold round_s (50 ms) of work: 25 runs of 2 ms, three of them.
    assert m.count == 75
    assert (m.device, m.runtime, m.runtime_version, m.threads, m.dtype) == (
        "fake", "none", "0", 1, "fp32",
    )  # fmt: skip


def test_protocol_hits_the_run_cap_when_the_minimum_keeps_falling() -> None:
    clock = FakeClock()
    drifting = clock.workload(lambda i: 10.0 - 0.05 * i)  # every run faster: never settles
    proto = Protocol(warmup_runs=0, warmup_s=0.0, rel_tol=1e-6, max_runs=120, max_s=1e6)
    m = measure(drifting, proto, clock=clock)
    assert not m.converged
    assert m.count == 120
    assert m.warmup == 0


def test_protocol_hits_the_time_cap() -> None:
    clock = FakeClock()
    slow = clock.workload(lambda i: 30.0 - i)  # 30, 29, 28, ... ms: the minimum keeps falling
    proto = Protocol(warmup_runs=1, warmup_s=0.0, round_s=0.0, min_round_runs=5, rel_tol=1e-9,
                     max_runs=10_000, max_s=0.2)  # fmt: skip
    m = measure(slow, proto, clock=clock)
    # Rounds of 5 after the 30 ms warm-up: 135 ms, then 110 ms: 245 ms >= 200 ms of timing.
    assert not m.converged
    assert (m.count, m.rounds, m.warmup) == (10, 2, 1)


def test_protocol_converges_on_the_minimum_while_contention_moves_the_median() -> None:
    clock = FakeClock()
    # A quiet 1 ms run every fourth run, the rest slowed by a neighbour more and more: the
    # median drifts for ever, the uncontended cost (the headline) is there from the start.
    noisy = clock.workload(lambda i: 1.0 if i % 4 == 0 else 2.0 + 0.01 * i)
    m = measure(noisy, Protocol(warmup_s=0.0), clock=clock)
    assert m.converged and m.rounds == 3
    assert m.latency_ms == m.min_ms == pytest.approx(1.0)
    assert m.median_ms > 2.0


def test_protocol_times_for_at_least_min_s() -> None:
    clock = FakeClock()
    m = measure(clock.workload(lambda i: 1.0), Protocol(warmup_s=0.0, min_s=0.5), clock=clock)
    assert m.converged
    assert m.count * 1.0 >= 500  # 1 ms runs for at least half a second
    with pytest.raises(ValueError, match="min_s <= max_s"):
        Protocol(min_s=5.0, max_s=1.0)


def test_protocol_warmup_honours_both_minimums() -> None:
    clock = FakeClock()
    m = measure(clock.workload(lambda i: 1.0), Protocol(warmup_runs=0, warmup_s=0.010), clock=clock)
    assert m.warmup == 10
    m = measure(clock.workload(lambda i: 1.0), Protocol(warmup_runs=7, warmup_s=0.002), clock=clock)
    assert m.warmup == 7


def test_warmup_samples_are_not_counted() -> None:
    clock = FakeClock()
    # Three slow cold runs, then steady 1 ms: the statistics see only the steady runs.
    m = measure(clock.workload(lambda i: 50.0 if i < 3 else 1.0), Protocol(warmup_s=0.0),
                clock=clock)  # fmt: skip
    assert m.warmup == 3
    assert m.median_ms == pytest.approx(1.0) and m.p90_ms == pytest.approx(1.0)


def test_summarize_statistics() -> None:
    samples = np.arange(1.0, 11.0)  # 1..10 ms
    m = summarize(samples, warmup=0, rounds=1, converged=True, info=RunInfo())
    assert m.median_ms == pytest.approx(5.5)
    assert m.p10_ms == pytest.approx(1.9)
    assert m.p90_ms == pytest.approx(9.1)
    assert m.mean_ms == pytest.approx(5.5)
    assert m.std_ms == pytest.approx(float(np.std(samples)))
    assert m.min_ms == 1.0 and m.count == 10
    assert m.spread == pytest.approx(9.1 / 1.9)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        summarize([], warmup=0, rounds=1, converged=True, info=RunInfo())


def test_measure_rounds_checks_its_callback_and_converges_per_item() -> None:
    clock = FakeClock()

    def run(n: int) -> np.ndarray:
        clock.now_ns += n * 3_000_000
        return np.tile([1.0, 2.0], (n, 1))

    first, second = measure_rounds(run, 2, FAST, clock=clock)
    assert first.converged and second.converged
    assert (first.median_ms, second.median_ms) == (1.0, 2.0)
    with pytest.raises(ValueError, match=r"shape \(1, 3\)"):
        measure_rounds(lambda n: np.ones((n, 2)), 3, FAST, clock=clock)


def test_protocol_and_measurement_validation() -> None:
    with pytest.raises(ValueError, match="min_rounds must be an int >= 2"):
        Protocol(min_rounds=1)
    with pytest.raises(ValueError, match="rel_tol must be a finite number > 0"):
        Protocol(rel_tol=0.0)
    with pytest.raises(ValueError, match="min_round_runs \\* min_rounds <= max_runs"):
        Protocol(min_round_runs=50, min_rounds=3, max_runs=100)
    m = summarize([1.0, 2.0], warmup=1, rounds=2, converged=False, info=RunInfo(device="d"))
    assert Measurement.from_dict(m.to_dict()) == m
    with pytest.raises(ValueError, match="unknown: \\['bogus'\\]"):
        Measurement.from_dict({**m.to_dict(), "bogus": 1})


# ---------------------------------------------------------------- runtimes

INPUT = (1, 3, 16, 16)


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, 1, 1, groups=16), nn.ReLU(),
        nn.Conv2d(32, 32, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip
    with torch.no_grad():  # non-trivial BN statistics, so folding it is really exercised
        bn = net[1]
        assert isinstance(bn, nn.BatchNorm2d)
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> ArtifactCache:
    return ArtifactCache(tmp_path_factory.mktemp("edge-nas-cache"))


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return tiny_cnn()


def _device(kind: str, cache: ArtifactCache) -> Runtime:
    if kind == "torch-cpu":
        return TorchRuntime()
    if kind == "ort-cpu-1t":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
        return OrtCPURuntime(cache=cache)
    pytest.importorskip("executorch")
    pytest.importorskip("torchao")
    return XnnpackRuntime(cache=cache)


_PREPARED: dict[tuple[str, str], Prepared] = {}


@pytest.fixture(scope="module")
def prepared(cache: ArtifactCache, net: nn.Module) -> Iterator[Callable[[str, str], Prepared]]:
    """Prepare each (device, dtype) once per module: lowering XNNPACK is the slow part."""

    def get(kind: str, dtype: str) -> Prepared:
        if (kind, dtype) not in _PREPARED:
            _PREPARED[kind, dtype] = _device(kind, cache).prepare(net, INPUT, dtype)
        return _PREPARED[kind, dtype]

    yield get
    _PREPARED.clear()


KINDS = ["torch-cpu", "ort-cpu-1t", "xnnpack-1t"]


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
@pytest.mark.parametrize("kind", KINDS)
def test_device_times_a_tiny_cnn(
    kind: str, dtype: str, prepared: Callable[[str, str], Prepared], cache: ArtifactCache
) -> None:
    device = _device(kind, cache)
    p = prepared(kind, dtype)
    m = device.measure_prepared(p, FAST)
    assert math.isfinite(m.median_ms) and m.median_ms > 0
    assert 0 < m.p10_ms <= m.median_ms <= m.p90_ms
    assert m.count >= FAST.min_rounds * FAST.min_round_runs
    assert (m.device, m.dtype, m.threads) == (kind, dtype, 1)
    assert m.runtime == device.runtime and device.version == m.runtime_version != ""


@pytest.mark.parametrize("kind", KINDS)
def test_int8_artifact_agrees_with_the_fp32_module(
    kind: str, prepared: Callable[[str, str], Prepared], net: nn.Module
) -> None:
    """A quantization bug (wrong scale, lost BN, swapped channels) cannot hide behind timings."""
    p = prepared(kind, "int8")
    gen = torch.Generator().manual_seed(123)
    xs = torch.randn((32, *INPUT[1:]), generator=gen)  # N, C, H, W
    with torch.no_grad():
        ref = net(xs)  # N, 10
    out = torch.cat([p.run(xs[i : i + 1]) for i in range(len(xs))])  # N, 10
    rel_err = float((out - ref).norm() / ref.norm())
    top1 = float((out.argmax(1) == ref.argmax(1)).float().mean())
    assert rel_err < 0.1, f"{kind} int8 relative error {rel_err:.3f}"
    assert top1 >= 0.8, f"{kind} int8 top-1 agreement {top1:.2f}"
    fp32 = prepared(kind, "fp32").run(xs[:1])
    torch.testing.assert_close(fp32, ref[:1], rtol=1e-4, atol=1e-4)


def test_xnnpack_cache_hit_does_not_lower_again(
    prepared: Callable[[str, str], Prepared],
    cache: ArtifactCache,
    net: nn.Module,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = prepared("xnnpack-1t", "fp32")
    assert first.artifact_path is not None and first.artifact_path.exists()
    import latency_models.runtimes.xnnpack as xnnpack

    def no_lowering(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached artifact was lowered again")

    monkeypatch.setattr(xnnpack, "lower_program", no_lowering)
    again = XnnpackRuntime(cache=cache).prepare(tiny_cnn(), INPUT, "fp32")  # same content
    assert again.cache_hit and again.artifact_path == first.artifact_path
    torch.testing.assert_close(again.run(first.example), first.run(first.example))


def test_ort_cache_hit_does_not_export_again(
    prepared: Callable[[str, str], Prepared],
    cache: ArtifactCache,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = prepared("ort-cpu-1t", "int8")
    import latency_models.runtimes.onnxrt as onnxrt

    monkeypatch.setattr(onnxrt, "onnx_model", lambda *a, **k: pytest.fail("exported again"))
    again = OrtCPURuntime(cache=cache).prepare(tiny_cnn(), INPUT, "int8")
    assert again.cache_hit and again.artifact_path == first.artifact_path


def test_changed_weights_change_the_cache_key(cache: ArtifactCache) -> None:
    pytest.importorskip("onnxruntime")
    layer = nn.Conv2d(3, 4, 3)
    device = OrtCPURuntime(cache=cache)
    a = device.prepare(layer, (1, 3, 8, 8))
    with torch.no_grad():
        layer.weight.add_(1.0)
    b = device.prepare(layer, (1, 3, 8, 8))
    c = device.prepare(layer, (1, 3, 9, 9))
    assert len({a.artifact_path, b.artifact_path, c.artifact_path}) == 3
    assert not b.cache_hit


def _layers() -> list[tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(1)
    return [
        (nn.Sequential(nn.Conv2d(8, 16, 3, 1, 1), nn.ReLU()).eval(), (1, 8, 16, 16)),
        (nn.Sequential(nn.Conv2d(16, 16, 5, 2, 2, groups=16), nn.ReLU6()).eval(), (1, 16, 16, 16)),
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval(), (1, 64)),
    ]


def test_xnnpack_measure_many_lowers_once_and_times_every_layer(cache: ArtifactCache) -> None:
    """int8, the harder case: weights, scales and their dequantize nodes must follow their layer
    into its own delegate."""
    pytest.importorskip("executorch")
    device = XnnpackRuntime(cache=cache)
    layers = _layers()
    batch = device.prepare_batch(layers, "int8")
    assert sorted(batch.delegate_layers) == [0, 1, 2] and batch.unbatched == []
    assert set(batch.build_s) >= {"export_s", "quantize_s", "to_edge_and_lower_s"}
    assert device.compile_many(layers, "int8") == 0  # compiling ahead finds the same program
    ms = device.measure_many(layers, "int8", FAST)  # same chunk: a cache hit, no lowering
    assert len(ms) == 3
    assert all(math.isfinite(m.median_ms) and m.median_ms > 0 for m in ms)
    assert all(m.device == "xnnpack-1t" and m.dtype == "int8" for m in ms)


def test_ort_measure_many_shares_one_export_and_fills_the_per_layer_cache(
    cache: ArtifactCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    device = OrtCPURuntime(cache=cache)
    layers = _layers()
    import latency_models.runtimes.onnxrt as onnxrt

    exports = []
    real = onnxrt.onnx_model
    monkeypatch.setattr(onnxrt, "onnx_model", lambda *a, **k: exports.append(1) or real(*a, **k))
    ms = device.measure_many(layers, "fp32", FAST)
    assert len(ms) == 3 and all(m.median_ms > 0 for m in ms)
    assert len(exports) == 1
    single = device.prepare(*layers[1])  # built inside the batch, found alone
    assert single.cache_hit
    x = single.example
    torch.testing.assert_close(single.run(x), layers[1][0](x), rtol=1e-4, atol=1e-5)


def test_ort_compile_many_builds_what_measure_many_then_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    device = OrtCPURuntime(cache=ArtifactCache(tmp_path))
    layers = _layers()
    assert device.compile_many(layers, "int8") == 3
    assert device.compile_many(layers, "int8") == 0
    import latency_models.runtimes.onnxrt as onnxrt

    monkeypatch.setattr(onnxrt, "onnx_model", lambda *a, **k: pytest.fail("exported again"))
    ms = OrtCPURuntime(cache=ArtifactCache(tmp_path)).measure_many(layers, "int8", FAST)
    assert len(ms) == 3 and all(m.median_ms > 0 and m.dtype == "int8" for m in ms)


def test_ort_optimized_graph_ops_name_the_kernels_the_session_runs(cache: ArtifactCache) -> None:
    pytest.importorskip("onnxruntime")
    device = OrtCPURuntime(cache=cache)
    fp32 = device.optimized_graph_ops(device.prepare(tiny_cnn(), INPUT, "fp32"))
    assert any("Conv" in op for op in fp32) and all(n > 0 for n in fp32.values())
    int8 = device.optimized_graph_ops(device.prepare(tiny_cnn(), INPUT, "int8"))
    assert any(op.startswith("QLinear") for op in int8)  # fused into quantized kernels


def test_ort_int8_lut_layers_are_quantized_as_inside_a_network(tmp_path: Path) -> None:
    """A lone average pool has no quantized op before it, so ONNX Runtime's default would
    leave it in fp32; inside an int8 network it runs quantized. LUT layers force it."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    device = OrtCPURuntime(cache=ArtifactCache(tmp_path))
    pool, shape = nn.AvgPool2d(3, 1, 1, count_include_pad=False), (1, 16, 8, 8)
    (layer,) = device.prepare_many([(pool, shape)], "int8")
    assert layer.artifact_path is not None
    ops = [n.op_type for n in onnx.load(str(layer.artifact_path)).graph.node]
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(ops) and "AveragePool" in ops
    whole = device.prepare(pool, shape, "int8")  # the network recipe, on a one-op network
    assert whole.artifact_path is not None and whole.artifact_path != layer.artifact_path
    assert [n.op_type for n in onnx.load(str(whole.artifact_path)).graph.node] == ["AveragePool"]
    (fp32,) = device.prepare_many([(pool, shape)], "fp32")
    assert [n.op_type for n in onnx.load(str(fp32.artifact_path)).graph.node] == ["AveragePool"]


def test_xnnpack_compile_many_compiles_alone_what_a_batch_cannot_time(
    cache: ArtifactCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """measure_many times a layer alone when its batch fails to lower or leaves it outside a
    delegate; compiling ahead must build those single programs too (faked: no lowering)."""
    device = XnnpackRuntime(cache=cache)
    alone: list[int] = []
    layers = _layers()

    def prepare(module: nn.Module, shape: tuple[int, ...], dtype: str = "fp32") -> Prepared:
        alone.append(next(i for i, (m, _) in enumerate(layers) if m is module))
        return SimpleNamespace(cache_hit=False)  # type: ignore[return-value]

    monkeypatch.setattr(device, "prepare", prepare)
    batch = SimpleNamespace(cache_hit=False, delegate_layers=[0, 2], unbatched=[2])
    monkeypatch.setattr(device, "prepare_batch", lambda items, dtype: batch)
    assert device.compile_many(layers) == 1 + 2 and alone == [1, 2]

    def failing_batch(items: object, dtype: str) -> None:
        raise RuntimeError("partitioner gave up")

    alone.clear()
    monkeypatch.setattr(device, "prepare_batch", failing_batch)
    assert device.compile_many(layers) == 3 and alone == [0, 1, 2]


def test_torch_measure_many_and_thread_restore() -> None:
    before = torch.get_num_threads()
    device = TorchRuntime(threads=1)
    ms = device.measure_many(_layers()[:2], "fp32", FAST)
    assert len(ms) == 2 and all(m.median_ms > 0 and m.threads == 1 for m in ms)
    assert torch.get_num_threads() == before


def test_xnnpack_threadpool_is_set_restored_and_survives_a_resize(
    prepared: Callable[[str, str], Prepared], cache: ArtifactCache
) -> None:
    pytest.importorskip("executorch")
    from nas.backends import (
        executorch_pool_generation,
        executorch_threads,
        set_executorch_threads,
    )

    p = prepared("xnnpack-1t", "fp32")
    expected = p.run(p.example)
    before = executorch_threads()
    XnnpackRuntime(cache=cache).measure_prepared(p, FAST)
    assert executorch_threads() == before
    # Resizing the pool frees the one loaded methods point at; the artifact must reload. The
    # compression chain resizes through the same function, so its resizes count too.
    generation = executorch_pool_generation()
    assert set_executorch_threads(before) == before  # the size it has: no new pool
    assert executorch_pool_generation() == generation
    assert set_executorch_threads(before + 1) == before
    assert executorch_pool_generation() == generation + 1
    try:
        torch.testing.assert_close(p.run(p.example), expected)
    finally:
        set_executorch_threads(before)
    with pytest.raises(ValueError, match="threads must be an int >= 1"):
        set_executorch_threads(0)


def test_prepare_keeps_the_callers_training_mode(cache: ArtifactCache) -> None:
    net = tiny_cnn().train()
    TorchRuntime().prepare(net, INPUT, "int8")
    assert all(m.training for m in net.modules())
    pytest.importorskip("onnxruntime")
    p = OrtCPURuntime(cache=cache).prepare(net, INPUT)  # exported in eval mode, BN folded
    assert all(m.training for m in net.modules())
    with torch.no_grad():
        torch.testing.assert_close(p.run(p.example), net.eval()(p.example), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- errors


def test_bad_dtype_shape_and_calibration_errors_are_clear() -> None:
    device = TorchRuntime()
    with pytest.raises(
        ValueError, match=r"cannot run dtype 'int4'; valid dtypes: \['fp32', 'int8'\]"
    ):
        device.prepare(nn.ReLU(), (1, 4), "int4")
    with pytest.raises(ValueError, match="input_shape must be a non-empty tuple of positive ints"):
        device.prepare(nn.ReLU(), (1, 0, 4))
    with pytest.raises(ValueError, match=r"calibration must be a float tensor of shape \(k \* 1"):
        device.prepare(nn.Conv2d(3, 3, 1), (1, 3, 4, 4), "int8", torch.randn(2, 3, 5, 5))
    with pytest.raises(TypeError, match=r"sequence of \(nn.Module, input_shape\) pairs"):
        device.measure_many([nn.ReLU()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="threads must be an int >= 1"):
        TorchRuntime(threads=0)


def test_missing_runtime_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    device = OrtCPURuntime()
    assert not device.available()
    with pytest.raises(RuntimeUnavailableError, match=r"pip install 'edge-nas\[runtimes\]'"):
        device.prepare(nn.ReLU(), (1, 4))
    monkeypatch.setitem(sys.modules, "executorch.extension.pybindings.portable_lib", None)
    with pytest.raises(RuntimeUnavailableError, match=r"'xnnpack-1t' needs executorch"):
        XnnpackRuntime().measure_module(nn.ReLU(), (1, 4))


def test_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # (the real devices are registered devices now: tests/latency_models/test_devices.py)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert default_cache_root() == tmp_path
    assert ArtifactCache().root == tmp_path
