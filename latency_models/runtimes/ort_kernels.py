"""The kernels ONNX Runtime actually runs for a network, each described well enough to rebuild
and time it alone (`ort-cpu-*` kernel tables, `latency_models.kernels`).

A table of lone layers cannot see what ONNX Runtime's optimiser does to a whole network: NCHWc
reorders at the boundaries of its blocked-layout islands (fp32), transposes and quantize /
dequantize nodes between int8 islands, ReLUs shared by two convolutions of the same tensor,
additions fused into a convolution. On NAS-Bench-201 those effects decide the ranking: the
glue nodes' counts alone varied from 0 to 63 per network. So the optimiser itself is the kernel
detector here, as
nn-Meter detects kernels with rules per backend, but exact: the network is optimised as a
session would optimise it, the optimised graph saved, one profiled run gives every node's
output types and shapes, and every node becomes a `KernelSpec`: its operator, domain,
attributes, and per input either "a tensor of this type and shape" or "a constant": int64
constants (shapes, axes, pads) by value, since they decide the work; the others (weights,
biases, quantization scales and zero points, the zero of NAS-Bench-201's `none` edge) by type
and shape only, since their values differ from network to network and not the time.

A spec is rebuilt as a model of `copies` independent copies of the node reading the same
inputs, run with graph optimisations off (the node is already what the optimiser made of it),
and its time divided by `copies`: a lone session run costs about 4 us of overhead on this
machine, more than many of these kernels (a 16x32x32 addition takes ~4 us), while inside a
network the executor's dispatch costs far less. Each copy has weights of its own: in a network
a kernel's weights have been pushed out of the near caches by the other kernels' since the
last run, so copies that shared one set of weights, hot after the first, ran too fast (sums of
ONNX Runtime fbnet and mobilenetv3 networks at 0.83x and 0.86x of their measured latencies;
0.95x and 1.00x with private weights). The inputs stay shared: in a network a kernel's input
was written just before it, so it is hot there too. Weights are filled with small positive
values (floats) or zeros (integers).

The graph is optimised for this CPU (the NCHWc block size follows its vector width), so specs
and tables belong to the machine that made them, as every timing does.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from latency_models.measure import Measurement

__all__ = [
    "COPIES",
    "KernelSpec",
    "kernel_model",
    "network_kernels",
    "per_copy",
]

COPIES = 8
"""Copies of a node timed together (module docstring)."""

# ONNX Runtime's profiler names tensor types like this; the values are onnx.TensorProto codes
_TYPES: dict[str, int] = {
    "float": 1,
    "uint8": 2,
    "int8": 3,
    "uint16": 4,
    "int16": 5,
    "int32": 6,
    "int64": 7,
    "bool": 9,
    "float16": 10,
    "double": 11,
}
_NUMPY: dict[str, Any] = {
    "float": np.float32,
    "uint8": np.uint8,
    "int8": np.int8,
    "uint16": np.uint16,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "bool": np.bool_,
    "float16": np.float16,
    "double": np.float64,
}
_BY_CODE = {v: k for k, v in _TYPES.items()}


@dataclass(frozen=True)
class KernelSpec:
    """One node of an optimised graph, as a canonical JSON `key` (module docstring)."""

    key: str
    op: str

    @property
    def spec(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.key)
        return data


def _attribute_json(attr: Any) -> list[Any]:
    from onnx import AttributeProto, numpy_helper

    t = attr.type
    if t == AttributeProto.INT:
        return [attr.name, "int", int(attr.i)]
    if t == AttributeProto.FLOAT:
        return [attr.name, "float", float(attr.f)]
    if t == AttributeProto.STRING:
        return [attr.name, "string", attr.s.decode()]
    if t == AttributeProto.INTS:
        return [attr.name, "ints", [int(v) for v in attr.ints]]
    if t == AttributeProto.FLOATS:
        return [attr.name, "floats", [float(v) for v in attr.floats]]
    if t == AttributeProto.STRINGS:
        return [attr.name, "strings", [s.decode() for s in attr.strings]]
    if t == AttributeProto.TENSOR:
        arr = numpy_helper.to_array(attr.t)
        return [attr.name, "tensor", _BY_CODE[attr.t.data_type], list(arr.shape), arr.tolist()]
    raise ValueError(
        f"kernel specs hold int, float, string and tensor attributes; {attr.name!r} is of ONNX "
        f"attribute type {t} (a subgraph?), which cannot be rebuilt as a lone kernel"
    )


def _make_attribute(item: Sequence[Any]) -> Any:
    from onnx import AttributeProto, helper, numpy_helper

    name, kind = item[0], item[1]
    attr = AttributeProto()
    attr.name = name
    if kind == "int":
        attr.type, attr.i = AttributeProto.INT, item[2]
    elif kind == "float":
        attr.type, attr.f = AttributeProto.FLOAT, item[2]
    elif kind == "string":
        attr.type, attr.s = AttributeProto.STRING, item[2].encode()
    elif kind == "ints":
        attr.type = AttributeProto.INTS
        attr.ints.extend(item[2])
    elif kind == "floats":
        attr.type = AttributeProto.FLOATS
        attr.floats.extend(item[2])
    elif kind == "strings":
        attr.type = AttributeProto.STRINGS
        attr.strings.extend(s.encode() for s in item[2])
    elif kind == "tensor":
        arr = np.array(item[4], dtype=_NUMPY[item[2]]).reshape(item[3])
        return helper.make_attribute(name, numpy_helper.from_array(arr))
    else:
        raise ValueError(f"unknown attribute kind {kind!r} in a kernel spec")
    return attr


def _type_shape(entry: Mapping[str, Any]) -> tuple[str, list[int]]:
    ((t, shape),) = entry.items()
    if t not in _TYPES:
        raise ValueError(f"tensor type {t!r} is not one kernel specs support: {sorted(_TYPES)}")
    return t, [int(d) for d in shape]


def _profiled_types(profile: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Node name -> the output (type, shape) list ONNX Runtime's profiler recorded."""
    out: dict[str, list[Any]] = {}
    suffix = "_kernel_time"
    for event in profile:
        name = str(event.get("name", ""))
        if event.get("cat") == "Node" and name.endswith(suffix):
            shapes = event.get("args", {}).get("output_type_shape")
            if shapes is not None:
                out[name[: -len(suffix)]] = [_type_shape(s) for s in shapes]
    return out


