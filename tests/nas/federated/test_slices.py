"""Slice-wise masks and averaging: a subnet holds exactly what it trains, averages are per element."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import nas
from nas.federated import (
    HeldUpdate,
    aggregate_held,
    put_held,
    supernet_masks,
    take_held,
    width_masks,
    width_scaled,
)


@pytest.fixture(scope="module")
def space() -> nas.SearchSpace:
    return nas.get_space("tiny")


def _archs(space: nas.SearchSpace) -> list[dict]:
    sn = space.supernet()
    return [sn.largest_arch(), sn.smallest_arch(), space.sample(rng=3)]


@pytest.mark.parametrize("transform", [False, True])
def test_a_training_step_changes_only_held_elements(space, transform: bool) -> None:
    torch.manual_seed(0)
    for arch in _archs(space):
        sn = space.supernet(transform_kernels=transform)
        masks = supernet_masks(sn, arch)
        before = {k: v.clone() for k, v in sn.state_dict().items()}
        sn.set_arch(arch)
        opt = torch.optim.SGD(sn.parameters(), lr=0.5)
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        F.cross_entropy(sn(x), y).backward()
        opt.step()
        changed = 0
        for name, t in sn.state_dict().items():
            moved = t != before[name]
            assert not (moved & ~masks[name]).any(), f"{name} changed outside the subnet's slice"
            changed += int(moved.sum())
        assert changed > 0.5 * sum(int(m.sum()) for m in masks.values())


def test_held_elements_are_the_exported_subnet(space) -> None:
    sn = space.supernet()
    for arch in _archs(space):
        masks = supernet_masks(sn, arch)
        exported = sn.subnet_state_dict(arch)
        assert sum(int(m.sum()) for m in masks.values()) == sum(
            t.numel() for t in exported.values()
        )
    assert sn.arch == sn.largest_arch()  # restored


def test_take_put_round_trip_and_wrong_sizes(space) -> None:
    sn = space.supernet()
    arch = space.sample(rng=1)
    masks = supernet_masks(sn, arch)
    values = take_held(sn.state_dict(), masks)
    other = space.supernet()
    put_held(other, masks, values)
    with torch.no_grad():
        x = torch.randn(4, 3, 32, 32)
        sn.eval(), other.eval()
        assert torch.equal(sn.export(arch)(x), other.export(arch)(x))
    name = next(iter(values))
    with pytest.raises(ValueError, match="disagree on the sub-model"):
        put_held(other, masks, {name: values[name][:-1]})


def test_aggregate_averages_each_element_over_its_holders() -> None:
    state = {"w": torch.zeros(4), "n": torch.tensor(3)}
    a = HeldUpdate(
        {"w": torch.tensor([1, 1, 0, 0], dtype=torch.bool), "n": torch.tensor(True)},
        {"w": torch.tensor([2.0, 4.0]), "n": torch.tensor([5])},
        num_examples=1,
    )
    b = HeldUpdate(
        {"w": torch.tensor([1, 0, 1, 0], dtype=torch.bool), "n": torch.tensor(True)},
        {"w": torch.tensor([8.0, 6.0]), "n": torch.tensor([7])},
        num_examples=3,
    )
    out = aggregate_held(state, [a, b])
    assert out["w"].tolist() == [(2.0 * 1 + 8.0 * 3) / 4, 4.0, 6.0, 0.0]
    assert int(out["n"]) == 7
    with pytest.raises(ValueError, match="num_examples"):
        aggregate_held(state, [HeldUpdate(a.masks, a.values, 0)])


def test_same_arch_everywhere_is_fedavg(space) -> None:
    sn = space.supernet()
    arch = sn.smallest_arch()
    masks = supernet_masks(sn, arch)
    models = [space.supernet() for _ in range(3)]
    counts = [10, 20, 30]
    updates = [
        HeldUpdate(masks, take_held(m.state_dict(), masks), n)
        for m, n in zip(models, counts, strict=True)
    ]
    out = aggregate_held(sn.state_dict(), updates)
    name = "blocks.0.expand.0.weight"
    held = masks[name]
    expected = sum(n * m.state_dict()[name] for m, n in zip(models, counts, strict=True)) / sum(
        counts
    )
    assert torch.allclose(out[name][held], expected[held], atol=1e-6)
    assert torch.equal(out[name][~held], sn.state_dict()[name][~held])


def test_width_scaling_is_heterofl(space) -> None:
    arch = space.sample(rng=0)
    net = space.build(arch).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = net(x)
        with width_scaled(net, 1.0):
            assert torch.equal(net(x), full)
        with width_scaled(net, 0.5):
            assert net(x).shape == (2, 10)
    assert width_masks(net, 1.0, (3, 32, 32)).keys() == net.state_dict().keys()
    assert all(bool(m.all()) for m in width_masks(net, 1.0, (3, 32, 32)).values())
    half = width_masks(net, 0.5, (3, 32, 32))
    stem = half["stem.0.weight"]
    assert int(stem[:, 0, 0, 0].sum()) == math.ceil(stem.shape[0] / 2)
    classifier = half["head.classifier.weight"]
    assert bool(classifier[:, : math.ceil(classifier.shape[1] / 2)].all())
    assert not classifier[:, math.ceil(classifier.shape[1] / 2) :].any()
    quarter = width_masks(net, 0.25, (3, 32, 32))
    assert sum(int(m.sum()) for m in quarter.values()) < sum(int(m.sum()) for m in half.values())
    with pytest.raises(ValueError, match="width ratio"):
        width_masks(net, 0.0, (3, 32, 32))
