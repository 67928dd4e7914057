"""Where an artifact's bytes go: tensor data (weights, biases, quantization scales) against the
format's own structure (graph, program, keys, headers, padding).

An int8 file is not a quarter of its fp32 file: int8 weights are, but biases stay 32-bit,
per-channel scales add 4 bytes per output channel (XNNPACK also stores the biases' scales), and
the graph or program grows with every quantize / dequantize step. On a small network these
decide the ratio, so the chain's report and the compression benchmark show them.

``.onnx``: the initializers by role (quantized weights, 32-bit integers, scales and zero points
of quantize / dequantize nodes, float tensors) and the rest of the protobuf. ``.pte``: the
ExecuTorch program flatbuffer, the XNNPACK delegate's graph flatbuffer, the named tensor data
(scales among it where ExecuTorch stores them under a ``scale_`` key) and headers / padding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["ArtifactContents", "artifact_contents"]


@dataclass(frozen=True)
class ArtifactContents:
    """Bytes of one artifact file by what they hold; the parts sum to ``file_bytes``."""

    format: str
    file_bytes: int
    tensor_bytes: int
    """Every stored tensor (weights, biases, scales, zero points)."""
    scale_bytes: int
    """Of ``tensor_bytes``: quantization scales and zero points (0 in an fp32 file)."""
    structure_bytes: int
    """Graph / program / delegate flatbuffers: what describes the computation."""
    other_bytes: int
    """Headers, keys outside the structure, alignment padding, metadata."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def ratio_to(self, fp32: ArtifactContents) -> dict[str, float]:
        """This (int8) file against an fp32 file of the same model and format: whole files,
        and tensor data alone (the floor a format-free int8 encoding would reach)."""
        return {
            "file": self.file_bytes / fp32.file_bytes,
            "tensors": self.tensor_bytes / fp32.tensor_bytes,
        }


def artifact_contents(path: str | Path) -> ArtifactContents:
    """The :class:`ArtifactContents` of a ``.onnx`` or ``.pte`` file."""
    p = Path(path)
    if p.suffix == ".onnx":
        return _onnx_contents(p)
    if p.suffix == ".pte":
        return _pte_contents(p)
    raise ValueError(f"artifact_contents reads .onnx and .pte files; got {p.name!r}")


def _onnx_contents(path: Path) -> ArtifactContents:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    qdq_params = set()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            qdq_params.update(node.input[1:3])
    tensor = scales = 0
    for init in model.graph.initializer:
        n = int(numpy_helper.to_array(init).nbytes)
        tensor += n
        if init.name in qdq_params:
            scales += n
    file_bytes = path.stat().st_size
    # The protobuf frames each initializer with a few bytes of tags and lengths; counting them
    # as structure keeps the parts summing to the file.
    return ArtifactContents(
        format="onnx",
        file_bytes=file_bytes,
        tensor_bytes=tensor,
        scale_bytes=scales,
        structure_bytes=file_bytes - tensor,
        other_bytes=0,
    )


def _pte_contents(path: Path) -> ArtifactContents:
    try:
        from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
        from executorch.exir._serialize._program import (
            _get_extended_header,
            deserialize_pte_binary,
        )
    except ImportError as err:
        raise ImportError(
            "reading a .pte needs executorch: pip install 'edge-nas[executorch]'"
        ) from err
    data = path.read_bytes()
    header = _get_extended_header(data)
    if header is None:
        raise ValueError(f"{path} is not an ExecuTorch program with an extended header")
    pte = deserialize_pte_binary(data)
    delegate = 0
    for blob in pte.program.backend_delegate_data:
        raw = bytes(blob.data)
        head = XNNHeader.from_bytes(raw[: XNNHeader.EXPECTED_LENGTH])
        # the delegate's flatbuffer describes the graph; any constant data inside it is tensor
        delegate += head.flatbuffer_size if head is not None else len(raw)
    tensor = scales = 0
    named = pte.named_data
    if named is not None:
        sizes = [len(b) for b in named.buffers]
        for key, entry in named.pte_data.items():
            n = sizes[entry.buffer_index]
            tensor += n
            if key.startswith("scale_"):
                scales += n
    tensor += sum(len(bytes(c.storage)) for c in pte.program.constant_buffer)
    structure = header.program_size + delegate
    return ArtifactContents(
        format="pte",
        file_bytes=len(data),
        tensor_bytes=tensor,
        scale_bytes=scales,
        structure_bytes=structure,
        other_bytes=len(data) - tensor - structure,
    )