def network_kernels(
    ort: Any,
    model_path: str | Path,
    example: np.ndarray,
    session_options: Callable[[], Any],
) -> list[KernelSpec]:
    """The kernels, in execution order, of the ONNX model at `model_path` as a session with
    `session_options()` runs it on `example` (module docstring)."""
    import onnx
    from onnx import numpy_helper

    with tempfile.TemporaryDirectory(prefix="edge-nas-ort-kernels-") as tmp:
        options = session_options()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        session.run(None, {session.get_inputs()[0].name: example})
        profile = json.loads(Path(session.end_profiling()).read_text())
        model = onnx.load(options.optimized_model_filepath)
    graph = model.graph
    opset = {o.domain or "ai.onnx": int(o.version) for o in model.opset_import}
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    types: dict[str, tuple[str, list[int]]] = {}
    for value in graph.input:
        tt = value.type.tensor_type
        types[value.name] = (_BY_CODE[tt.elem_type], [d.dim_value for d in tt.shape.dim])
    outputs = _profiled_types(profile)
    names = [node.name for node in graph.node]
    if "" in names or len(set(names)) != len(names):
        raise RuntimeError(
            "the optimised graph has unnamed or repeated node names, so its profile cannot be "
            "matched to its nodes"
        )
    kernels: list[KernelSpec] = []
    for node in graph.node:
        produced = outputs.get(node.name)
        if produced is None or len(produced) < len([o for o in node.output if o]):
            raise RuntimeError(
                f"ONNX Runtime's profile has no output shapes for node {node.name!r} "
                f"({node.op_type}); cannot describe it as a kernel"
            )
        for name, ts in zip((o for o in node.output if o), produced, strict=False):
            types[name] = ts
        inputs: list[Any] = []
        for name in node.input:
            if not name:
                inputs.append(None)
            elif name in consts:
                arr = consts[name]
                t = _BY_CODE[onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)]
                by_value = arr.dtype == np.int64  # shapes, axes, pads: they decide the work
                inputs.append(
                    {"t": t, "shape": list(arr.shape), "const": arr.tolist() if by_value else None}
                )
            elif name in types:
                t, shape = types[name]
                inputs.append({"t": t, "shape": shape})
            else:
                raise RuntimeError(f"input {name!r} of node {node.name!r} has no known type")
        if any(i is not None and "const" not in i and i["t"] == "int64" for i in inputs):
            raise RuntimeError(
                f"node {node.name!r} ({node.op_type}) reads an int64 tensor computed at run time "
                "(a shape computation the optimiser did not fold): its value would decide what "
                "the kernel does, and a lone kernel cannot be given it"
            )
        domain = node.domain or "ai.onnx"
        spec = {
            "op": node.op_type,
            "domain": domain,
            "opsets": {d: opset[d] for d in sorted({"ai.onnx", domain}) if d in opset},
            "ir": int(model.ir_version),
            "attrs": sorted((_attribute_json(a) for a in node.attribute), key=lambda a: a[0]),
            "inputs": inputs,
            "outputs": [{"t": types[o][0], "shape": types[o][1]} for o in node.output if o],
        }
        op = node.op_type if domain == "ai.onnx" else f"{domain}.{node.op_type}"
        kernels.append(KernelSpec(json.dumps(spec, separators=(",", ":")), op))
    return kernels


