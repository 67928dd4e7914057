"""Contract tests run over every registered space: a new space is tested by being registered."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import search_spaces
from nas.core.layers import cost_from_specs, trace_layer_specs
from nas.core.space import InvalidArchError, SearchSpace

NAMES = search_spaces.SPACES.list()


@pytest.fixture(scope="module", params=NAMES)
def space(request: pytest.FixtureRequest) -> SearchSpace:
    return search_spaces.get_space(request.param)


def test_builtins_registered() -> None:
    assert {"fbnet", "mobilenetv3", "nb201", "tiny"} <= set(NAMES)


def test_sample_is_valid_seeded_and_fixed_length(space: SearchSpace) -> None:
    a, b, c = space.sample(0), space.sample(0), space.sample(1)
    assert a == b
    assert space.key(a) != space.key(c) or a == c
    assert list(a) == space.keys  # every arch has every key, in dimension order
    assert space.validate(a) == a
    rng = np.random.default_rng(5)
    keys = {space.key(space.sample(rng)) for _ in range(20)}
    assert len(keys) > 1


def test_validate_accepts_numpy_scalars_and_any_key_order(space: SearchSpace) -> None:
    a = space.sample(2)
    shuffled = dict(reversed(list(a.items())))
    as_numpy = {k: (np.int64(v) if isinstance(v, int) else v) for k, v in a.items()}
    assert space.validate(shuffled) == a
    assert space.validate(as_numpy) == a
    assert space.key(shuffled) == space.key(a)


def test_validate_names_every_problem(space: SearchSpace) -> None:
    a = space.sample(3)
    first, second = space.keys[0], space.keys[1]
    bad = dict(a)
    del bad[first]
    bad[second] = "not-a-choice"
    bad["no_such_dim"] = 1
    with pytest.raises(InvalidArchError) as err:
        space.validate(bad)
    msg = str(err.value)
    assert f"missing key {first!r}" in msg
    assert f"{second!r}='not-a-choice' is not a valid value" in msg
    assert "valid values" in msg
    assert "'no_such_dim'" in msg
    with pytest.raises(InvalidArchError, match="mapping"):
        space.validate([1, 2, 3])  # type: ignore[arg-type]


def test_from_key_round_trips(space: SearchSpace) -> None:
    rng = np.random.default_rng(4)
    for _ in range(10):
        a = space.sample(rng)
        assert space.key(space.from_key(space.key(a))) == space.key(a)
    with pytest.raises(InvalidArchError):
        space.from_key("no such key")


def test_key_masks_inactive_slots(space: SearchSpace) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = space.sample(rng)
        inactive = space.inactive_keys(a)
        for k in inactive:
            other = dict(a)
            other[k] = space.dimensions()[k].values[-1]
            assert space.key(other) == space.key(a)
        assert space.key(space.normalize(a)) == space.key(a)


@pytest.mark.parametrize("kind", ["onehot", "ordinal"])
def test_encode_decode_round_trip(space: SearchSpace, kind: str) -> None:
    rng = np.random.default_rng(1)
    archs = [space.sample(rng) for _ in range(10)]
    matrix = space.encode_many(archs, kind)
    assert matrix.shape == (10, len(space.feature_names(kind)))
    for a, row in zip(archs, matrix, strict=True):
        assert space.key(space.decode(row, kind)) == space.key(a)
    with pytest.raises(ValueError, match="entries"):
        space.decode(np.zeros(3), kind)
    with pytest.raises(ValueError, match="onehot"):
        space.encode(archs[0], "binary")


def test_mutate_and_crossover(space: SearchSpace) -> None:
    rng = np.random.default_rng(2)
    a, b = space.sample(rng), space.sample(rng)
    for _ in range(10):
        child = space.mutate(a, rng, prob=0.05)
        assert space.validate(child) == child
        assert space.key(child) != space.key(a)
    child = space.crossover(a, b, rng)
    assert all(child[k] in (a[k], b[k]) for k in space.keys)


def test_suggest_through_optuna(space: SearchSpace) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    arch = space.suggest(trial)
    assert space.validate(arch) == arch
    assert set(trial.params) == set(space.keys)


def test_enumerate_is_ordered_and_bounded(space: SearchSpace) -> None:
    first = list(space.enumerate(limit=3))
    assert len(first) == 3 and all(space.validate(a) == a for a in first)
    if space.n_genotypes > space.max_enumerate:
        with pytest.raises(ValueError, match="max_enumerate"):
            next(space.enumerate())


def test_build_forward_and_costs_match_the_module(space: SearchSpace) -> None:
    arch = space.sample(7)
    model = space.build(arch).eval()
    x = torch.randn(2, *space.input_shape(arch))
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        y = model(x)
    assert y.shape == (2, space.num_classes)
    assert torch.isfinite(y).all()
    cost = space.cost(arch)
    assert cost.macs == flops.get_total_flops() // 2 // 2  # FLOPs = 2 MACs, batch of 2
    assert cost.params == sum(p.numel() for p in model.parameters())
    assert cost.peak_activation_bytes > 0


def test_layer_specs_consistent_with_traced_module(space: SearchSpace) -> None:
    for seed in (11, 12):
        arch = space.sample(seed)
        specs = space.layer_specs(arch)
        traced = trace_layer_specs(lambda arch=arch: space.build(arch), space.input_shape(arch))
        assert cost_from_specs(specs) == cost_from_specs(traced)
        if all(not s.name for s in specs):  # leaf-level specs: identical to the trace
            assert [(s.key, s.macs, s.params, s.live_bytes) for s in specs] == [
                (s.key, s.macs, s.params, s.live_bytes) for s in traced
            ]
        assert space.layer_specs(arch) is specs  # cached per arch key


def test_layer_specs_int8_scale_memory_not_compute(space: SearchSpace) -> None:
    arch = space.sample(13)
    fp32, int8 = space.cost(arch), cost_from_specs(space.layer_specs(arch, dtype="int8"))
    assert int8.macs == fp32.macs and int8.params == fp32.params
    assert int8.peak_activation_bytes == fp32.peak_activation_bytes // 4
    assert all(
        s.dtype == "int8" and s.key.endswith("dtype:int8")
        for s in space.layer_specs(arch, dtype="int8")
    )


def test_size_counts_distinct_archs(space: SearchSpace) -> None:
    assert 1 < space.size() <= space.n_genotypes
    if space.has_inactive_slots() and space.n_genotypes <= 300_000:
        assert space.size() == SearchSpace.size(space)  # closed form == enumeration
