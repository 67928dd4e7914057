"""LiteRT: a .tflite export runs in the interpreter and agrees (optional extra)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas.backends import check_parity, export_tflite, open_runner
from nas.data import ImageDataset

pytestmark = pytest.mark.slow

EXAMPLE = torch.zeros(1, 3, 32, 32)


def test_tflite_export_when_installed(
    tmp_path: Path, trained: torch.nn.Module, data: ImageDataset
) -> None:
    pytest.importorskip("litert_torch")
    path = export_tflite(trained, EXAMPLE, tmp_path / "m.tflite")
    x, y = data.test.tensors
    report = check_parity(open_runner(path, (1, 3, 32, 32)), trained, x[:32], y[:32])
    assert report.top1_agreement == 1.0
