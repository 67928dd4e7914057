"""Compression of search winners into deployable models: KD, pruning, int8, export, parity.

The steps (:mod:`~nas.compress.distill`, :mod:`~nas.compress.prune`, :mod:`~nas.compress.qat`,
:mod:`~nas.backends.export`) work on plain modules and data; :func:`run_chain` strings them
together for one arch of a space, resumably, with a report of what each step bought. Heavy
runtimes (torch-pruning, torchao, executorch, onnx, onnxruntime) are imported only when a step
needs them.
"""

from nas.backends import (
    ParityReport,
    check_parity,
    convert,
    export_onnx,
    export_pte,
    export_tflite,
    lower_to_pte,
    min_latency_ms,
    open_runner,
    quantize_onnx_static,
)
from nas.compress.chain import chain_dir, run_chain
from nas.compress.checkpoint import CheckpointError, load_model, read_checkpoint, save_model
from nas.compress.config import DEFAULT_STEPS, STEPS, ChainConfig, ExportConfig
from nas.compress.distill import (
    FinetuneConfig,
    KDConfig,
    distill_model,
    evaluate_accuracy,
    extract_subnet,
    kd_loss,
    largest_arch,
    train_model,
)
from nas.compress.latency import RUNTIMES, LatencyDevice, predicted_latency_ms
from nas.compress.prune import PruneConfig, PruneResult, macs_params, prune_channels, prune_model
from nas.compress.ptq import load_quantized, ptq, save_quantized
from nas.compress.qat import QATConfig, train_qat
from nas.compress.report import ChainResult, ReportRow, read_report, render_report
from nas.compress.sizes import ArtifactContents, artifact_contents

__all__ = [
    "DEFAULT_STEPS",
    "RUNTIMES",
    "STEPS",
    "ArtifactContents",
    "ChainConfig",
    "ChainResult",
    "CheckpointError",
    "ExportConfig",
    "FinetuneConfig",
    "KDConfig",
    "LatencyDevice",
    "ParityReport",
    "PruneConfig",
    "PruneResult",
    "QATConfig",
    "ReportRow",
    "artifact_contents",
    "chain_dir",
    "check_parity",
    "convert",
    "distill_model",
    "evaluate_accuracy",
    "export_onnx",
    "export_pte",
    "export_tflite",
    "extract_subnet",
    "kd_loss",
    "largest_arch",
    "load_model",
    "load_quantized",
    "lower_to_pte",
    "macs_params",
    "min_latency_ms",
    "open_runner",
    "predicted_latency_ms",
    "prune_channels",
    "prune_model",
    "ptq",
    "quantize_onnx_static",
    "read_checkpoint",
    "read_report",
    "render_report",
    "run_chain",
    "save_model",
    "save_quantized",
    "train_model",
    "train_qat",
]
