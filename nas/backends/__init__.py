"""Everything that makes or runs an artifact: torch.export programs, ExecuTorch `.pte` files
lowered to XNNPACK, ONNX files and ONNX Runtime sessions (with static int8), LiteRT `.tflite`,
the host CPU's facts and the runtimes' thread pools.

One module per job: `torch_export` (the program every artifact is made from), `executorch`,
`onnx` and `litert` (each format's export and runner), `training_program` (ExecuTorch training
programs: export, the runtime's SGD, weights read back; `memory_packing` their memory plan, `batch_statistics` batch norm in training mode), `eager` (PyTorch, the reference every
artifact is checked against), `runners` (a runner by suffix, parity, a simple timing),
`artifact` (the runner protocol), `host` (CPU facts), `quiet` (the exporters' chatter kept out
of the user's log around our calls). The compression chain and `latency_models.runtimes` both
call this package; it imports nothing of ours but `nas.core`.
"""

from __future__ import annotations

from nas.backends.artifact import ARTIFACT_SUFFIXES, ArtifactRunner
from nas.backends.batch_statistics import BatchStatisticsNorm2d, with_batch_statistics
from nas.backends.eager import predict_logits, set_weight_layout
from nas.backends.executorch import (
    LoadedProgram,
    LoweredProgram,
    PteRunner,
    executorch_pool_generation,
    executorch_threads,
    export_pte,
    lower_program,
    lower_to_pte,
    set_executorch_threads,
)
from nas.backends.host import cpu_flags, cpu_info, has_vnni
from nas.backends.litert import TfliteRunner, export_tflite
from nas.backends.memory_packing import pack_offsets, training_memory_planning_pass
from nas.backends.onnx import (
    OnnxRunner,
    compact_onnx,
    export_onnx,
    onnx_bytes,
    onnx_model,
    ort_session_options,
    quantize_onnx_model,
    quantize_onnx_static,
    strip_onnx_metadata,
)
from nas.backends.pt2e import (
    WEIGHT_BITS,
    cached_pt2e_patterns,
    check_weight_bits,
    convert,
    torchao_pt2e,
    xnnpack_quantizer,
)
from nas.backends.quiet import quiet_exporters
from nas.backends.runners import ParityReport, check_parity, min_latency_ms, open_runner
from nas.backends.torch_export import eval_mode, export_program
from nas.backends.training_program import (
    PARTITIONS,
    RUNTIME_OPTIMIZERS,
    RuntimeTrainer,
    TrainingProgram,
    TrainingProgramError,
    check_runtime_optimizer,
    export_training_program,
)

__all__ = [
    "ARTIFACT_SUFFIXES",
    "PARTITIONS",
    "RUNTIME_OPTIMIZERS",
    "WEIGHT_BITS",
    "ArtifactRunner",
    "BatchStatisticsNorm2d",
    "LoadedProgram",
    "LoweredProgram",
    "OnnxRunner",
    "ParityReport",
    "PteRunner",
    "RuntimeTrainer",
    "TfliteRunner",
    "TrainingProgram",
    "TrainingProgramError",
    "cached_pt2e_patterns",
    "check_parity",
    "check_runtime_optimizer",
    "check_weight_bits",
    "compact_onnx",
    "convert",
    "cpu_flags",
    "cpu_info",
    "eval_mode",
    "executorch_pool_generation",
    "executorch_threads",
    "export_onnx",
    "export_program",
    "export_pte",
    "export_tflite",
    "export_training_program",
    "has_vnni",
    "lower_program",
    "lower_to_pte",
    "min_latency_ms",
    "onnx_bytes",
    "onnx_model",
    "open_runner",
    "ort_session_options",
    "pack_offsets",
    "predict_logits",
    "quantize_onnx_model",
    "quantize_onnx_static",
    "quiet_exporters",
    "set_executorch_threads",
    "set_weight_layout",
    "strip_onnx_metadata",
    "torchao_pt2e",
    "training_memory_planning_pass",
    "with_batch_statistics",
    "xnnpack_quantizer",
]
