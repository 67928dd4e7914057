"""The NNI adapter: an NNI 3 model space searched by our engine (optional extra; CI installs it)."""

from __future__ import annotations

import os

import numpy as np
import optuna
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
    pytest.importorskip("nni")
    pytest.importorskip("pytorch_lightning")

import nni
from nni.nas.nn.pytorch import LayerChoice, ModelSpace, MutableConv2d, MutableLinear

from nas import search
from search_spaces.nni_space import NNIModelSpace


class SmallNNISpace(ModelSpace):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        width = nni.choice("width", [8, 16, 24])
        self.stem = MutableConv2d(3, width, 3, stride=2, padding=1)
        self.body = LayerChoice(
            [nn.ReLU(), nn.Hardswish(), nn.Sequential(nn.ReLU(), nn.AvgPool2d(3, 1, 1))],
            label="body",
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = MutableLinear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.body(self.stem(x))).flatten(1))


@pytest.fixture(scope="module")
def space() -> NNIModelSpace:
    return NNIModelSpace(SmallNNISpace())


def test_dimensions_come_from_nni(space: NNIModelSpace) -> None:
    dims = space.dimensions()
    assert list(dims) == ["width", "body"]
    assert dims["width"].values == (8, 16, 24)
    assert space.size() == 9
    assert len(list(space.enumerate())) == 9


def test_archs_build_nni_networks_we_can_price(space: NNIModelSpace) -> None:
    for arch in space.enumerate():
        model = space.build(arch).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as flops:
            y = model(torch.randn(1, 3, 32, 32))
        assert y.shape == (1, 10)
        cost = space.cost(arch)
        assert cost.macs == flops.get_total_flops() // 2
        assert cost.params == sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    a = space.sample(rng)
    assert space.key(space.decode(space.encode(a))) == space.key(a)


def test_an_optuna_study_searches_the_nni_space(space: NNIModelSpace) -> None:
    study = search.price_study(space, 6, seed=0)
    frame = search.trials_frame(study)
    assert len(frame) == 6 and frame["macs"].gt(0).all()
    assert isinstance(study, optuna.Study)


def test_non_model_spaces_are_refused() -> None:
    with pytest.raises(TypeError, match="ModelSpace"):
        NNIModelSpace(nn.Linear(2, 2))
