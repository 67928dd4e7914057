"""Client-side differential privacy through Flower's LocalDpMod: updates clipped, noise seeded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas.app.federated_apps import client_app, resolve, server_app
from nas.federated import FederatedSpec, load_server_state, run_in_process, supernet_masks

from .conftest import small_spec


def _update_norm(spec: FederatedSpec, out: Path) -> tuple[float, dict[str, torch.Tensor]]:
    run_in_process(
        server_app, client_app, spec.num_clients, {"spec": spec.to_json(), "out": str(out)}
    )
    family, _ = resolve(spec)
    start = family.full_model(spec.seed).state_dict()
    state = load_server_state(out, spec.digest, start)
    assert state is not None
    masks = supernet_masks(family.full_model(0), spec.tiers[0].sub_model["arch"])  # type: ignore[arg-type]
    sq = sum(
        float(((state.weights[k] - start[k])[masks[k]].double() ** 2).sum())
        for k in start
        if start[k].is_floating_point()
    )
    return sq**0.5, state.weights


@pytest.mark.slow
def test_local_dp_clips_each_update_and_repeats_its_noise(tmp_path: Path) -> None:
    base = small_spec(rounds=1)
    arch = base.tiers[1].arch  # every client trains the smallest subnet: FedAvg
    tiers = tuple(type(t)(t.name, t.clients, arch=arch) for t in base.tiers)
    plain = small_spec(rounds=1, tiers=tiers)
    clipped = small_spec(
        rounds=1, tiers=tiers, dp={"clipping_norm": 0.05, "epsilon": 1e6, "delta": 1e-5}
    )
    free, _ = _update_norm(plain, tmp_path / "plain")
    tight, weights = _update_norm(clipped, tmp_path / "clipped")
    assert free > 0.2 and tight <= 0.05 * 1.01  # the average of clipped updates stays clipped
    _, again = _update_norm(clipped, tmp_path / "again")
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    noisy = small_spec(
        rounds=1, tiers=tiers, dp={"clipping_norm": 0.05, "epsilon": 1.0, "delta": 1e-5}
    )
    loud, _ = _update_norm(noisy, tmp_path / "noisy")
    assert loud > 1.0  # epsilon 1: noise dwarfs the clipped update


def test_dp_settings_must_be_complete_and_positive() -> None:
    with pytest.raises(ValueError, match="clipping_norm, epsilon and delta"):
        small_spec(dp={"clipping_norm": 1.0, "epsilon": 0.0, "delta": 1e-5})
    with pytest.raises(ValueError, match="clipping_norm, epsilon and delta"):
        small_spec(dp={"epsilon": 1.0})
