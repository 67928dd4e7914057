"""FjORD-style tier sampling: reproducible per seed, nested tiers only, exact averages, resumable."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

import nas
from nas.app.federated_apps import client_app, resolve, server_app
from nas.federated import (
    FederatedSpec,
    HeldUpdate,
    TierSpec,
    aggregate_held,
    client_partition,
    load_server_state,
    nested_tiers,
    put_held,
    round_seed,
    run_in_process,
    step_tier,
    take_held,
    train_local,
)

from .conftest import small_spec


def _weights(spec: FederatedSpec, out: Path) -> dict[str, torch.Tensor]:
    run_in_process(
        server_app, client_app, spec.num_clients, {"spec": spec.to_json(), "out": str(out)}
    )
    family, _ = resolve(spec)
    state = load_server_state(out, spec.digest, family.full_model(spec.seed).state_dict())
    assert state is not None
    return state.weights


def test_the_sampled_tiers_are_reproducible_per_seed_and_uniform() -> None:
    draws = [step_tier(123, s, 3) for s in range(600)]
    assert draws == [step_tier(123, s, 3) for s in range(600)]
    assert draws != [step_tier(124, s, 3) for s in range(600)]
    counts = Counter(draws)
    assert set(counts) == {0, 1, 2} and min(counts.values()) > 150
    assert all(step_tier(7, s, 1) == 0 for s in range(20))


def test_only_nested_tiers_are_sampled() -> None:
    space = nas.get_space("tiny")
    family, _ = resolve(small_spec())
    sn = space.supernet()
    big, small = sn.largest_arch(), sn.smallest_arch()
    shallow_wide = {**big, "s2.depth": 1}  # nested in big, not in small
    deep_narrow = {**small, "s2.depth": 2}  # nested in big, not in shallow_wide
    tiers = [{"arch": a} for a in (big, shallow_wide, deep_narrow, small, dict(small))]
    keys = [[space.key(t["arch"]) for t in nested_tiers(family, tiers, i)] for i in range(5)]
    k = [space.key(t["arch"]) for t in tiers]
    assert keys[0] == [k[0], k[1], k[2], k[3]]  # the repeat of `small` once
    assert keys[1] == [k[1], k[3]]
    assert keys[2] == [k[2], k[3]]
    assert keys[3] == [k[3]] and keys[4] == [k[4]]


def test_faster_only_elements_average_over_the_faster_clients(tmp_path: Path) -> None:
    """One round run by the apps equals each client's nested training redone here, averaged
    element-wise by sample counts over the clients whose own tier holds the element."""
    spec = small_spec(rounds=1, tier_sampling="nested")
    weights = _weights(spec, tmp_path)
    family, data = resolve(spec)
    start = family.full_model(spec.seed).state_dict()
    subs = [t.sub_model for t in spec.tiers]
    updates = []
    for part in range(spec.num_clients):
        own = spec.tier_of(part)
        masks = family.masks(subs[own])
        model = family.full_model(spec.seed)
        put_held(model, masks, take_held(start, masks))
        images, labels = client_partition(spec, data, part, spec.num_clients)
        smaller = nested_tiers(family, subs, own)[1:]
        assert len(smaller) == (1 if own == 0 else 0)  # the fast tier also trains the slow one
        seed = round_seed(spec.seed, 1, part)
        train_local(family, model, subs[own], images, labels, spec.local, seed, None, smaller)
        updates.append(HeldUpdate(masks, take_held(model.state_dict(), masks), len(labels)))
    expected = aggregate_held(start, updates)
    fast, slow = family.masks(subs[0]), family.masks(subs[1])
    fast_only = 0
    for name, value in weights.items():
        if value.is_floating_point():
            assert torch.allclose(value, expected[name], atol=1e-6), name
        only = fast[name] & ~slow[name]
        if value.is_floating_point() and only.any():
            fast_only += int(only.sum())
            n = [len(client_partition(spec, data, p, 4)[1]) for p in (0, 1)]
            mean = (n[0] * updates[0].values[name] + n[1] * updates[1].values[name]) / sum(n)
            # the fast clients' values of their own slice: positions of `only` within it
            pos = only[fast[name]]
            assert torch.allclose(value[only], mean[pos].to(value.dtype), atol=1e-6), name
    assert fast_only > 1000


def test_nested_and_own_differ_and_a_resumed_nested_run_is_exact(tmp_path: Path) -> None:
    spec = small_spec(tier_sampling="nested")
    whole = _weights(spec, tmp_path / "whole")
    own = _weights(small_spec(tier_sampling="own"), tmp_path / "own")
    assert any(not torch.equal(whole[k], own[k]) for k in whole)
    _weights(small_spec(rounds=1, tier_sampling="nested"), tmp_path / "parts")
    resumed = _weights(spec, tmp_path / "parts")
    assert max(float((whole[k].double() - resumed[k].double()).abs().max()) for k in whole) <= 1e-6
    log = (tmp_path / "parts" / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in log] == [1, 2]


def test_own_sampling_keeps_the_digest_of_older_runs() -> None:
    tiers = (TierSpec("a", 1, arch=nas.get_space("tiny").supernet().smallest_arch()),)
    old = FederatedSpec(tiers=tiers, tier_sampling="own")
    assert old.digest == "a3815f9af846"  # this spec's digest before tier sampling (session 13)
    data = json.loads(old.to_json())
    data.pop("tier_sampling")  # a spec written before the field reads as "own"... when told
    assert FederatedSpec.from_dict({**data, "tier_sampling": "own"}).digest == old.digest
    assert FederatedSpec(tiers=tiers, tier_sampling="nested").digest != old.digest


def test_the_sandwich_trains_its_own_and_the_smallest_nested_tier_every_step() -> None:
    from nas.federated import client_sub_models

    space = nas.get_space("tiny")
    family, _ = resolve(small_spec())
    sn = space.supernet()
    big, small = sn.largest_arch(), sn.smallest_arch()
    tiers = [{"arch": a} for a in (big, {**big, "s2.depth": 1}, small)]
    assert client_sub_models(family, tiers, 0, "own") == ([], False)
    nested, every = client_sub_models(family, tiers, 0, "nested")
    assert len(nested) == 2 and not every
    sandwich, every = client_sub_models(family, tiers, 0, "sandwich")
    assert every and [space.key(t["arch"]) for t in sandwich] == [space.key(small)]
    assert client_sub_models(family, tiers, 2, "sandwich") == ([], False)  # nothing below
    torch.manual_seed(0)
    x, y = torch.randn(24, 3, 32, 32), torch.randint(0, 10, (24,))
    runs = []
    for every_step in (True, True, False):
        model = family.full_model(0)
        train_local(
            family, model, tiers[0], x, y, small_spec().local, 5, None, sandwich, every_step
        )
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])  # reproducible
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])  # not a draw
