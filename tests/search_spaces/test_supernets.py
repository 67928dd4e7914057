"""Every registered space with a supernet exports subnets that compute what the supernet does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import search_spaces
from nas.core.elastic import Supernet
from nas.core.space import InvalidArchError, SearchSpace

NAMES = search_spaces.SPACES.list()


def _supernet_or_skip(space: SearchSpace) -> Supernet:
    try:
        net = space.supernet()
    except NotImplementedError:
        pytest.skip(f"{space.name} has no supernet")
    assert isinstance(net, Supernet)
    return net


def _randomize(net: nn.Module, seed: int) -> None:
    """Non-trivial batch-norm statistics and affine, and kernel transforms off the identity, so
    that a wrong slice of any of them changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
        for name, p in net.named_parameters():
            if "transform_" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module", params=NAMES)
def space_and_net(request: pytest.FixtureRequest) -> tuple[SearchSpace, Supernet]:
    space = search_spaces.get_space(request.param)
    net = _supernet_or_skip(space)
    _randomize(net, 0)
    return space, net.eval()


def _archs(space: SearchSpace, net: Supernet, n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [net.largest_arch(), net.smallest_arch(), *(space.sample(rng) for _ in range(n))]


def test_export_equals_supernet_and_build(space_and_net: tuple[SearchSpace, Supernet]) -> None:
    space, net = space_and_net
    n = {"tiny": 4}.get(space.name, 1)
    for arch in _archs(space, net, n):
        x = torch.randn(1, *space.input_shape(arch), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            with net.using(arch):
                y_super = net(x)  # 1 x classes
            sub = net.export(arch).eval()
            y_sub = sub(x)
        built = space.build(arch)  # the export is exactly build(arch): same layers, same specs
        assert type(sub) is type(built)
        assert {k: v.shape for k, v in sub.state_dict().items()} == {
            k: v.shape for k, v in built.state_dict().items()
        }
        diff = (y_super - y_sub).abs().max().item()
        assert diff <= 1e-5, f"{space.name} {space.key(arch)}: max abs diff {diff}"


def test_using_restores_the_previous_arch(space_and_net: tuple[SearchSpace, Supernet]) -> None:
    space, net = space_and_net
    before = net.arch
    other = space.sample(5)
    with pytest.raises(RuntimeError, match="boom"), net.using(other):
        assert net.arch == space.validate(other)
        raise RuntimeError("boom")
    assert net.arch == before
    bad = dict(other)
    bad.pop(space.keys[0])
    with pytest.raises(InvalidArchError, match="missing key"):
        net.set_arch(bad)
    assert net.arch == before  # a rejected arch changes nothing


def test_extremes_are_valid_and_ordered_by_macs(
    space_and_net: tuple[SearchSpace, Supernet],
) -> None:
    space, net = space_and_net
    big, small = space.validate(net.largest_arch()), space.validate(net.smallest_arch())
    macs = [space.cost(space.sample(s)).macs for s in range(5)]
    assert space.cost(big).macs >= max(macs)
    assert space.cost(small).macs <= min(macs)


def test_mobilenetv3_without_kernel_transforms_also_exports() -> None:
    space = search_spaces.get_space("mobilenetv3", resolutions=(128, 160))
    net = space.supernet(transform_kernels=False)
    _randomize(net, 1)
    net.eval()
    arch = space.sample(3)
    x = torch.randn(1, *space.input_shape(arch))
    with torch.no_grad(), net.using(arch):
        diff = (net(x) - net.export(arch).eval()(x)).abs().max().item()
    assert diff <= 1e-5
    assert not any("transform_" in n for n, _ in net.named_parameters())