def kernel_model(
    kernel: KernelSpec, copies: int = COPIES, seed: int = 0
) -> tuple[Any, dict[str, np.ndarray]]:
    """`copies` independent copies of the kernel's node reading the same inputs, as an ONNX
    model, and random inputs for it (module docstring)."""
    from onnx import helper, numpy_helper

    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    spec = kernel.spec
    rng = np.random.default_rng(seed)
    graph_inputs, initializers, names = [], [], []
    feeds: dict[str, np.ndarray] = {}
    for i, item in enumerate(spec["inputs"]):
        if item is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        np_type = _NUMPY[item["t"]]
        shape = tuple(item["shape"])
        if "const" in item:
            if item["const"] is not None:
                arr = np.array(item["const"], dtype=np_type).reshape(shape)
            elif np.issubdtype(np_type, np.floating):
                arr = rng.uniform(0.01, 0.1, size=shape).astype(np_type)
            else:
                arr = np.zeros(shape, dtype=np_type)
            initializers.append(numpy_helper.from_array(arr, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, _TYPES[item["t"]], shape))
            if np.issubdtype(np_type, np.floating):
                feeds[name] = rng.standard_normal(shape).astype(np_type)
            elif np_type == np.bool_:
                feeds[name] = rng.integers(0, 2, size=shape).astype(np_type)
            else:
                info = np.iinfo(np_type)
                feeds[name] = rng.integers(info.min, info.max, size=shape, dtype=np_type)
    nodes, graph_outputs = [], []
    weights = list(initializers)
    for r in range(copies):
        outs = [f"out{r}_{j}" for j in range(len(spec["outputs"]))]
        mine = names
        if r > 0:  # each copy its own weights (module docstring)
            renamed = {w.name: f"{w.name}_{r}" for w in weights}
            mine = [renamed.get(n, n) for n in names]
            initializers += [
                numpy_helper.from_array(numpy_helper.to_array(w), renamed[w.name]) for w in weights
            ]
        node = helper.make_node(
            spec["op"],
            mine,
            outs,
            name=f"kernel{r}",
            domain="" if spec["domain"] == "ai.onnx" else spec["domain"],
        )
        node.attribute.extend(_make_attribute(a) for a in spec["attrs"])
        nodes.append(node)
        for name, item in zip(outs, spec["outputs"], strict=True):
            graph_outputs.append(
                helper.make_tensor_value_info(name, _TYPES[item["t"]], item["shape"])
            )
    graph = helper.make_graph(nodes, "kernel", graph_inputs, graph_outputs, initializers)
    opsets = [
        helper.make_opsetid("" if d == "ai.onnx" else d, v) for d, v in spec["opsets"].items()
    ]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = spec["ir"]
    return model, feeds


def per_copy(m: Measurement, copies: int) -> Measurement:
    """A measurement of `copies` copies of a kernel, as the time of one."""
    ms = ("median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms", "min_ms")
    return replace(m, **{f: getattr(m, f) / copies for f in ms})
