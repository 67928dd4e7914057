"""The memory model against the program's plan on MobileNetV3's parts: hardswish, squeeze-excite
with a hard sigmoid, a global mean and a wide linear classifier, in every fixed update mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas.core.blocks import ConvBNAct, MBConv
from nas.ondevice import check_memory, make_plan, training_memory

SHAPE = (3, 32, 32)


class _MobileParts(nn.Module):
    """A small network of `mobilenetv3`'s parts (its classifier as wide as ImageNet's)."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, 8, 3, 2, act="hswish")
        self.blocks = nn.Sequential(
            MBConv(8, 8, 24, 3, 1, act="relu", se=True),
            MBConv(8, 16, 48, 3, 2, act="hswish", se=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_mix = nn.Sequential(nn.Linear(16, 64), nn.Hardswish(inplace=True))
        self.classifier = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x))).flatten(1)
        return self.classifier(self.feature_mix(x))


def test_a_wide_frozen_classifier_costs_its_transposes() -> None:
    """Training anything before a frozen linear layer keeps its transposed weight to the
    backward and permutes it back there: two weight-sized tensors a layer-spec sum misses."""
    net = _MobileParts().eval()
    weight = net.classifier.weight.numel() * 4
    bias = training_memory(_MobileParts, SHAPE, make_plan(net, "bias"), batch=2, num_classes=10)
    narrow = training_memory(
        lambda: _MobileParts(10), SHAPE, make_plan(_MobileParts(10), "bias"), batch=2
    )
    assert bias.plan_bytes >= narrow.plan_bytes + weight


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "last", "bias", "bn_bias"])
def test_model_equals_the_program_plan_on_mobilenet_parts(mode: str) -> None:
    pytest.importorskip("executorch")
    torch.manual_seed(0)
    net = _MobileParts().eval()
    plan = make_plan(net, mode)
    memory = training_memory(_MobileParts, SHAPE, plan, batch=2, num_classes=1000)
    check, _ = check_memory(net, plan, memory, SHAPE, num_classes=10)
    assert abs(check.error_pct) <= 1.0, check.as_row()
