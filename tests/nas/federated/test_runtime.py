"""Flower's deployment runtime: a 2-round, 4-client run on loopback only, no process left, and
the same weights as the in-process grid."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
import torch

from nas.app.federated_apps import client_app, resolve, server_app
from nas.federated import load_server_state, run_deployment, run_in_process
from tests.sockets import Listener, assert_loopback_only, listening_sockets

from .conftest import small_spec


@pytest.mark.slow
def test_deployment_runs_on_loopback_leaves_nothing_and_matches_the_grid(tmp_path: Path) -> None:
    spec = small_spec(rounds=2, round_timeout_s=300.0)
    seen: set[Listener] = set()
    report = run_deployment(
        spec,
        tmp_path / "deployed",
        timeout_s=900.0,
        watch=lambda pids: seen.update(listening_sockets(pids)),
    )
    assert_loopback_only(seen)
    assert len({s.port for s in seen}) >= 1 + spec.num_clients  # the link and every node
    assert report.survivors == []
    alive = [
        p
        for p in report.pids
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert alive == [], f"processes of the run survived it: {alive}"

    run_in_process(
        server_app,
        client_app,
        spec.num_clients,
        {"spec": spec.to_json(), "out": str(tmp_path / "grid")},
    )
    family, _ = resolve(spec)
    like = family.full_model(spec.seed).state_dict()
    deployed = load_server_state(tmp_path / "deployed", spec.digest, like)
    local = load_server_state(tmp_path / "grid", spec.digest, like)
    assert deployed is not None and local is not None and deployed.round == local.round == 2
    diff = max(
        float((deployed.weights[k].double() - local.weights[k].double()).abs().max()) for k in like
    )
    assert diff <= 1e-6
    assert torch.equal(deployed.weights["stem.0.weight"], local.weights["stem.0.weight"])
