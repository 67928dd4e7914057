"""Where an artifact's bytes go: the parts sum to the file, and int8 shows what it keeps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas.compress import artifact_contents, convert, export_onnx, export_pte, ptq

pytestmark = pytest.mark.slow

SHAPE = (3, 32, 32)
EXAMPLE = torch.zeros(1, *SHAPE)


@pytest.mark.parametrize("fmt", ["pte", "onnx"])
def test_contents_sum_to_the_file_and_int8_keeps_scales_and_structure(
    tmp_path: Path, trained: torch.nn.Module, fmt: str
) -> None:
    export = export_pte if fmt == "pte" else export_onnx
    calibration = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(0))
    int8_model = convert(ptq(trained, calibration, SHAPE, n_images=16))
    paths = {
        "fp32": export(trained, EXAMPLE, tmp_path / f"fp32.{fmt}"),
        "int8": export(int8_model, EXAMPLE, tmp_path / f"int8.{fmt}"),
    }
    fp32, int8 = artifact_contents(paths["fp32"]), artifact_contents(paths["int8"])
    for name, c in (("fp32", fp32), ("int8", int8)):
        assert c.format == fmt
        assert c.tensor_bytes + c.structure_bytes + c.other_bytes == c.file_bytes
        assert c.file_bytes == paths[name].stat().st_size
        assert 0 <= c.scale_bytes < c.tensor_bytes
    params = sum(p.numel() for p in trained.parameters())
    # fp32 tensors: 4 bytes a weight (batch norm folded into the convs: a little fewer)
    assert 0.85 * 4 * params < fp32.tensor_bytes <= 4 * params
    assert fp32.scale_bytes == 0
    # int8: one byte a weight, but biases stay 32-bit and every output channel has a scale
    ratio = int8.ratio_to(fp32)
    assert 0.25 < ratio["tensors"] < 0.4, ratio
    assert ratio["file"] > ratio["tensors"] - 0.02  # the structure does not shrink with int8
    assert int8.scale_bytes > 0


def test_only_onnx_and_pte_are_read(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"reads \.onnx and \.pte"):
        artifact_contents(tmp_path / "model.tflite")
