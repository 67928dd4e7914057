"""Compression of search winners into deployable models: KD, pruning, int8, export, parity.

The steps work on plain modules and data: :mod:`~nas.compress.distill` (KD fine-tuning and the
training loop), :mod:`~nas.compress.prune` (structured channel pruning), :mod:`~nas.compress.ptq`
and :mod:`~nas.compress.qat` (int8 through PT2E), with artifacts made and run by
:mod:`nas.backends`. :func:`run_chain` (:mod:`~nas.compress.chain`) strings them together for
one arch of a space, resumably, on the devices it is given (:class:`LatencyDevice`), with a
report of what each step bought (:mod:`~nas.compress.report`); :mod:`~nas.compress.config` holds
its settings, :mod:`~nas.compress.steps` and :mod:`~nas.compress.export` its steps. Heavy
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
from nas.compress.checkpoint import (
    CheckpointError,
    apply_structure,
    load_model,
    read_checkpoint,
    save_model,
)
from nas.compress.config import (
    DEFAULT_STEPS,
    FORMATS,
    STEPS,
    ChainConfig,
    ExportConfig,
    check_steps,
)
from nas.compress.distill import (
    FinetuneConfig,
    KDConfig,
    StepCallback,
    TrainHistory,
    distill_model,
    evaluate_accuracy,
    extract_subnet,
    kd_loss,
    largest_arch,
    predict_logits,
    train_model,
)
from nas.compress.latency import RUNTIMES, ArtifactTimer, LatencyDevice, predicted_latency_ms
from nas.compress.prune import (
    CostFn,
    PruneConfig,
    PruneResult,
    macs_params,
    prune_channels,
    prune_model,
)
from nas.compress.ptq import (
    QUANT_KINDS,
    calibrate_observers,
    calibration_batches,
    load_quantized,
    prepare,
    ptq,
    save_quantized,
)
from nas.compress.qat import QATConfig, fp32_twin, freeze_batchnorm_stats, train_qat
from nas.compress.report import ChainResult, ReportRow, read_report, render_report
from nas.compress.sizes import ArtifactContents, artifact_contents

__all__ = [
    "DEFAULT_STEPS",
    "FORMATS",
    "QUANT_KINDS",
    "RUNTIMES",
    "STEPS",
    "ArtifactContents",
    "ArtifactTimer",
    "ChainConfig",
    "ChainResult",
    "CheckpointError",
    "CostFn",
    "ExportConfig",
    "FinetuneConfig",
    "KDConfig",
    "LatencyDevice",
    "ParityReport",
    "PruneConfig",
    "PruneResult",
    "QATConfig",
    "ReportRow",
    "StepCallback",
    "TrainHistory",
    "apply_structure",
    "artifact_contents",
    "calibrate_observers",
    "calibration_batches",
    "chain_dir",
    "check_parity",
    "check_steps",
    "convert",
    "distill_model",
    "evaluate_accuracy",
    "export_onnx",
    "export_pte",
    "export_tflite",
    "extract_subnet",
    "fp32_twin",
    "freeze_batchnorm_stats",
    "kd_loss",
    "largest_arch",
    "load_model",
    "load_quantized",
    "lower_to_pte",
    "macs_params",
    "min_latency_ms",
    "open_runner",
    "predict_logits",
    "predicted_latency_ms",
    "prepare",
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
