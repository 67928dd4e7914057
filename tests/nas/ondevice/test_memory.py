"""The update plans and the training-memory model on every built-in space (meta device only)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas.core import Arch, SearchSpace
from nas.ondevice import MODES, block_of, blocks, make_plan, training_memory
from search_spaces import SPACES, get_space


def _meta(space_name: str) -> tuple[SearchSpace, Arch, nn.Module]:
    space = get_space(space_name)
    arch = space.sample(rng=0)
    with torch.device("meta"):
        net = space.build(arch)
    return space, arch, net


@pytest.mark.parametrize("space_name", SPACES.list())
def test_plans_on_every_space(space_name: str) -> None:
    _, _, net = _meta(space_name)
    names = [n for n, _ in net.named_parameters()]
    full = make_plan(net, "full")
    assert set(full.trainable) == set(names)
    bias = make_plan(net, "bias")
    assert bias.trainable and all(n.endswith("bias") for n in bias.trainable)
    bn = make_plan(net, "bn_bias")
    assert set(bias.trainable) < set(bn.trainable) < set(names)
    last = make_plan(net, "last", blocks_k=1)
    assert {block_of(n) for n in last.trainable} == {blocks(net)[-1]}


def test_bad_plans_say_what_is_valid() -> None:
    _, _, net = _meta("tiny")
    with pytest.raises(ValueError, match="valid"):
        make_plan(net, "everything")
    with pytest.raises(ValueError, match="blocks"):
        make_plan(net, "last", blocks_k=99)
    with pytest.raises(ValueError, match="lacks"):
        make_plan(net, "sparse", layers=["no.such.layer"])


@pytest.mark.parametrize("space_name", SPACES.list())
def test_memory_orders_the_modes(space_name: str) -> None:
    space, arch, net = _meta(space_name)
    shape = space.input_shape(arch)
    mem = {
        mode: training_memory(lambda: space.build(arch), shape, make_plan(net, mode), batch=2)
        for mode in ("full", "bn_bias", "bias", "last")
    }
    assert mem["full"].total_bytes > mem["bn_bias"].total_bytes >= mem["bias"].total_bytes
    assert mem["bias"].total_bytes > mem["last"].total_bytes
    # a frozen prefix keeps nothing: the classifier alone keeps only its input
    assert mem["last"].saved_bytes < mem["bias"].saved_bytes / 10
    for m in mem.values():
        assert m.peak_bytes <= m.plan_bytes  # a planner never beats what is alive at once


def test_memory_table_and_settings() -> None:
    space, arch, net = _meta("tiny")
    plan = make_plan(net, "bias")
    m8 = training_memory(lambda: space.build(arch), (3, 32, 32), plan)
    m1 = training_memory(lambda: space.build(arch), (3, 32, 32), plan, batch=1)
    assert m8.batch == 8 and "batch 8" in m8.settings() and "not counted" in m8.settings()
    assert 6 * m1.saved_bytes < m8.saved_bytes <= 8 * m1.saved_bytes
    n_bias = sum(p.numel() for n, p in net.named_parameters() if n.endswith("bias"))
    assert m8.trainable_bytes == 4 * n_bias == m8.grad_bytes
    assert m8.optimizer_bytes == 0
    assert sum(r.trainable_bytes for r in m8.layers) == m8.trainable_bytes
    assert sum(r.saved_bytes for r in m8.layers) == m8.saved_bytes
    counted = training_memory(
        lambda: space.build(arch),
        (3, 32, 32),
        plan,
        count_frozen=True,
        optimizer="sgd_momentum",
    )
    frozen = 4 * sum(p.numel() for n, p in net.named_parameters() if not n.endswith("bias"))
    assert counted.frozen_bytes == frozen
    assert counted.total_bytes == m8.total_bytes + frozen + m8.trainable_bytes


def test_modes_are_documented() -> None:
    assert set(MODES) == {"full", "last", "bias", "bn_bias", "sparse"}


def test_training_memory_metric_prices_archs_for_a_search() -> None:
    from nas.ondevice import training_memory_metric

    space = get_space("tiny")
    archs = [space.sample(rng=i) for i in range(3)]
    price = training_memory_metric(space, mode="bias", batch=1)
    values = price(archs)
    assert len(values) == 3 and all(v > 0 for v in values)
    with torch.device("meta"):
        plan = make_plan(space.build(archs[0]), "bias")
    direct = training_memory(lambda: space.build(archs[0]), (3, 32, 32), plan, batch=1,
                             num_classes=10)  # fmt: skip
    assert values[0] == direct.total_bytes
    assert price(archs[:1]) == values[:1]  # cached
