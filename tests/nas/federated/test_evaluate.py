"""The server's per-tier evaluation: batch norm re-estimated with every image weighed alike."""

from __future__ import annotations

import pytest
import torch

import nas
from nas.federated import SupernetFamily, calibration_batches, evaluate_tier
from nas.supernet import recalibrate_bn


def test_calibration_batches_are_near_equal() -> None:
    images = torch.arange(269.0).reshape(269, 1, 1, 1)
    sizes = [len(b) for b in calibration_batches(images, 256)]
    assert sizes == [135, 134]  # not 256 + 13
    assert torch.equal(torch.cat(calibration_batches(images, 256)), images)
    assert [len(b) for b in calibration_batches(images, 300)] == [269]
    assert calibration_batches(images[:0], 8) == []
    with pytest.raises(ValueError, match="batch size"):
        calibration_batches(images, 0)


def test_evaluation_weighs_every_calibration_image_alike() -> None:
    """With 9 calibration images and batches of 8, the re-estimated statistics are (near) those
    of all 9 in one batch; cutting them 8 + 1 would give the ninth image half the weight."""
    space = nas.get_space("tiny")
    family = SupernetFamily(space)
    tier = {"arch": family.full_model(0).smallest_arch()}
    torch.manual_seed(0)
    calibration = torch.randn(9, 3, 32, 32)
    calibration[8] += 3.0  # an outlier image: its weight shows in the first layer's mean
    test_x, test_y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    name = "stem.1.running_mean"

    def stats(batches: list[torch.Tensor]) -> torch.Tensor:
        model = family.full_model(0)
        with family.activated(model, tier), torch.no_grad():
            recalibrate_bn(model, batches)
        return model.state_dict()[name]

    model = family.full_model(0)
    evaluate_tier(family, model, tier, calibration, test_x, test_y, batch_size=8)
    found = model.state_dict()[name]
    exact = stats([calibration])
    cut = stats([calibration[:8], calibration[8:]])  # 8 + 1
    assert (found - exact).abs().max() < 0.25 * (cut - exact).abs().max()
