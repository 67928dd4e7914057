"""Every export loads and runs in its runtime and agrees with the model it came from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas.backends import check_parity, export_onnx, export_pte, open_runner
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


def test_unknown_artifact_suffix_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"suffix must be one of \['.onnx', '.pte', '.tflite'\]"):
        open_runner(tmp_path / "m.bin", (1, 3, 32, 32))
