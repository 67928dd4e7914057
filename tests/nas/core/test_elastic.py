"""Elastic ops: each slice computes what a static layer with the sliced weight computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas.core.blocks import MBConv
from nas.core.elastic import (
    ElasticBatchNorm2d,
    ElasticConv2d,
    ElasticLinear,
    ElasticMBConv,
    MixedOp,
    active_state_dict,
    resize_to,
)


def test_conv_slices_channel_prefix_and_kernel_centre() -> None:
    conv = ElasticConv2d(8, 12, (3, 5, 7), stride=2)
    conv.configure(5, 6, 3)
    x = torch.randn(2, 5, 9, 9)
    ref = F.conv2d(x, conv.weight[:6, :5, 2:5, 2:5], None, 2, 1)  # 2 x 6 x 5 x 5
    assert torch.equal(conv(x), ref)
    assert conv.export_state("c.")["c.weight"].shape == (6, 5, 3, 3)


def test_depthwise_conv_uses_one_filter_per_active_channel() -> None:
    conv = ElasticConv2d(16, 16, (3, 5), depthwise=True)
    conv.configure(10, 10, 5)
    x = torch.randn(1, 10, 6, 6)
    static = nn.Conv2d(10, 10, 5, padding=2, groups=10, bias=False)
    static.load_state_dict(conv.export_state(""))
    assert torch.allclose(conv(x), static(x), atol=1e-6)
    with pytest.raises(ValueError, match="in == out"):
        conv.configure(10, 8, 5)


def test_kernel_transform_starts_as_centre_crop_and_then_differs() -> None:
    conv = ElasticConv2d(4, 4, (3, 5, 7), depthwise=True, transform_kernels=True)
    names = sorted(n for n, _ in conv.named_parameters())
    assert names == ["transform_5to3", "transform_7to5", "weight"]
    conv.configure(4, 4, 3)
    assert torch.equal(conv.active_weight(), conv.weight[:, :, 2:5, 2:5])  # identity at init
    with torch.no_grad():
        conv.transform_7to5.mul_(0.5)
    assert torch.allclose(conv.active_weight(), 0.5 * conv.weight[:, :, 2:5, 2:5])
    conv.active_weight().sum().backward()
    assert conv.transform_7to5.grad is not None and conv.transform_5to3.grad is not None
    assert "transform_7to5" not in "".join(conv.export_state(""))  # a static conv has none


def test_configure_rejects_out_of_range_values_clearly() -> None:
    conv = ElasticConv2d(8, 8, (3, 5))
    with pytest.raises(ValueError, match=r"input channels must be in \[1, 8\].*got 9"):
        conv.configure(9, 8, 3)
    with pytest.raises(ValueError, match=r"kernel 7 is not one of this conv's sizes \(3, 5\)"):
        conv.configure(8, 8, 7)
    with pytest.raises(ValueError, match="odd"):
        ElasticConv2d(4, 4, (2, 3))
    conv.configure(4, 8, 3)
    with pytest.raises(RuntimeError, match="configured for 4 input channels but got 8"):
        conv(torch.randn(1, 8, 5, 5))


def test_batch_norm_updates_only_the_active_statistics() -> None:
    bn = ElasticBatchNorm2d(8)
    bn.configure(5)
    bn.train()
    x = 3 + torch.randn(4, 5, 3, 3)
    y = bn(x)
    static = nn.BatchNorm2d(5).train()
    assert torch.allclose(y, static(x), atol=1e-5)
    assert torch.allclose(bn.running_mean[:5], static.running_mean)
    assert torch.equal(bn.running_mean[5:], torch.zeros(3))  # inactive channels untouched
    assert int(bn.num_batches_tracked) == 1
    bn.eval()
    static.eval()
    assert torch.allclose(bn(x), static(x), atol=1e-5)


def test_linear_slices_input_features() -> None:
    lin = ElasticLinear(48, 10)
    lin.configure(32)
    x = torch.randn(3, 32)
    assert torch.equal(lin(x), F.linear(x, lin.weight[:, :32], lin.bias))


@pytest.mark.parametrize("se", [False, True])
def test_elastic_mbconv_export_loads_into_mbconv(se: bool) -> None:
    torch.manual_seed(0)
    block = ElasticMBConv(24, 32, 144, (3, 5, 7), 1, act="hswish", se=se).eval()
    block.configure(16, 16, 64, 5)  # in == out, stride 1: residual
    static = MBConv(16, 16, 64, 5, 1, act="hswish", se=se).eval()
    static.load_state_dict(active_state_dict(block))
    x = torch.randn(2, 16, 8, 8)
    assert block.residual and static.residual
    assert torch.allclose(block(x), static(x), atol=1e-6)


def test_mixed_op_runs_and_exports_the_chosen_candidate() -> None:
    op = MixedOp({"conv": nn.Conv2d(3, 3, 1), "skip": nn.Identity()})
    op.choose("skip")
    x = torch.randn(1, 3, 4, 4)
    assert torch.equal(op(x), x)
    assert active_state_dict(op, "m.") == {}
    op.choose("conv")
    assert set(active_state_dict(op, "m.")) == {"m.weight", "m.bias"}
    with pytest.raises(ValueError, match=r"unknown candidate 'pool'; valid: \['conv', 'skip'\]"):
        op.choose("pool")


def test_resize_to_is_identity_when_sizes_match() -> None:
    x = torch.randn(2, 3, 8, 8)
    assert resize_to(x, (8, 8)) is x
    assert resize_to(x, (4, 6)).shape == (2, 3, 4, 6)
