from __future__ import annotations

import pytest
import torch
from torch import nn

from nas.core.layers import LayerSpec, cost_from_specs, trace_layer_specs


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.conv(x))


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU6(inplace=True),
        Residual(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def test_trace_fuses_conv_bn_act_and_keeps_the_rest() -> None:
    specs = trace_layer_specs(small_net, (3, 16, 16))
    assert [s.key for s in specs] == [
        "conv-input:16x16x3-output:8x8x8-kernel:3-stride:2-act:relu6",
        "conv-input:8x8x8-output:8x8x8-kernel:3-stride:1",  # BN folded, no act to fuse
        "add-input:8x8x8-output:8x8x8",
        "act-input:8x8x8-output:8x8x8-act:relu",  # reads the add: not fusable into a conv
        "global_avgpool-input:8x8x8-output:1x1x8",
        "linear-input:8-output:4",
    ]
    first = specs[0]
    assert first.macs == 8 * 8 * 8 * 3 * 9
    assert first.params == 8 * 3 * 9 + 2 * 8  # conv weight + BN affine


def test_live_bytes_follow_the_dataflow() -> None:
    specs = trace_layer_specs(small_net, (3, 16, 16))
    fm = 8 * 8 * 8 * 4  # one 8x8x8 fp32 feature map
    by_op = {s.key.split("-")[0] + str(i): s.live_bytes for i, s in enumerate(specs)}
    assert by_op["conv0"] == 3 * 16 * 16 * 4 + fm  # input + output
    assert by_op["conv1"] == 2 * fm  # residual input kept + conv output
    assert by_op["add2"] == 3 * fm  # input, conv output, sum
    assert cost_from_specs(specs).peak_activation_bytes == max(by_op.values())


def test_a_module_instance_is_traced_without_touching_its_weights() -> None:
    net = small_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    specs = trace_layer_specs(net, (3, 16, 16))
    assert [s.key for s in specs] == [s.key for s in trace_layer_specs(small_net, (3, 16, 16))]
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert net.training


def test_spec_identity_ignores_network_facts() -> None:
    a = LayerSpec("conv", (8, 4, 4), (8, 4, 4), kernel=3, macs=1, live_bytes=5)
    b = LayerSpec("conv", (8, 4, 4), (8, 4, 4), kernel=3, macs=2, live_bytes=9)
    assert a == b and hash(a) == hash(b) and a.key == b.key
    assert a.with_dtype("int8") != a
    assert a.with_dtype("int8").key == a.key + "-dtype:int8"


def test_ofa_expanded_conv_key() -> None:
    spec = LayerSpec(
        "expanded_conv",
        (24, 56, 56),
        (40, 28, 28),
        kernel=5,
        stride=2,
        expand=96,
        activation="relu",
        se=True,
    )
    assert spec.key == (
        "expanded_conv-input:56x56x24-output:28x28x40-expand:96-kernel:5-stride:2-"
        "idskip:0-se:1-hs:0"
    )


def test_bad_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="fp32"):
        LayerSpec("conv", (1,), (1,), dtype="fp8")
    with pytest.raises(ValueError, match="int8"):
        trace_layer_specs(small_net, (3, 16, 16), dtype="float")
