"""The chain's report: a row per model and artifact, its table, speed-ups and size ratios.

A row holds what a step bought and what it cost: test accuracy, MACs, parameters, file and
weight bytes, latency measured per device, predicted latency, and for artifacts their parity
with the model they came from. ``report.json`` keeps the rows; ``report.md`` shows them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.compress.config import ChainConfig, _from_dict
from nas.compress.sizes import artifact_contents
from nas.core.files import FileProblem, read_json, write_text_atomic

__all__ = ["ChainResult", "ReportRow", "read_report", "render_report"]

log = logging.getLogger(__name__)

_REPORT_VERSION = 1


@dataclass
class ReportRow:
    """One line of the report: a model after a step, or an artifact in its runtime.

    ``accuracy`` is top-1 on the test set (a fraction), in PyTorch for models and in the runtime
    for artifacts. ``size_bytes`` is the file on disk (checkpoint or artifact); ``weights_bytes``
    the weights as deployed (fp32: 4 bytes a parameter; int8: the converted model's tensors).
    ``latency_ms`` holds measured latencies (the headline minimum of ``latency_models.measure``)
    by device name: a model's on every device that times its dtype, an artifact's on every
    device whose runtime runs it; ``speedup`` compares with the step's input on the same device.
    """

    step: str
    model: str
    dtype: str
    format: str = "pytorch"
    accuracy: float | None = None
    macs: int | None = None
    params: int | None = None
    size_bytes: int | None = None
    weights_bytes: int | None = None
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    speedup: dict[str, float] = field(default_factory=dict)
    predicted_latency_ms: float | None = None
    top1_agreement: float | None = None
    max_abs_logit_diff: float | None = None
    source: str = ""
    file: str = ""
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReportRow:
        return _from_dict(cls, data, "ReportRow")


@dataclass
class ChainResult:
    """What a chain produced: its folder, report rows, models by step and artifact paths."""

    directory: Path
    rows: list[ReportRow]
    models: dict[str, nn.Module]
    artifacts: list[Path]
    resumed: list[str]

    @property
    def report_path(self) -> Path:
        return self.directory / "report.md"


def read_report(directory: str | os.PathLike[str]) -> list[ReportRow]:
    """The rows of a chain's ``report.json``; `FileProblem` naming it when it is missing, a
    folder, empty, cut or not a chain's report."""
    path = Path(directory) / "report.json"
    redo = f"delete it to write it again (rerun the chain into {directory}; finished steps resume)"
    data = read_json(path, "a compression chain's report (JSON object)", redo)
    try:
        return [ReportRow.from_dict(r) for r in data["rows"]]
    except (KeyError, TypeError, ValueError) as err:
        raise FileProblem(path, f"is not a chain's report ({err!r})", redo) from None


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def render_report(rows: Sequence[ReportRow], title: str = "") -> str:
    """The report as a Markdown table."""
    devices: list[str] = []
    for r in rows:
        for k in r.latency_ms:
            if k not in devices:
                devices.append(k)
    head = [
        "step",
        "model",
        "format",
        "top-1 %",
        "agree %",
        "max dlogit",
        "MACs",
        "params",
        "size bytes",
        "weights bytes",
        *[f"{k} ms" for k in devices],
        "pred. ms",
        "notes",
    ]
    lines = [
        f"# {title}\n" if title else "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [
            r.step,
            r.model,
            r.format,
            _fmt(None if r.accuracy is None else 100 * r.accuracy, ".2f"),
            _fmt(None if r.top1_agreement is None else 100 * r.top1_agreement, ".2f"),
            _fmt(r.max_abs_logit_diff, ".3g"),
            "" if r.macs is None else f"{r.macs:,}",
            "" if r.params is None else f"{r.params:,}",
            "" if r.size_bytes is None else f"{r.size_bytes:,}",
            "" if r.weights_bytes is None else f"{r.weights_bytes:,}",
            *[
                _fmt(r.latency_ms.get(k), ".3f")
                + (f" (x{r.speedup[k]:.2f})" if k in r.speedup else "")
                for k in devices
            ],
            _fmt(r.predicted_latency_ms, ".3f"),
            r.notes,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(line for line in lines if line) + "\n"


def _write_report(
    directory: Path,
    space: Any,
    arch: Mapping[str, Any],
    steps: Sequence[str],
    config: ChainConfig,
    rows: Sequence[ReportRow],
) -> None:
    """``report.json`` (the rows, the steps and the settings) and ``report.md`` (the table)."""
    title = f"Compression of {space.name} arch {space.key(arch)}"
    _write_json(
        directory / "report.json",
        {
            "version": _REPORT_VERSION,
            "space": space.name,
            "arch_key": space.key(arch),
            "steps": list(steps),
            "config": config.to_dict(),
            "rows": [r.to_dict() for r in rows],
        },
    )
    (directory / "report.md").write_text(render_report(rows, title))


def _write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True, default=str))


def _speedups(
    before: Mapping[str, float | None], after: Mapping[str, float | None]
) -> dict[str, float]:
    return {
        k: float(before[k]) / float(v)  # type: ignore[arg-type]
        for k, v in after.items()
        if v and before.get(k)
    }


def _size_ratios(rows: list[ReportRow], int8_sources: Mapping[str, str], directory: Path) -> None:
    """Note each int8 artifact's size as a share of the fp32 artifact, in the same format, of
    the fp32 model it was quantized from: the whole file, and its tensor data alone (what an
    int8 encoding saves before the format's structure and the 32-bit biases and scales it
    keeps: :mod:`nas.compress.sizes`)."""
    fp32 = {(r.source, r.format): r for r in rows if r.dtype == "fp32"}
    for r in rows:
        if r.dtype != "int8" or r.size_bytes is None:
            continue
        ref = fp32.get((int8_sources.get(r.source, r.source), r.format))
        if ref is None or not ref.size_bytes:
            continue
        r.notes += f"; {r.size_bytes / ref.size_bytes:.2f}x the fp32 {r.format} file"
        if r.format in ("pte", "onnx") and r.file and ref.file:
            try:
                mine = artifact_contents(directory / r.file)
                theirs = artifact_contents(directory / ref.file)
            except (ImportError, ValueError, OSError) as err:
                log.debug("no size breakdown for %s: %s", r.file, err)
                continue
            r.notes += (
                f" (tensor data {mine.ratio_to(theirs)['tensors']:.2f}x, of which scales "
                f"{mine.scale_bytes:,} B; structure {mine.structure_bytes:,} B vs "
                f"{theirs.structure_bytes:,} B)"
            )


def _weights_bytes(module: nn.Module) -> int:
    """Bytes of the tensors a model computes with. For a converted PT2E graph only the tensors
    its graph reads (int8 weights, scales, biases), not the fp32 originals it still holds."""
    tensors: dict[int, torch.Tensor] = {}
    if isinstance(module, torch.fx.GraphModule):
        for node in module.graph.nodes:
            if node.op == "get_attr":
                obj: Any = module
                for part in str(node.target).split("."):
                    obj = getattr(obj, part)
                if isinstance(obj, torch.Tensor):
                    tensors[id(obj)] = obj
    else:
        for t in list(module.parameters()) + list(module.buffers()):
            tensors[id(t)] = t
    return int(sum(t.numel() * t.element_size() for t in tensors.values()))
