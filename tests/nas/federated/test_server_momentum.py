"""The server's step on the average (FedAvgM): its arithmetic, its buffer kept across a resume,
and plain FedAvg unchanged (same weights, same digest as before the option existed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas.app.federated_apps import client_app, resolve, server_app
from nas.federated import (
    FederatedSpec,
    ServerState,
    load_server_state,
    run_in_process,
    server_step,
)

from .conftest import small_spec


def test_the_step_follows_fedavgm_on_parameters_and_averages_buffers() -> None:
    spec = small_spec(server_lr=0.5, server_momentum=0.9)
    old = {"w": torch.tensor([1.0, 2.0]), "running_mean": torch.tensor([0.0])}
    averaged = {"w": torch.tensor([0.0, 2.0]), "running_mean": torch.tensor([3.0])}
    weights, buffer = server_step(spec, old, averaged, {}, {"w"})
    assert torch.equal(buffer["w"], torch.tensor([1.0, 0.0]))  # old - average
    assert torch.equal(weights["w"], torch.tensor([0.5, 2.0]))  # old - lr * buffer
    assert (
        torch.equal(weights["running_mean"], averaged["running_mean"])
        and "running_mean" not in buffer
    )
    # the next round: the buffer carries on, elements nobody moved keep drifting with it
    weights2, buffer2 = server_step(spec, weights, dict(weights), buffer, {"w"})
    assert torch.allclose(buffer2["w"], torch.tensor([0.9, 0.0]))
    assert torch.allclose(weights2["w"], torch.tensor([0.05, 2.0]))


def test_plain_fedavg_takes_the_average_and_keeps_its_digest() -> None:
    spec = small_spec()
    averaged = {"w": torch.tensor([0.0])}
    weights, buffer = server_step(spec, {"w": torch.tensor([1.0])}, averaged, {}, {"w"})
    assert weights is averaged and buffer == {}
    assert small_spec(server_momentum=0.0, server_lr=1.0).digest == spec.digest
    assert small_spec(server_momentum=0.9).digest != spec.digest


@pytest.mark.parametrize(("lr", "momentum"), [(0.0, 0.5), (1.0, 1.0), (1.0, -0.1)])
def test_bad_server_settings_are_refused(lr: float, momentum: float) -> None:
    with pytest.raises(ValueError, match="server_lr must be > 0 and server_momentum in"):
        small_spec(server_lr=lr, server_momentum=momentum)


def _run(spec: FederatedSpec, out: Path) -> ServerState:
    run_in_process(
        server_app, client_app, spec.num_clients, {"spec": spec.to_json(), "out": str(out)}
    )
    family, _ = resolve(spec)
    state = load_server_state(out, spec.digest, family.full_model(spec.seed).state_dict())
    assert state is not None
    return state


def test_a_resumed_fedavgm_run_keeps_its_buffer_and_ends_with_the_same_weights(
    tmp_path: Path,
) -> None:
    spec = small_spec(server_momentum=0.9)
    whole = _run(spec, tmp_path / "whole")
    _run(small_spec(rounds=1, server_momentum=0.9), tmp_path / "parts")
    part = load_server_state(tmp_path / "parts", spec.digest, whole.weights)
    assert part is not None and part.round == 1 and part.momentum  # the buffer was saved
    resumed = _run(spec, tmp_path / "parts")
    for k, v in whole.weights.items():
        assert torch.allclose(v.double(), resumed.weights[k].double(), atol=1e-6), k
    plain = _run(small_spec(), tmp_path / "plain")
    moved = max(
        float((whole.weights[k].double() - plain.weights[k].double()).abs().max())
        for k in plain.weights
    )
    assert moved > 1e-4  # the momentum did change the second round's step
