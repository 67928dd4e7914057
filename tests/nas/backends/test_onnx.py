"""ONNX: static int8 from ONNX Runtime runs and agrees; compacting keeps the computation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas.backends import check_parity, compact_onnx, export_onnx, open_runner, quantize_onnx_static
from nas.data import ImageDataset

pytestmark = pytest.mark.slow

EXAMPLE = torch.zeros(1, 3, 32, 32)


def test_onnx_runtime_static_int8_runs_and_agrees(
    tmp_path: Path, trained: torch.nn.Module, data: ImageDataset
) -> None:
    fp32 = export_onnx(trained, EXAMPLE, tmp_path / "m.onnx")
    calibration = list(data.train.tensors[0][:32].split(1))
    int8 = quantize_onnx_static(fp32, tmp_path / "m-int8.onnx", calibration)
    # Smaller, though not 4x: a model of 10k weights is dominated by per-channel scales and names.
    assert int8.stat().st_size < fp32.stat().st_size
    x, y = data.test.tensors
    report = check_parity(open_runner(int8, (1, 3, 32, 32)), trained, x, y)
    assert report.top1_agreement >= 0.95
    assert 0 < report.max_abs_logit_diff < 2.0
    _assert_int8_holds_no_fp32_weights(int8, trained)


def _assert_int8_holds_no_fp32_weights(path: Path, model: torch.nn.Module) -> None:
    """Every conv / linear weight is stored once, as int8; fp32 tensors are per-channel scales
    and biases (1-D) only; no metadata or names left to fill the file."""
    import onnx

    proto = onnx.load(path)
    inits = list(proto.graph.initializer)
    floats = [t for t in inits if t.data_type == onnx.TensorProto.FLOAT]
    assert all(len(t.dims) <= 1 for t in floats), [tuple(t.dims) for t in floats]
    int8_weights = [t for t in inits if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    n_weights = sum(
        m.weight.numel()
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    )
    assert sum(int(torch.Size(t.dims).numel()) for t in int8_weights) == n_weights
    assert not proto.graph.metadata_props and not proto.metadata_props
    assert not any(n.name or n.doc_string for n in proto.graph.node)


def test_compact_onnx_keeps_the_computation() -> None:
    """Short names never take a graph input's name, identical tensors are stored once, the
    all-zero zero point of a conv weight goes, and the results stay the same."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (4, 3, 3, 3), dtype=np.int8)
    scale = np.full(4, 0.01, np.float32)
    inits = [
        numpy_helper.from_array(w, "layer.weight"),
        numpy_helper.from_array(scale, "layer.scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "layer.zero_point"),
        numpy_helper.from_array(np.ones(4, np.float32), "bias_a"),
        numpy_helper.from_array(np.ones(4, np.float32), "bias_b"),  # the same as bias_a
    ]
    nodes = [
        helper.make_node(
            "DequantizeLinear", ["layer.weight", "layer.scale", "layer.zero_point"], ["w"], axis=0
        ),
        helper.make_node("Conv", ["0", "w", "bias_a"], ["c1"], name="conv_1", pads=[1] * 4),
        helper.make_node("Conv", ["0", "w", "bias_b"], ["c2"], name="conv_2", pads=[1] * 4),
        helper.make_node("Add", ["c1", "c2"], ["1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("0", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("1", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    graph.metadata_props.add(key="pkg.torch.export.graph_signature", value="x" * 1000)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 8
    before = model.SerializeToString()
    compact_onnx(model)
    onnx.checker.check_model(model)
    assert len(model.SerializeToString()) < len(before) - 1000
    assert len(model.graph.initializer) == 3  # weight, scale, one bias; no zero point
    assert list(model.graph.node[0].input)[2:] == []
    assert {v.name for v in model.graph.input} == {"0"} and model.graph.output[0].name == "1"
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)

    def run(data: bytes) -> np.ndarray:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {"0": x})[0])

    np.testing.assert_array_equal(run(model.SerializeToString()), run(before))
