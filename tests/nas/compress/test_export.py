"""Every export loads and runs in its runtime and agrees with the model it came from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas.compress import check_parity, export_onnx, export_pte, open_runner, quantize_onnx_static
from nas.compress.export import export_tflite
from nas.data import ImageDataset

pytestmark = pytest.mark.slow

EXAMPLE = torch.zeros(1, 3, 32, 32)


def test_fp32_pte_and_onnx_match_pytorch(
    tmp_path: Path, trained: torch.nn.Module, data: ImageDataset
) -> None:
    x, y = data.test.tensors
    for path in (
        export_pte(trained, EXAMPLE, tmp_path / "m.pte"),
        export_onnx(trained, EXAMPLE, tmp_path / "m.onnx"),
    ):
        runner = open_runner(path, (1, 3, 32, 32), threads=1)
        report = check_parity(runner, trained, x, y)
        assert report.n_images == len(y)
        assert report.top1_agreement == 1.0, path.name
        assert report.max_abs_logit_diff < 1e-3, path.name
        assert report.runtime_accuracy == report.reference_accuracy
        runner()  # the timed call runs on its stored input
        with pytest.raises(ValueError, match="exported for input shape"):
            runner.run(x[:2])


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


def test_unknown_artifact_suffix_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"suffix must be one of \['.onnx', '.pte', '.tflite'\]"):
        open_runner(tmp_path / "m.bin", (1, 3, 32, 32))


def test_tflite_export_when_installed(
    tmp_path: Path, trained: torch.nn.Module, data: ImageDataset
) -> None:
    pytest.importorskip("litert_torch")
    path = export_tflite(trained, EXAMPLE, tmp_path / "m.tflite")
    x, y = data.test.tensors
    report = check_parity(open_runner(path, (1, 3, 32, 32)), trained, x[:32], y[:32])
    assert report.top1_agreement == 1.0
